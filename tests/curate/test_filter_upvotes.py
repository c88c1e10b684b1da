"""Stage filter_upvotes: answers below filter.min_score go, with their reason; its quality suite."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from gate_cases import assert_suite_passes_clean_and_fails_violating, case_ids, ids, suite_params
from stages.curate import filter_upvotes


def _answers(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame({"id": pd.array([r[0] for r in rows], dtype="Int64"),
                         "parent_id": pd.array([r[1] for r in rows], dtype="Int64"),
                         "score": pd.array([r[2] for r in rows], dtype="Int64"),
                         "body": [f"a{r[0]}" for r in rows]})


def test_filter_upvotes_threshold_is_inclusive() -> None:
    batch = pa.Table.from_pandas(_answers([(1, 9, 1), (2, 9, 2), (3, 9, 5)]), preserve_index=False)
    res = filter_upvotes.transform("answers", batch, min_score=2)
    assert res.kept.column("id").to_pylist() == [2, 3]
    assert res.rejected["reason"].tolist() == ["score_below_min"]


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("filter_upvotes", [("answers", "keys", pd.DataFrame({"id": ids([1, 2]), "score": ids([2, 9])}))],
     [("answers", "keys", pd.DataFrame({"id": ids([1, 2, 3]), "score": ids([2, 1, 0])}))],
     "answers.score: expect_column_values_to_be_between", 2, [2, 3]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(filter_upvotes.STAGE, params, clean, bad, check, n_failed, example_ids)
