"""The stage contract and the runner that does everything but the deciding.

A data stage is a module under stages/curate that declares one `STAGE` and ends with
`if __name__ == "__main__": run(STAGE)`. The declaration names what the stage reads and writes,
the params it uses, its pure transform and its quality suite (core.gate.Suite). The runner reads
params (only the declared ones reach the stage), checks them before any work, feeds the
transform, counts every row (rows in from what it fed, rows out and rejected from what came
back; rows_in = rows_out + rejected or the stage fails), writes the sinks and the rejects, runs
the gate on the temporary outputs and commits them atomically. A stage never counts by hand.

Three forms of the same contract, by how much of the data a decision needs:

- MapStage: one row group at a time. `transform(table, batch, options) -> Result` is pure and
  runs wherever the executor puts it (this process or a worker); kept rows go to
  `<writes>/<table>.parquet` in input order.
- StreamStage: a source read in one pass, where a decision may need rows seen earlier (ingest:
  duplicate ids, answers whose question comes later). `read(options, runtime)` yields `Raw`
  batches (the runner counts them in); `decider(options)` makes the object whose `feed(raw)` and
  `finish()` return (table, Result) pairs; kept rows go to `<writes>/<table>.parquet`.
- TableStage: a decision needs the whole table (top_answers ranks a question's answers, split
  and shard cut the pair stream). `build(ctx)` reads its inputs, writes its own output files
  through `ctx.sink` and yields (table, Result) pairs; the runner counts rows in from the
  declared input files (`counts_in`) and rows out and rejected from the yielded results.
"""
from __future__ import annotations

import importlib
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import pyarrow as pa

from stages.core.console import print_error, print_stage_summary, row_progress
from stages.core.errors import StageError
from stages.core.executors import Executor, InProcess, executor_for
from stages.core.gate import Suite, validate
from stages.core.ledger import Ledger, Result
from stages.core.memory import keep_freed_memory
from stages.core.outputs import AUDIT, DATA, REJECTS, clean_stale_tmp, commit_path, tmp_sibling
from stages.core.params import Runtime, load_params, param
from stages.core.parquet import ParquetSink, RowGroup, parquet_rows, row_groups
from stages.core.schemas import SCHEMAS, to_table


