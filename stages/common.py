"""Shared mechanics of every stage: params, atomic outputs, the audit ledger, batch streaming.

A stage module holds a pure transform (batch in -> kept batch + rejected rows with a reason)
and a thin entry point that uses the pieces here for everything else, so that every stage
reads params, writes outputs and accounts for rows the same way.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(os.environ.get("SOQA_ROOT", ".")).resolve()
DATA = Path("data")
METRICS = Path("metrics")

# Rejected rows of every stage share one schema, so the report can read them all alike.
REJECT_SCHEMA = pa.schema([
    ("stage", pa.string()),
    ("table", pa.string()),        # questions | answers | pairs
    ("id", pa.int64()),            # the row's original id, null when the id itself was unreadable
    ("source_id", pa.string()),    # the id as it stood in the source, for unreadable ids
    ("reason", pa.string()),       # a short machine-readable reason, e.g. empty_body
    ("detail", pa.string()),       # a human hint: the bad value, the snippet, the rule
])

QUESTION_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("owner_user_id", pa.int64()),
    ("creation_date", pa.timestamp("s", tz="UTC")),
    ("score", pa.int64()),
    ("title", pa.string()),
    ("body", pa.string()),
])
ANSWER_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("owner_user_id", pa.int64()),
    ("creation_date", pa.timestamp("s", tz="UTC")),
    ("parent_id", pa.int64()),
    ("score", pa.int64()),
    ("body", pa.string()),
])
PAIR_SCHEMA = pa.schema([
    ("question_id", pa.int64()),
    ("answer_id", pa.int64()),
    ("answer_rank", pa.int32()),   # 1 = best answer of its question
    ("title", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("question_score", pa.int64()),
    ("answer_score", pa.int64()),
])
SCHEMAS = {"questions": QUESTION_SCHEMA, "answers": ANSWER_SCHEMA, "pairs": PAIR_SCHEMA}


class StageError(RuntimeError):
    """A stage cannot go on: the message is printed as one clear line and the stage exits 1."""


# ----------------------------------------------------------------------------- params
def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


# ----------------------------------------------------------------------------- atomic outputs
def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (file or folder) and move it into place on success.

    A killed or failing stage leaves the old output (or none), never a half-written one: the
    rename is atomic on one file system. Folders are swapped through a second rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    commit_path(tmp, path)


def commit_path(tmp: Path, path: Path) -> None:
    """Move a finished temporary output over its final path (atomically for files)."""
    if tmp.is_dir():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        _remove(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_stale_tmp(*dirs: str | Path) -> None:
    """Remove temporaries left by a killed earlier run (their names start with '.' and hold .tmp-)."""
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                    _remove(p)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- batches
@dataclass
class BatchResult:
    """What a pure transform returns for one batch."""
    kept: pd.DataFrame
    rejected: pd.DataFrame = field(default_factory=lambda: empty_rejects())
    repaired: Counter = field(default_factory=Counter)   # rows kept after a repair, by kind


def empty_rejects() -> pd.DataFrame:
    return REJECT_SCHEMA.empty_table().to_pandas()


def _storable(text: str) -> str:
    """The text, with lone surrogates (which Arrow strings cannot hold) written as backslash escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def rejects(table: str, ids: Iterable, reasons: Iterable[str], details: Iterable[str] | None = None,
            source_ids: Iterable | None = None) -> pd.DataFrame:
    """Build rejected rows (stage is filled in by the ledger)."""
    ids = list(ids)
    reasons = list(reasons)
    n = len(ids)
    details = [""] * n if details is None else [_storable(str(d)[:300]) for d in details]
    source_ids = [None if i is None else str(i) for i in ids] if source_ids is None else list(source_ids)
    return pd.DataFrame({
        "stage": pd.Series([""] * n, dtype="string"),
        "table": pd.Series([table] * n, dtype="string"),
        "id": pd.Series(ids, dtype="Int64"),
        "source_id": pd.Series(source_ids, dtype="string"),
        "reason": pd.Series(reasons, dtype="string"),
        "detail": pd.Series(details, dtype="string"),
    })


