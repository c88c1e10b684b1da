"""Stage 7, shard: the train split in files of shard.size pairs, in order (the seed's chunks).
A whole-table stage (core.runner.TableStage): shards are cut from the whole train stream."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.params import whole_number
from stages.core.parquet import ParquetSink, iter_parquet
from stages.core.runner import TableContext, TableStage, run
from stages.core.schemas import PAIR_SCHEMA

SOURCE = Path("data/split/train.parquet")
HASH_BATCH_ROWS = 20000       # rows hashed at a time by the check (any size gives the same hashes)


def shard_slices(n_rows: int, size: int) -> list[tuple[int, int]]:
    """Pure: [start, stop) of each shard; all full except the last."""
    return [(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def reshard(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup a stream of batches into tables of exactly `size` rows (the last may be short)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for b in batches:
        while b.num_rows:
            take = min(size - held, b.num_rows)
            pending.append(b.slice(0, take))
            held += take
            b = b.slice(take)
            if held == size:
                yield pa.Table.from_batches(pending)
                pending, held = [], 0
    if held:
        yield pa.Table.from_batches(pending)


def build(ctx: TableContext) -> Iterator[tuple[str, Result]]:
    size = ctx.options
    sizes = []
    for i, table in enumerate(reshard(iter_parquet(SOURCE, min(size, 20000)), size)):
        sink = ParquetSink(ctx.out / f"train-{i:05d}.parquet", PAIR_SCHEMA)
        sink.write(table)
        sink.close()
        sizes.append(table.num_rows)
        yield "pairs", Result(kept=table)
    ctx.extra["shards"] = len(sizes)
    ctx.extra["shard_rows"] = sizes


def options(params: dict[str, Any]) -> int:
    return whole_number(params["shard"]["size"], "shard.size", 1)


# ----------------------------------------------------------------------------- expectations
def checks(params: dict[str, Any]) -> list[Check]:
    size = int(params["shard"]["size"])
    return [
        Check("shards", "keys", "ExpectColumnValuesToBeBetween",
              {"column": "rows_if_not_last", "min_value": size, "max_value": size},
              f"every shard but the last holds exactly shard.size={size} rows (the last is null here, "
              "and GX skips nulls)"),
        Check("shards", "keys", "ExpectColumnValuesToBeBetween",
              {"column": "rows", "min_value": 1, "max_value": size},
              "the last shard holds 1..shard.size rows (no empty shard files)"),
        Check("positions", "keys", "ExpectColumnPairValuesToBeEqual",
              {"column_A": "train_row_hash", "column_B": "shard_row_hash"},
              "shards together equal train: row i of the shards (in order) is row i of train, all columns"),
    ]


_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)     # a null's hash: apart from every value's (but for 2^-64)


def column_hashes(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 per value, the same for equal values whatever batch they come in: siphash (pandas'
    hash_array) of a text's UTF-8 bytes as stored, never decoded to Python strings and encoded
    back, which is what hashing the pandas column did (3-4x slower); numbers hash as numbers."""
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type) \
            or pa.types.is_large_binary(col.type):
        values = col.cast(pa.large_binary()).fill_null(b"").to_numpy(zero_copy_only=False)
    else:
        values = col.fill_null(pa.scalar(0).cast(col.type)).to_numpy(zero_copy_only=False)
    return np.where(valid, pd.util.hash_array(values, categorize=False), _NULL_HASH)


def row_hashes(paths: Iterable[Path], batch_rows: int) -> tuple[pd.Series, pd.Series]:
    """(answer_id, hash of the whole row: every column, in order) for the rows of `paths` in order, streamed."""
    ids, hashes = [], []
    for p in paths:
        for b in iter_parquet(p, batch_rows):
            row = np.zeros(b.num_rows, dtype=np.uint64)
            for col in b.columns:
                row = row * np.uint64(0x100000001B3) ^ column_hashes(col)    # uint64 arithmetic wraps
            ids.append(b.column("answer_id").to_numpy(zero_copy_only=False))
            hashes.append(row)
    if not ids:
        return pd.Series([], dtype="Int64"), pd.Series([], dtype="UInt64")
    return (pd.Series(np.concatenate(ids)).astype("Int64"), pd.Series(np.concatenate(hashes)).astype("UInt64"))


def shard_frame(names: list[str], rows: list[int]) -> pd.DataFrame:
    """One row per shard file, in order: its row count, and the same count for all but the last."""
    n = len(rows)
    return pd.DataFrame({"shard": names, "rows": pd.array(rows, dtype="Int64"),
                         "rows_if_not_last": pd.array([r if i < n - 1 else None for i, r in enumerate(rows)],
                                                      dtype="Int64")})


def frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    files = sorted(out.glob("train-*.parquet"))
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    yield "shards", "keys", shard_frame([f.name for f in files], rows)
    t_ids, t_hash = row_hashes([SOURCE], HASH_BATCH_ROWS)
    s_ids, s_hash = row_hashes(files, HASH_BATCH_ROWS)
    n = max(len(t_hash), len(s_hash))
    yield "positions", "keys", pd.DataFrame({
        "answer_id": t_ids.reindex(range(n)).fillna(s_ids.reindex(range(n))),
        "train_row_hash": t_hash.reindex(range(n)), "shard_row_hash": s_hash.reindex(range(n))})


STAGE = TableStage(
    name="shard", module="stages.curate.shard", reads=(str(SOURCE),), writes="data/shards",
    params=("shard.size",), options=options,
    counts_in=(("pairs", str(SOURCE)),),
    build=build,
    suite=Suite(checks=checks, frames=frames, ids={"shards": ["shard"], "positions": ["answer_id"]}),
)

if __name__ == "__main__":
    run(STAGE)