def _no_options(params: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    """What every data stage declares (the fields of its dvc.yaml entry, and its checks)."""
    name: str
    module: str                       # the module that defines STAGE (workers import it by name)
    reads: tuple[str, ...]            # dvc.yaml deps besides code: input files and folders
    writes: str                       # its data output folder
    params: tuple[str, ...]           # dotted params.yaml keys it reads; only these reach it
    suite: Suite
    # params (the declared ones) -> what the transform needs; raises StageError on a bad value,
    # before any work. Also where an expensive load belongs (done once, in this process).
    options: Callable[[dict[str, Any]], Any] = _no_options
    audit: tuple[str, ...] = ()       # declared params the audit records, under their last key


@dataclass(frozen=True)
class MapStage(Stage):
    tables: tuple[str, ...] = ("questions", "answers")         # read from the first of `reads`
    transform: Callable[[str, pa.RecordBatch, Any], Result] | None = None
    passthrough: tuple[str, ...] = ()     # tables copied as they are (every row kept)
    in_process: bool = False              # cheaper here than the trip to a worker and back


@dataclass(frozen=True)
class Raw:
    """A batch of source rows as read: `rows` of `table` (malformed rows included)."""
    table: str
    rows: int
    data: Any


class Decider(Protocol):
    """Optionally also `extra`: a dict of audit facts, read after finish()."""

    def feed(self, raw: Raw) -> Iterable[tuple[str, Result]]: ...

    def finish(self) -> Iterable[tuple[str, Result]]: ...


@dataclass(frozen=True)
class StreamStage(Stage):
    read: Callable[[Any, Runtime], Iterator[Raw]] | None = None
    decider: Callable[[Any], Decider] | None = None
    tables: tuple[str, ...] = ("questions", "answers")         # output tables, each a parquet file


@dataclass
class TableContext:
    """What a TableStage's build() gets: its options, where to write, and audit facts to add."""
    options: Any
    out: Path                          # the temporary output folder
    runtime: Runtime
    extra: dict[str, Any] = field(default_factory=dict)
    _sinks: list[ParquetSink] = field(default_factory=list)

    def sink(self, name: str, schema: pa.Schema) -> ParquetSink:
        """A parquet file of the output, closed by the runner. Table stages never fork, so the
        sink compresses in a background thread."""
        s = ParquetSink(self.out / name, schema, background=True)
        self._sinks.append(s)
        return s


@dataclass(frozen=True)
class TableStage(Stage):
    counts_in: tuple[tuple[str, str], ...] = ()    # (table, input parquet file) whose rows go in
    build: Callable[[TableContext], Iterator[tuple[str, Result]]] | None = None


def declared(params: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Only the declared keys of params, nested as in params.yaml: a stage cannot read what its
    dvc.yaml entry does not list."""
    out: dict[str, Any] = {}
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = param(params, key)
    return out


# ----------------------------------------------------------------------------- the map form
def map_job(job: tuple[str, Any, RowGroup, str]) -> tuple[int, Result]:
    """One row group through a MapStage's transform, wherever the executor runs it; kept rows
    come back as Arrow (a few buffers across a process boundary, not a string per row)."""
    module, options, unit, table = job
    stage: MapStage = importlib.import_module(module).STAGE
    res = stage.transform(table, unit.read(), options)
    if not isinstance(res.kept, pa.Table):
        res.kept = (pa.Table.from_batches([res.kept]) if isinstance(res.kept, pa.RecordBatch)
                    else to_table(res.kept, SCHEMAS[table]))
    return unit.rows, res


def _run_map(stage: MapStage, options: Any, ledger: Ledger, out: Path, executor: Executor) -> None:
    src = Path(stage.reads[0])
    out.mkdir(parents=True)
    for t in stage.passthrough:
        shutil.copyfile(src / f"{t}.parquet", out / f"{t}.parquet")    # same bytes as re-encoding
        n = parquet_rows(src / f"{t}.parquet")
        ledger.count_in(t, n)
        ledger.count_out(t, n)
    jobs = [(stage.module, options, unit, t) for t in stage.tables for unit in row_groups(src / f"{t}.parquet")]
    # Background sinks: safe, the executor forked its workers before any sink thread starts.
    sinks = {t: ParquetSink(out / f"{t}.parquet", SCHEMAS[t], background=True) for t in stage.tables}
    try:
        with row_progress(stage.name, sum(j[2].rows for j in jobs)) as advance:
            for (_, _, _, t), (n_in, res) in zip(jobs, executor.map(map_job, jobs)):
                ledger.count_in(t, n_in)
                ledger.book(t, res)
                sinks[t].write(res.kept)
                advance(n_in)
    finally:
        for s in sinks.values():
            s.close()


# ----------------------------------------------------------------------------- the stream form
def _run_stream(stage: StreamStage, options: Any, ledger: Ledger, out: Path, runtime: Runtime) -> None:
    out.mkdir(parents=True)
    # A stream stage runs in this process: its sinks compress in a thread while the next batch is decided.
    sinks = {t: ParquetSink(out / f"{t}.parquet", SCHEMAS[t], background=True) for t in stage.tables}

    def book(decided: Iterable[tuple[str, Result]]) -> None:
        for t, res in decided:
            ledger.book(t, res)
            if not res.kept_rows:
                continue
            if t not in sinks:
                raise StageError(f"stage {stage.name}: kept rows of table {t}, which it does not write")
            sinks[t].write(res.kept)

    decider = stage.decider(options)
    try:
        with row_progress(stage.name, None) as advance:
            for raw in stage.read(options, runtime):
                ledger.count_in(raw.table, raw.rows)
                book(decider.feed(raw))
                advance(raw.rows)
            book(decider.finish())
        ledger.extra.update(getattr(decider, "extra", {}))
    finally:
        for s in sinks.values():
            s.close()


# ----------------------------------------------------------------------------- the table form
def _run_table(stage: TableStage, options: Any, ledger: Ledger, out: Path, runtime: Runtime) -> None:
    out.mkdir(parents=True)
    for t, path in stage.counts_in:
        ledger.count_in(t, parquet_rows(path))
    ctx = TableContext(options, out, runtime)
    try:
        for t, res in stage.build(ctx):
            ledger.book(t, res)
    finally:
        for s in ctx._sinks:
            s.close()
    ledger.extra.update(ctx.extra)


# ----------------------------------------------------------------------------- the runner
def run_gate(stage: Stage, params: dict[str, Any], out: Path, runtime: Runtime) -> None:
    """The quality gate on the temporary output: in the GX preloader when it answers, else here
    (row checks on a pool of runtime.workers processes)."""
    from stages.core import gx_preload

    # On Ray the row checks run on the cluster; the preloader would run them on this machine.
    on_cluster = runtime.executor == "ray" and bool(stage.suite.row_tables)
    if gx_preload.enabled(runtime.gx_preload) and not on_cluster:
        try:
            gx_preload.validate(stage.module, params, out, runtime.workers)
            return
        except gx_preload.ServerUnavailable as exc:       # never skip the gate: validate here
            print(f"{stage.name}: GX preloader unavailable ({exc}); validating in this process", file=sys.stderr)
    executor = executor_for(runtime) if stage.suite.row_tables else InProcess()
    try:
        validate(stage, params, out, executor)
    finally:
        executor.close()


def execute(stage: Stage, all_params: dict[str, Any]) -> dict[str, Any]:
    """Run a stage in the current folder: rows through, counted, checked, committed. Returns the
    audit summary; raises StageError (nothing committed) when the stage cannot go on."""
    runtime = Runtime.from_params(all_params)
    if runtime.executor == "ray":
        from stages.core.ray_executor import require

        require()
    params = declared(all_params, stage.params)
    options = stage.options(params)
    from stages.core import gx_preload

    if gx_preload.enabled(runtime.gx_preload):
        gx_preload.start()     # imports GX in the background while this stage transforms its rows
    clean_stale_tmp(DATA, REJECTS, AUDIT, Path("models"))
    final = Path(stage.writes)
    tmp = tmp_sibling(final)
    ledger = Ledger(stage.name)
    ledger.extra.update({key.rpartition(".")[2]: param(params, key) for key in stage.audit})
    try:
        if isinstance(stage, MapStage):
            # The executor forks first: no sink thread exists yet to be copied mid-lock. Closed
            # before the gate: idle workers would hold their memory while it runs.
            executor = InProcess() if stage.in_process else executor_for(runtime)
            try:
                _run_map(stage, options, ledger, tmp, executor)
            finally:
                executor.close()
        elif isinstance(stage, StreamStage):
            _run_stream(stage, options, ledger, tmp, runtime)
        else:
            _run_table(stage, options, ledger, tmp, runtime)
        ledger.check()
        run_gate(stage, params, tmp, runtime)
        commit_path(tmp, final)
        return ledger.finish()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            signal.signal(signal.SIGINT, signal.SIG_IGN)      # a second Ctrl-C must not cut the clean-up short
        ledger.abort()
        clean_stale_tmp(DATA, Path("models"))
        raise


def run(stage: Stage) -> None:
    """A data stage's entry point (`python -m`): its summary line, or one error line and exit 1."""
    keep_freed_memory()
    try:
        summary = execute(stage, load_params())
    except StageError as exc:
        print_error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        print_error(f"{stage.name}: interrupted (Ctrl-C); nothing written, earlier outputs left as they were")
        sys.exit(130)
    print_stage_summary(summary)