def to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def to_frame(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable ints and plain Python strings (ids stay int64, NA stays NA)."""
    return batch.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)


def iter_parquet(path: str | Path, batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(path)
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def prefetched(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """`items` produced by a thread up to `depth` ahead of the consumer, in order.

    Arrow decodes and decompresses parquet without the GIL, so the next batches are read while
    this thread works on the current one. The thread starts at the first next(): a pool that
    forks before it (run_per_table's) never copies a process with the reader mid-way.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():        # the consumer may have stopped early: never block on a full queue
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:       # re-raised in the consumer
            put((done, exc))

    reader = threading.Thread(target=produce, name="prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        reader.join()


def parquet_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


class ParquetSink:
    """Streams rows into one parquet file in fixed-size row groups.

    Row groups are cut every ROW_GROUP rows whatever the incoming batch sizes, so a file's
    bytes depend only on its rows (not on batch size or worker count). An empty output is
    still a file with the schema.
    """

    ROW_GROUP = 32 * 1024

    def __init__(self, path: Path, schema: pa.Schema, background: bool = False):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._held = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        # background: row groups are encoded and compressed by a thread (Arrow releases the GIL
        # there), overlapping the caller's Python work. Only for processes that never fork while
        # the sink is open: a forked child could inherit a lock that thread holds.
        self._background = background
        self._queue: Any = None
        self._thread: Any = None
        self._error: BaseException | None = None

    def write(self, table: pa.Table | pd.DataFrame) -> None:
        if isinstance(table, pd.DataFrame):
            table = to_table(table, self.schema)
        if not table.num_rows:
            return
        self._pending.append(table.cast(self.schema))
        self._held += table.num_rows
        self.rows += table.num_rows
        if self._held >= self.ROW_GROUP:
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        if not self._pending:
            return
        # One chunk per column: the writer cuts pages at chunk edges, so chunks left as the batches
        # came would make the bytes depend on the batch size.
        held = pa.concat_tables(self._pending).combine_chunks()
        full = (held.num_rows // self.ROW_GROUP) * self.ROW_GROUP
        cut = held.num_rows if final else full
        if cut:
            self._write_groups(held.slice(0, cut))
        rest = held.slice(cut)
        self._pending = [rest] if rest.num_rows else []
        self._held = rest.num_rows

    def _write_groups(self, table: pa.Table) -> None:
        if not self._background:
            self._writer.write_table(table, row_group_size=self.ROW_GROUP)
            return
        if self._thread is None:
            import queue
            import threading

            self._queue = queue.Queue(maxsize=2)    # at most two row-group tables waiting: bounded memory
            self._thread = threading.Thread(target=self._write_loop, name=f"sink-{self.path.name}", daemon=True)
            self._thread.start()
        if self._error is not None:
            raise self._error
        self._queue.put(table)

    def _write_loop(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table, row_group_size=self.ROW_GROUP)
                except BaseException as exc:   # re-raised in the caller's thread
                    self._error = exc

    def close(self) -> None:
        self._drain(final=True)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error


def map_batches(fn: Callable[[Any], Any], batches: Iterable[Any], workers: int) -> Iterator[Any]:
    """Apply `fn` to each batch, in order, in `workers` processes (1: in this process).

    Order is preserved, so outputs are byte-identical whatever the number of workers. At most
    2 x workers batches are in flight: Pool.imap would read the whole input ahead into its
    queue, which holds the entire dataset in memory when the workers are the slower side.
    """
    if workers <= 1:
        for b in batches:
            yield fn(b)
        return
    import multiprocessing as mp
    from collections import deque

    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.apply_async(fn, (b,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def arrow_result(fn: Callable[[Any], tuple[int, BatchResult]], schema: pa.Schema, job: Any) -> tuple[int, BatchResult]:
    """Run a batch transform and turn its kept rows into Arrow where it ran (a pool worker).

    An Arrow table crosses the process boundary as a few buffers; a DataFrame of Python
    strings is pickled string by string, and the parent would convert it for the sink anyway.
    """
    n_in, res = fn(job)
    if isinstance(res.kept, pd.DataFrame):
        res.kept = to_table(res.kept, schema)
    return n_in, res


# ----------------------------------------------------------------------------- audit ledger
class Ledger:
    """Counts rows in / out / rejected-by-reason for one stage and keeps the rejected rows.

    `finish()` refuses to write anything when rows_in != rows_out + rejected: a stage that
    loses rows silently is a bug, and the pipeline stops there.
    """

    def __init__(self, stage: str):
        self.stage = stage
        self.rows_in: Counter = Counter()       # by table
        self.rows_out: Counter = Counter()
        self.rejected: Counter = Counter()      # by reason
        self.rejected_by_table: Counter = Counter()
        self.repaired: Counter = Counter()
        self.started = time.time()
        self.extra: dict[str, Any] = {}
        self._reject_tmp = _tmp_sibling(DATA / "rejects" / f"{stage}.parquet")
        self._reject_tmp.parent.mkdir(parents=True, exist_ok=True)
        self._rejects = ParquetSink(self._reject_tmp, REJECT_SCHEMA)

    def count_in(self, table: str, n: int) -> None:
        self.rows_in[table] += n

    def count_out(self, table: str, n: int) -> None:
        self.rows_out[table] += n

    def reject(self, rej: pd.DataFrame) -> None:
        if len(rej) == 0:
            return
        rej = rej.copy()
        rej["stage"] = self.stage
        self.rejected.update(rej["reason"].astype(str).tolist())
        self.rejected_by_table.update(rej["table"].astype(str).tolist())
        self._rejects.write(rej)

    def record(self, table: str, n_in: int, result: BatchResult) -> None:
        """Book one transformed batch: n_in rows went in, result says where they went."""
        self.count_in(table, n_in)
        self.count_out(table, len(result.kept))
        self.reject(result.rejected)
        self.repaired.update(result.repaired)

    def summary(self) -> dict[str, Any]:
        tables = sorted(set(self.rows_in) | set(self.rows_out))
        return {
            "stage": self.stage,
            "rows_in": sum(self.rows_in.values()),
            "rows_out": sum(self.rows_out.values()),
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "repaired_by_kind": dict(sorted(self.repaired.items())),
            "tables": {t: {"rows_in": self.rows_in[t], "rows_out": self.rows_out[t],
                           "rejected": self.rejected_by_table[t]} for t in tables},
            **self.extra,
        }

    def check(self) -> dict[str, Any]:
        s = self.summary()
        for t, c in s["tables"].items():
            if c["rows_in"] != c["rows_out"] + c["rejected"]:
                raise StageError(
                    f"stage {self.stage}: rows lost in table {t}: rows_in {c['rows_in']} != "
                    f"rows_out {c['rows_out']} + rejected {c['rejected']}")
        return s

    def finish(self) -> dict[str, Any]:
        """Check the invariant, then write rejects and the audit metrics atomically."""
        s = self.check()
        self._rejects.close()
        commit_path(self._reject_tmp, DATA / "rejects" / f"{self.stage}.parquet")
        s["seconds"] = round(time.time() - self.started, 3)
        # Wall time varies run to run; keep it out of the DVC metric so diffs show data changes.
        write_json(METRICS / "audit" / f"{self.stage}.json", {k: v for k, v in s.items() if k != "seconds"})
        return s

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._rejects.close()
        _remove(self._reject_tmp)


# ----------------------------------------------------------------------------- memory
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel at once.

    By default glibc serves every block of 128 KB or more with a fresh mmap, unmapped again on
    free, and trims the heap whenever 128 KB lie free at its top. A stage allocates its batches'
    buffers over and over, so every page was faulted in anew: 2M page faults and 9 s of system
    time in strip_html's main process at Kaggle size. Blocks under 32 MB now come from the heap,
    and up to 1 GB may lie free there: 7x fewer faults, about 8% less CPU for the stage, the same
    peak RSS (bench/results/README.md). Forked workers inherit it. Returns whether both settings
    took; where the C library is not glibc nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3        # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) & bool(mallopt(m_trim_threshold, 1 << 30))


# ----------------------------------------------------------------------------- running a stage
def stage_main(stage: str, body: Callable[[dict[str, Any], Ledger], dict[str, Path]]) -> None:
    """Run a stage entry point: params in, ledger, checks, atomic commit, funnel line out.

    `body` writes every output to a temporary path and returns {final_path: tmp_path}; only
    when the audit invariant and the quality checks pass are they moved into place.
    """
    from rich.markup import escape  # paths and file contents in messages are not markup

    from stages import report_cli  # rich printing, kept out of the transforms

    keep_freed_memory()
    params = load_params()
    from stages import gx_server

    gx_server.start()     # imports GX in the background while this stage transforms its rows
    clean_stale_tmp(DATA, DATA / "rejects", METRICS / "audit", Path("models"))
    ledger = Ledger(stage)
    try:
        outputs = body(params, ledger)
        summary = ledger.check()
        run_checks(stage, outputs, params)
        for final, tmp in outputs.items():
            commit_path(tmp, Path(final))
        summary = ledger.finish()
    except StageError as exc:
        ledger.abort()
        clean_stale_tmp(DATA, Path("models"))
        report_cli.console_err().print(f"[bold red]error[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(1)
    except BaseException:
        ledger.abort()
        clean_stale_tmp(DATA, Path("models"))
        raise
    report_cli.print_stage_summary(summary)


def exit_on_stage_error(body: Callable[[], None]) -> None:
    """Run a stage that does not stream rows through a ledger (tokenizer, train): a StageError is
    printed as one clear line and the stage exits 1, anything else propagates with its traceback."""
    from rich.markup import escape

    from stages import report_cli

    try:
        body()
    except StageError as exc:
        report_cli.console_err().print(f"[bold red]error[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(1)


def run_checks(stage: str, outputs: dict[str, Path], params: dict[str, Any]) -> None:
    """Quality gate: the stage's Great Expectations suite over its (still temporary) outputs."""
    from stages import gx_server, quality

    outputs = {str(k): Path(v) for k, v in outputs.items()}
    if gx_server.enabled():
        try:
            gx_server.validate(stage, outputs, params)    # GX already imported there (see gx_server)
            return
        except gx_server.ServerUnavailable as exc:       # never skip the gate: validate here
            print(f"{stage}: GX server unavailable ({exc}); validating in this process", file=sys.stderr)
    quality.validate_stage(stage, outputs, params)


@dataclass
class Offload:
    """A batch transform in three parts, of which only `work` runs in the worker pool.

    For a transform whose costly part touches few rows (validate_utf: ftfy on the ~6% of texts
    that are not plain ASCII), `prepare` picks those out in this process with vectorised Arrow
    calls, `work` handles just them in a worker, and `finish` puts the batch together here. Whole
    batches crossing to a worker and back as pickles cost more CPU than the pool saved.
    """
    prepare: Callable[[str, pa.RecordBatch], tuple[Any, Any]]   # (table, batch) -> (job for the pool, state kept here)
    work: Callable[[Any], Any]                                  # job -> its result; module level, so it pickles
    finish: Callable[[Any, Any], BatchResult]                   # (state, result) -> the batch's BatchResult


def run_per_table(stage: str, in_dir: Path, out_dir: Path, ledger: Ledger, params: dict[str, Any],
                  fn: Callable[[tuple[str, Any, str]], tuple[int, BatchResult]] | Offload, option: Any,
                  tables: Iterable[str] = ("questions", "answers"), workers: int | None = None) -> None:
    """Stream every table of `in_dir` through `fn` in batches into `out_dir`.

    `workers` processes (None: the `workers` param); a cheap `fn` runs faster in this process
    than the batches travel to a worker and back. `fn` may be an Offload (then `option` is unused).
    """
    from stages.report_cli import row_progress

    batch_rows = int(params["ingest"].get("batch_rows", 20000))
    workers = int(params.get("workers", 1)) if workers is None else workers
    # Work for a pool goes out in small chunks, and both tables through one pool: with a few big
    # batches the last one of each table ran alone while the other core idled (about a batch's
    # time per table). Chunking cannot change the output: the sink cuts its own row groups.
    chunk_rows = batch_rows if workers <= 1 else max(1, min(batch_rows, POOL_CHUNK_ROWS))
    tables = list(tables)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(parquet_rows(in_dir / f"{t}.parquet") for t in tables)
    # Background sinks: encoding and compressing row groups overlaps the batches still coming.
    # Safe with the pool below: it forks its workers when map_batches starts, before the first
    # row group exists and so before any sink thread runs.
    sinks = {t: ParquetSink(out_dir / f"{t}.parquet", SCHEMAS[t], background=True) for t in tables}
    try:
        def batches() -> Iterator[tuple[str, pa.RecordBatch]]:
            for t in tables:
                for b in prefetched(iter_parquet(in_dir / f"{t}.parquet", chunk_rows)):
                    yield t, b

        def results() -> Iterator[tuple[str, int, BatchResult]]:
            if not isinstance(fn, Offload):
                yield from map_batches(functools.partial(_tagged, fn), ((t, b, option) for t, b in batches()), workers)
                return
            # map_batches keeps order, so each result meets the state its batch left here, first in first out.
            states: deque = deque()

            def jobs() -> Iterator[Any]:
                for t, b in batches():
                    job, state = fn.prepare(t, b)
                    states.append((t, b.num_rows, state))
                    yield job

            for out in map_batches(fn.work, jobs(), workers):
                t, n_in, state = states.popleft()
                yield t, n_in, fn.finish(state, out)

        with row_progress(stage, total) as advance:
            for t, n_in, res in results():
                ledger.record(t, n_in, res)
                sinks[t].write(res.kept)
                advance(n_in)
    finally:
        for sink in sinks.values():
            sink.close()


POOL_CHUNK_ROWS = 4000


def _tagged(fn: Callable[[tuple[str, Any, Any]], tuple[int, BatchResult]],
            job: tuple[str, Any, Any]) -> tuple[str, int, BatchResult]:
    """A pool job that says which table its result belongs to (module level: it must pickle)."""
    return (job[0], *arrow_result(fn, SCHEMAS[job[0]], job))
