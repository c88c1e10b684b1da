"""Stage top_answers: the k best answers per question, deterministic ties, joined into pairs; its quality suite."""
from __future__ import annotations

import pandas as pd
import pytest

from gate_cases import assert_suite_passes_clean_and_fails_violating, case_ids, pairs, suite_params
from stages.curate import top_answers


def _answers(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame({"id": pd.array([r[0] for r in rows], dtype="Int64"),
                         "parent_id": pd.array([r[1] for r in rows], dtype="Int64"),
                         "score": pd.array([r[2] for r in rows], dtype="Int64"),
                         "body": [f"a{r[0]}" for r in rows]})


def test_top_answers_ranks_with_deterministic_ties() -> None:
    ans = _answers([(30, 1, 5), (20, 1, 5), (10, 1, 7), (40, 1, 5), (50, 2, 1), (60, 3, 9)])
    res = top_answers.rank_answers(ans, {1, 2}, k=2)
    assert list(zip(res.kept["id"], res.kept["answer_rank"])) == [(10, 1), (20, 2), (50, 1)]
    assert dict(zip(res.rejected["id"], res.rejected["reason"])) == {
        60: "question_not_kept", 30: "not_top_k", 40: "not_top_k"}
    q = pd.DataFrame({"id": pd.array([2, 1], dtype="Int64"), "title": ["t2", "t1"], "body": ["q2", "q1"],
                      "score": pd.array([0, 3], dtype="Int64")})
    pairs = top_answers.join_pairs(q, res.kept)
    assert pairs["answer_id"].tolist() == [50, 10, 20] and pairs["question"].tolist() == ["q2", "q1", "q1"]


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("top_answers", [("pairs", "keys", pairs([1, 1, 2], [10, 11, 12], [1, 2, 1]).assign(question_in_input=True))],
     [("pairs", "keys", pairs([1, 1, 1], [10, 11, 13], [1, 2, 3]).assign(question_in_input=True))],
     "pairs.answer_rank: expect_column_values_to_be_between", 1, [13]),
    ("top_answers", [("pairs", "keys", pairs([1, 2], [10, 12], [1, 1]).assign(question_in_input=True))],
     [("pairs", "keys", pairs([1, 1, 2], [10, 10, 12], [1, 2, 1]).assign(question_in_input=True))],
     "pairs.question_id+answer_id: expect_compound_columns_to_be_unique", 2, [10, 10]),
    ("top_answers", [("pairs", "keys", pairs([1, 2], [10, 12], [1, 1]).assign(question_in_input=True))],
     [("pairs", "keys", pairs([1, 2], [10, 12], [1, 1]).assign(question_in_input=[True, False]))],
     "pairs.question_in_input: expect_column_values_to_be_in_set", 1, [12]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(top_answers.STAGE, params, clean, bad, check, n_failed, example_ids)
