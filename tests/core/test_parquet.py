"""ParquetSink: the bytes of a file depend only on its rows, written in this thread or a background one."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from stages.core.parquet import ParquetSink
from stages.core.schemas import PAIR_SCHEMA


def test_background_sink_writes_the_same_bytes(tmp_path: Path) -> None:
    rows = 3 * ParquetSink.ROW_GROUP + 123
    table = pa.table({
        "question_id": pa.array(range(rows), pa.int64()), "answer_id": pa.array(range(rows), pa.int64()),
        "answer_rank": pa.array([1] * rows, pa.int32()), "title": [f"t{i}" for i in range(rows)],
        "question": [f"q {i} é" for i in range(rows)], "answer": [f"a {i}" * (i % 7) for i in range(rows)],
        "question_score": pa.array([i % 5 for i in range(rows)], pa.int64()),
        "answer_score": pa.array([i % 3 for i in range(rows)], pa.int64())}, schema=PAIR_SCHEMA)
    for background in (False, True):
        sink = ParquetSink(tmp_path / f"{background}.parquet", PAIR_SCHEMA, background=background)
        for start in range(0, rows, 5000):
            sink.write(table.slice(start, 5000))
        sink.close()
        assert sink.rows == rows
    assert (tmp_path / "False.parquet").read_bytes() == (tmp_path / "True.parquet").read_bytes()
