"""Stage 7, shard: the train split in files of shard.size pairs, in order (the seed's chunks)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from stages.common import (DATA, Ledger, PAIR_SCHEMA, ParquetSink, StageError, _tmp_sibling, iter_parquet,
                           parquet_rows, stage_main)


def shard_slices(n_rows: int, size: int) -> list[tuple[int, int]]:
    """Pure: [start, stop) of each shard; all full except the last."""
    return [(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def reshard(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
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


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        size = int(params["shard"]["size"])
        if size <= 0:
            raise StageError(f"shard: shard.size must be positive, got {size}")
        final = DATA / "shards"
        tmp = _tmp_sibling(final)
        tmp.mkdir(parents=True)
        sizes = []
        batches = iter_parquet(DATA / "split" / "train.parquet", min(size, 20000))
        for i, table in enumerate(reshard(batches, size)):
            sink = ParquetSink(tmp / f"train-{i:05d}.parquet", PAIR_SCHEMA)
            sink.write(table)
            sink.close()
            sizes.append(table.num_rows)
        ledger.count_in("pairs", parquet_rows(DATA / "split" / "train.parquet"))
        ledger.count_out("pairs", sum(sizes))
        ledger.extra["shards"] = len(sizes)
        ledger.extra["shard_rows"] = sizes
        return {final: tmp}

    stage_main("shard", body)


if __name__ == "__main__":
    main()
