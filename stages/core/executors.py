"""Where a stage's batch transforms run. Every executor takes picklable jobs (a row-group
descriptor and what the transform needs), runs a module-level function on each, and yields the
results in submission order, so outputs are byte-identical whatever the executor or worker
count. An executor never counts rows: the runner books what comes back.

A cluster engine plugs in here: the same jobs (a file and a row group, read where the job runs),
the same order, at most a bounded number in flight. core.ray_executor is one (runtime.executor:
ray), imported only when chosen.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Protocol

from stages.core.params import Runtime


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        """fn(job) for every job, yielded in the order the jobs were given."""

    def close(self) -> None:
        """Release workers (idempotent)."""


class InProcess:
    """The reference: every job runs here, one after another."""

    workers = 1

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        for job in jobs:
            yield fn(job)

    def close(self) -> None:
        pass


class ProcessPool:
    """Forked worker processes on this machine.

    The pool forks when it is made: make it before a thread (a background sink) starts, so no
    child inherits a lock a thread holds. At most 2 x workers jobs are in flight: Pool.imap
    would read every job's input ahead when the workers are the slower side.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = mp.get_context("fork").Pool(workers, initializer=ignore_sigint)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        pending: deque = deque()
        for job in jobs:
            pending.append(self._pool.apply_async(fn, (job,)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def ignore_sigint() -> None:
    """In a worker: Ctrl-C reaches every process of the terminal's group; the stage's process
    answers it (one line) and terminates its workers, which would otherwise each print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_executor(workers: int) -> Executor:
    """The process pool for more than one worker, else in-process."""
    return ProcessPool(workers) if workers > 1 else InProcess()


def executor_for(runtime: Runtime) -> Executor:
    """The executor runtime.executor names: Ray (core.ray_executor), else make_executor(workers)."""
    if runtime.executor == "ray":
        from stages.core.ray_executor import RayExecutor

        return RayExecutor(runtime.ray_address, runtime.workers)
    return make_executor(runtime.workers)
