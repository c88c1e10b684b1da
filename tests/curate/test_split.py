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


def split_frames(sides: dict[int, list[str]], cluster_of: dict[int, int] | None = None,
                 evals: dict[int, str] | None = None) -> list:
    rows = [(q, s) for q, ss in sides.items() for s in ss]
    distinct = pd.DataFrame({"question_id": ids([q for q, _ in rows]), "side": [s for _, s in rows]})
    per_q = distinct.drop_duplicates("question_id").reset_index(drop=True)
    cluster_of, evals = cluster_of or {}, evals or {}
    clusters = pd.DataFrame({"cluster": [cluster_of.get(q, q) for q in per_q["question_id"]], "side": per_q["side"]})
    trained = per_q[per_q["side"].isin(["train", "val"]) & per_q["question_id"].isin(list(evals))]
    return [("question_sides", "keys", distinct),
            ("split_questions", "keys", pd.DataFrame({"question_id": per_q["question_id"],
                                                      "is_test": (per_q["side"] == "test").astype(float),
                                                      "is_val": (per_q["side"] == "val").astype(float)})),
            ("cluster_sides", "keys", clusters.drop_duplicates().reset_index(drop=True)),
            ("eval_leaks", "keys", pd.DataFrame({"question_id": ids(trained["question_id"].tolist()),
                                                 "eval_question": [evals[q] for q in trained["question_id"]]}))]


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
    ("split", split_frames(balanced_sides(100), {3: 2, 4: 2}), split_frames(balanced_sides(100), {5: 2}),
     "cluster_sides.cluster: expect_column_values_to_be_unique", 2, [2, 2]),
    ("split", split_frames(balanced_sides(100), evals={0: "How to install Numpy?"}),
     split_frames(balanced_sides(100), evals={3: "How to install Numpy?"}),
     "eval_leaks.eval_question: expect_column_values_to_be_in_set", 1, [3]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(split.STAGE, params, clean, bad, check, n_failed, example_ids)


# ----------------------------------------------------------------------------- clusters, drop, eval overlap
def _questions(rows: list[tuple[int, str, int]], **extra) -> pd.DataFrame:
    """(question_id, title, cluster) rows as split.plan reads them."""
    q = pd.DataFrame({"question_id": [r[0] for r in rows], "title": [r[1] for r in rows],
                      "cluster": [r[2] for r in rows]})
    q["score"] = extra.get("score", [0] * len(rows))
    q["length"] = extra.get("length", [10] * len(rows))
    q["eval_question"] = extra.get("eval_question", [None] * len(rows))
    return q


FR = split.Fractions(42, 0.3, 0.2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["How to x?", "how to X", "Why y", "", "z z", "w"]), st.integers(0, 15)),
                min_size=1, max_size=60), st.integers(0, 5))
def test_plan_keeps_every_cluster_and_title_on_one_side(rows: list[tuple[str, int]], seed: int) -> None:
    q = _questions([(i + 1, t, 1 + min(c, i)) for i, (t, c) in enumerate(rows)])  # a cluster is named by a member
    p = split.plan(q, split.Fractions(seed, 0.3, 0.2))
    side = dict(zip(p["question_id"], p["side"]))
    for key, group in list(q.groupby("cluster")["question_id"]) + [
            (k, g) for k, g in q.assign(k=[split.group_key(i, t) for i, t in zip(q["question_id"], q["title"])])
            .groupby("k")["question_id"]]:
        assert len({side[i] for i in group}) == 1, key
    # A question whose cluster and title group hold no one else keeps its title-only side.
    alone = q.groupby("cluster")["question_id"].transform("size") == 1
    for i in q["question_id"][alone]:
        t = q.set_index("question_id").loc[i, "title"]
        if (q["title"].map(split.normalize_title) == split.normalize_title(t)).sum() == 1 or not split.normalize_title(t):
            assert side[i] == split.assign(i, t, seed, 0.3, 0.2)
    assert p["reason"].isna().all()


def test_a_cluster_joins_title_groups_and_counts_as_moved() -> None:
    q = _questions([(1, "alpha", 1), (2, "beta", 1), (3, "beta", 3), (4, "gamma", 4)])
    p = split.plan(q, FR).set_index("question_id")
    assert p.loc[1, "side"] == p.loc[2, "side"] == p.loc[3, "side"] == split.assign(1, "alpha", 42, 0.3, 0.2)
    assert p.loc[4, "side"] == p.loc[4, "title_side"]
    assert (p["side"] != p["title_side"]).sum() == (0 if p.loc[2, "title_side"] == p.loc[1, "side"] else 2)


def test_drop_keeps_highest_score_then_longest_then_smallest_id() -> None:
    drop = split.Fractions(42, 0.3, 0.2, "drop")
    q = _questions([(1, "a", 1), (2, "b", 1), (3, "c", 1), (4, "d", 4), (5, "e", 4), (6, "f", 6), (7, "g", 6)],
                   score=[1, 5, 5, 0, 0, 2, 2], length=[9, 10, 20, 5, 7, 3, 3])
    p = split.plan(q, drop).set_index("question_id")
    assert p["kept_id"].to_dict() == {1: 3, 2: 3, 3: 3, 4: 5, 5: 5, 6: 6, 7: 6}
    assert p["reason"].fillna("").to_dict() == {1: "near_duplicate", 2: "near_duplicate", 3: "", 4: "near_duplicate",
                                                 5: "", 6: "", 7: "near_duplicate"}
    assert split.plan(q, FR)["reason"].isna().all()          # group mode drops nothing


def test_eval_overlap_leaves_train_and_val_only() -> None:
    rows = [(i, f"title {i}", i) for i in range(1, 200)]
    q = _questions(rows, eval_question=["How to install Numpy?"] * len(rows))
    p = split.plan(q, FR)
    assert (p["reason"] == "eval_overlap").tolist() == p["side"].isin(["train", "val"]).tolist()
    assert (p["side"] == "test").any()
