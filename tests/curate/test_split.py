"""Stage split: grouped by question and title, stable under added data; its quality suite."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from gate_cases import assert_suite_passes_clean_and_fails_violating, case_ids, ids, suite_params
from stages.curate import split


def test_split_groups_same_title_and_is_stable() -> None:
    assert split.normalize_title("How to  sort a Dict?") == split.normalize_title("how to sort a dict")
    a = split.assign(1, "How to sort a dict?", 42, 0.2, 0.05)
    assert a == split.assign(99, "how to sort a DICT", 42, 0.2, 0.05)
    fractions = pd.Series([split.assign(i, f"title {i}", 42, 0.2, 0.05) for i in range(20000)]).value_counts(normalize=True)
    assert abs(fractions["test"] - 0.2) < 0.015 and abs(fractions["val"] - 0.04) < 0.01


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.sampled_from(["How to x?", "how to X", "Why y", "", "z z"])),
                min_size=1, max_size=80), st.integers(0, 10))
def test_split_never_straddles_a_question(rows: list[tuple[int, str]], seed: int) -> None:
    pairs = pd.DataFrame({"question_id": [r[0] for r in rows], "title": [r[1] for r in rows]})
    # One title per question id, as in real data.
    pairs["title"] = pairs.groupby("question_id")["title"].transform("first")
    parts = split.sides(pairs, seed, 0.3, 0.2)
    side = {}
    for name, part in parts.items():
        for q, t in zip(part["question_id"], part["title"]):
            for key in (("q", q), ("t", split.normalize_title(t)) if split.normalize_title(t) else ("q", q)):
                assert side.setdefault(key, name) == name
    assert sum(len(p) for p in parts.values()) == len(pairs)
    # Adding rows never moves existing questions.
    more = split.sides(pd.concat([pairs, pd.DataFrame({"question_id": [999], "title": ["new"]})]), seed, 0.3, 0.2)
    for name, part in parts.items():
        assert set(part["question_id"]) <= set(more[name]["question_id"])


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


def split_frames(sides: dict[int, list[str]]) -> list:
    rows = [(q, s) for q, ss in sides.items() for s in ss]
    distinct = pd.DataFrame({"question_id": ids([q for q, _ in rows]), "side": [s for _, s in rows]})
    per_q = distinct.drop_duplicates("question_id").reset_index(drop=True)
    return [("question_sides", "keys", distinct),
            ("split_questions", "keys", pd.DataFrame({"question_id": per_q["question_id"],
                                                      "is_test": (per_q["side"] == "test").astype(float),
                                                      "is_val": (per_q["side"] == "val").astype(float)}))]


def balanced_sides(n: int) -> dict[int, list[str]]:
    # 20% test, 4% val (5% of the rest), the remainder train: exactly the requested shares.
    out = {}
    for q in range(n):
        out[q] = ["test"] if q % 5 == 0 else (["val"] if q % 25 == 1 else ["train"])
    return out


# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("split", split_frames(balanced_sides(100)),
     split_frames({**balanced_sides(100), 7: ["train", "test"]}),
     "question_sides.question_id: expect_column_values_to_be_unique", 2, [7, 7]),
    ("split", split_frames(balanced_sides(100)), split_frames({q: ["test"] for q in range(100)}),
     "split_questions.is_test: expect_column_mean_to_be_between", 0, []),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(split.STAGE, params, clean, bad, check, n_failed, example_ids)
