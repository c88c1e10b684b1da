"""Executor ray (runtime.executor: ray): a stage's batch jobs as Ray tasks on a cluster.

The stage process stays the driver: it reads params, owns the ledger, the sinks, the gate's
report and the atomic commit. Ray only runs the module-level job functions the local executors
run (core.runner.map_job, core.gate.validate_unit, curate.posts_ranges.parse_range) on small
job descriptors (a file and a row group or byte range), which each task reads from storage every
node sees at the same path. Results (Arrow tables plus counts) come back in submission order, at
most IN_FLIGHT_PER_CPU x the cluster's CPUs at a time, so outputs are byte-identical to local.

Counts come only from what a task returns, once per job: a task Ray retries after its worker died
(kill -9, a lost node) is counted once, when its one result arrives.

Imported only when runtime.executor is ray, so local runs never import Ray.
"""
from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from stages.core.errors import StageError

INSTALL = "pip install -c constraints.txt -e '.[ray]'"
# A Ray started for one stage takes 30% of the machine's memory for its object store by default
# (5.6 GB measured here) and spills to /tmp past it. Results are consumed in order as they come, so
# what is held is what is in flight: a few row groups of text.
LOCAL_OBJECT_STORE_BYTES = 1 << 30
IN_FLIGHT_PER_CPU = 2
CONNECT_TIMEOUT_S = 10
TASK_RETRIES = 3            # a task whose worker or node died runs again, up to this often


def _run_in(cwd: str, fn: Callable[[Any], Any], job: Any) -> Any:
    """A job on a Ray worker, in the driver's project folder (job paths are relative to it)."""
    if os.getcwd() != cwd:
        os.chdir(cwd)
    return fn(job)


def require() -> Any:
    """The Ray module, or one clear line (before any work) when Ray is chosen but not installed."""
    try:
        import ray
    except ImportError:
        raise StageError(f"runtime.executor is ray but Ray is not installed: {INSTALL}") from None
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT nothing answers at is one line now: ray.init itself retried for 13 minutes here."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return                                  # "auto", "local", ray:// client addresses: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise StageError(f"runtime.executor ray: no Ray cluster answers at {address!r} ({exc.strerror or exc}); "
                         "start one with `ray start --head` or fix runtime.ray_address / RAY_ADDRESS") from None


def connect(address: str | None, workers: int) -> Any:
    """The Ray module, connected: to `address`, else RAY_ADDRESS, else a Ray started here for this
    process with `workers` CPUs and a capped object store (stopped when the process exits)."""
    ray = require()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "logging_level": "ERROR",
                              "configure_logging": True}
    if address == "local":
        kwargs.update(num_cpus=workers, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    _check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")      # no network from a stage
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"runtime.executor ray: cannot connect to the Ray cluster at {address!r}: {first}") from None
    return ray


class RayExecutor:
    """core.executors.Executor on a Ray cluster: jobs in, results out in submission order."""

    def __init__(self, address: str | None = None, workers: int = 2):
        self._ray = connect(address, workers)
        self.workers = max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        self._in_flight = IN_FLIGHT_PER_CPU * self.workers
        self._task = self._ray.remote(_run_in).options(max_retries=TASK_RETRIES, retry_exceptions=False,
                                                       name="soqa_job")
        self._cwd = str(Path.cwd().resolve())
        self._pending: deque = deque()

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        pending = self._pending = deque()
        try:
            for job in jobs:
                pending.append(self._task.remote(self._cwd, fn, job))
                if len(pending) >= self._in_flight:
                    yield self._get(pending.popleft())
            while pending:
                yield self._get(pending.popleft())
        finally:
            self._cancel(pending)

    def _get(self, ref: Any) -> Any:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except exceptions.RayTaskError as exc:
            if isinstance(exc.cause, StageError):       # the stage's own one-line error, as local
                raise exc.cause from None
            raise
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ObjectLostError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise StageError(f"runtime.executor ray: a task failed {TASK_RETRIES + 1} times ({type(exc).__name__}: "
                             f"{first})") from None

    def _cancel(self, pending: deque) -> None:
        while pending:
            ref = pending.popleft()
            try:
                self._ray.cancel(ref, force=False)
            except Exception:       # already finished or gone: nothing to cancel
                pass

    def close(self) -> None:
        """Cancels what is still in flight. The connection stays for the rest of the stage (its
        gate's row checks use it too); Ray disconnects, and stops a Ray it started, at exit."""
        self._cancel(self._pending)
