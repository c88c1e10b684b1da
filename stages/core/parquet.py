"""Parquet in and out: streamed reads, row-group descriptors for executors, and the sink every
stage writes through (its bytes depend only on the rows, never on batch size or worker count)."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.schemas import to_table


def iter_parquet(path: str | Path, batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(path)
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def parquet_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


@dataclass(frozen=True)
class RowGroup:
    """A unit of work an executor hands out: one row group of one file, read where it runs."""
    path: str
    group: int
    rows: int

    def read(self, columns: Sequence[str] | None = None) -> pa.RecordBatch:
        table = pq.ParquetFile(self.path).read_row_group(self.group, columns=columns)
        return table.combine_chunks().to_batches()[0]


def row_groups(path: str | Path) -> list[RowGroup]:
    """The row groups of a parquet file, in order (a file with no rows has none)."""
    meta = pq.ParquetFile(path).metadata
    return [RowGroup(str(path), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]


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
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, table: pa.Table | pa.RecordBatch | pd.DataFrame) -> None:
        if isinstance(table, pd.DataFrame):
            table = to_table(table, self.schema)
        elif isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
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
