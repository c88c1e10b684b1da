"""Stage shard: the train split in full shards but the last; its quality suite (shards equal train, row by row)."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gate_cases import assert_suite_passes_clean_and_fails_violating, case_ids, ids, suite_params
from stages.core.schemas import PAIR_SCHEMA
from stages.curate import shard
from stages.curate.shard import reshard, shard_slices


def test_shards_are_full_except_last() -> None:
    batches = [pa.record_batch({"x": list(range(i, i + n))}) for i, n in ((0, 7), (7, 3), (10, 12))]
    tables = list(reshard(iter(batches), 5))
    assert [t.num_rows for t in tables] == [5, 5, 5, 5, 2]
    assert sum((t.column("x").to_pylist() for t in tables), []) == list(range(22))
    assert shard_slices(22, 5)[-1] == (20, 22)


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


def shard_frames(rows: list[int], train_hash: list[int], shard_hash: list[int]) -> list:
    n = len(rows)
    return [("shards", "keys", shard.shard_frame([f"train-{i:05d}.parquet" for i in range(n)], rows)),
            ("positions", "keys", pd.DataFrame({"answer_id": ids(list(range(500, 500 + len(train_hash)))),
                                                "train_row_hash": pd.Series(train_hash, dtype="UInt64"),
                                                "shard_row_hash": pd.Series(shard_hash, dtype="UInt64")}))]


def _pairs_table(n: int) -> pa.Table:
    return pa.table({"question_id": list(range(n)), "answer_id": [100 + i for i in range(n)],
                     "answer_rank": [1] * n, "title": [f"t{i}" for i in range(n)],
                     "question": [f"q é {i}" if i % 3 else "" for i in range(n)],
                     "answer": [None if i % 4 == 0 else f"a\n{i}" for i in range(n)],
                     "question_score": [i % 7 for i in range(n)], "answer_score": [None] + list(range(1, n))},
                    schema=PAIR_SCHEMA)


# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("shard", shard_frames([3, 3, 1], [1, 2, 3], [1, 2, 3]), shard_frames([3, 2, 2], [1, 2, 3], [1, 2, 3]),
     "shards.rows_if_not_last: expect_column_values_to_be_between", 1, ["train-00001.parquet"]),
    ("shard", shard_frames([3, 3, 1], [1, 2, 3], [1, 2, 3]), shard_frames([3, 3, 0], [1, 2, 3], [1, 2, 3]),
     "shards.rows: expect_column_values_to_be_between", 1, ["train-00002.parquet"]),
    ("shard", shard_frames([3, 1], [1, 2, 3, 4], [1, 2, 3, 4]), shard_frames([3, 1], [1, 2, 3, 4], [1, 2, 9, 4]),
     "positions.train_row_hash|shard_row_hash: expect_column_pair_values_to_be_equal", 1, [502]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(shard.STAGE, params, clean, bad, check, n_failed, example_ids)


@pytest.mark.parametrize("batch_rows", [1, 3, 50])
def test_shard_positions_flag_exactly_the_rows_that_differ(tmp_path, monkeypatch, batch_rows):
    """The shard check hashes every row of train and of the shards: equal rows hash equal whatever
    the batch they are read in, and a change to any one value (a null for an empty text or a 0
    included), or values swapped between columns, makes its row differ."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "split").mkdir(parents=True)
    train = _pairs_table(12)
    pq.write_table(train, "data/split/train.parquet")
    rows = train.to_pylist()
    changed = {1: ("question", None), 4: ("answer", ""), 6: ("answer_score", 0), 8: ("title", "t8 "),
               10: ("answer_rank", 2)}
    for i, (col, value) in changed.items():
        assert rows[i][col] != value
        rows[i][col] = value
    rows[2]["title"], rows[2]["question"] = rows[2]["question"], rows[2]["title"]   # the same values, moved
    changed[2] = None
    out = tmp_path / "shards"
    out.mkdir()
    shards = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    pq.write_table(shards.slice(0, 5), out / "train-00000.parquet")
    pq.write_table(shards.slice(5), out / "train-00001.parquet", row_group_size=2)
    params = {"shard": {"size": 5}}
    monkeypatch.setattr(shard, "HASH_BATCH_ROWS", batch_rows)      # rows hashed at a time by the check
    frames = dict(((t, s), df) for t, s, df in shard.STAGE.suite.frames(out, params))
    pos = frames[("positions", "keys")]
    differ = pos["train_row_hash"] != pos["shard_row_hash"]
    assert pos["answer_id"].tolist() == [100 + i for i in range(12)]
    assert sorted(pos.index[differ].tolist()) == sorted(changed)
    if batch_rows == 1:     # the same rows hash the same read one by one or all at once
        monkeypatch.setattr(shard, "HASH_BATCH_ROWS", 50)
        whole = dict(((t, s), df) for t, s, df in shard.STAGE.suite.frames(out, params))
        assert whole[("positions", "keys")]["train_row_hash"].tolist() == pos["train_row_hash"].tolist()
