"""Stage 6, split: train/val/test grouped by question, title and near-duplicate cluster, by a stable hash.

A question's answers always land on one side (the seed split rows, so one question's two
answers leaked into train and test). Questions are grouped by normalised title (asked twice under
the same title) and by their dedup cluster (near-duplicates, shared answers, duplicate links:
stage dedup); a group is the union of both, so no cluster straddles sides. A group's side is a
hash of the seed and the normalised title of its smallest question id: a question alone in its
title group keeps the side title-only grouping gave it, and adding data moves a question only when
it joins a cluster (the audit counts the questions that moved, `moved_questions`).

dedup.mode drop keeps one question per cluster (highest score, then longest title + body, then
smallest id) and rejects the others' pairs as near_duplicate; and train/val questions matching a
human-eval question are rejected as eval_overlap (test keeps them: it is never trained on). Both
happen here, after the score filter, so a question dropped for a cluster mate always has a kept
mate in the pairs, and a filter.min_score change does not rerun dedup.
A whole-table stage (core.runner.TableStage): its check reads every side at once.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.errors import StageError
from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.params import whole_number
from stages.core.parquet import iter_parquet
from stages.core.runner import TableContext, TableStage, run
from stages.core.schemas import PAIR_SCHEMA, rejects, to_frame
from stages.curate.dedup import minhash

SOURCE = Path("data/top2/pairs.parquet")
CLUSTERS = Path("data/dedup/clusters.parquet")
EDGES = Path("data/dedup/edges.parquet")
MODES = ("group", "drop")
# Split fractions are checked within this many binomial standard errors of the requested share
# (sqrt(p(1-p)/n) over n questions), and never tighter than SPLIT_MIN_TOLERANCE: hashing
# assigns questions at random, so a small sample legitimately strays further than a big one.
SPLIT_TOLERANCE_SE = 4.0
SPLIT_MIN_TOLERANCE = 0.02

SPLITS = ("train", "val", "test")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_title(title: str) -> str:
    """Case, punctuation and spacing folded: 'How to sort a dict?' == 'how to sort a  dict'."""
    return _NON_WORD.sub(" ", title.casefold()).strip()


def group_key(question_id: int, title: str) -> str:
    norm = normalize_title(title or "")
    return f"t:{norm}" if norm else f"q:{question_id}"


def unit_hash(key: str, seed: int) -> float:
    """A stable uniform number in [0, 1) for a key (blake2b: same on every machine and Python)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(question_id: int, title: str, seed: int, test_fraction: float, val_fraction: float) -> str:
    return side_of(group_key(question_id, title), seed, test_fraction, val_fraction)


def side_of(key: str, seed: int, test_fraction: float, val_fraction: float) -> str:
    u = unit_hash(key, seed)
    if u < test_fraction:
        return "test"
    # val is a share of what is not test, as in the seed (5% of train).
    if u < test_fraction + (1 - test_fraction) * val_fraction:
        return "val"
    return "train"


def sides(pairs: pd.DataFrame, seed: int, test_fraction: float, val_fraction: float) -> dict[str, pd.DataFrame]:
    """Pure, title grouping only: pair rows -> {split: rows}; every row goes to exactly one split."""
    sides = [assign(q, t, seed, test_fraction, val_fraction)
             for q, t in zip(pairs["question_id"].tolist(), pairs["title"].tolist())]
    s = pd.Series(sides, index=pairs.index)
    return {name: pairs[s == name].reset_index(drop=True) for name in SPLITS}


def group_labels(question_ids: np.ndarray, title_keys: list[str], clusters: np.ndarray) -> np.ndarray:
    """Per question: the smallest question id of its group, the union of its title group and its
    dedup cluster (connected components, by propagating the smallest id until nothing changes)."""
    t_code = pd.factorize(pd.Series(title_keys, dtype=object))[0]
    c_code = pd.factorize(pd.Series(clusters))[0]
    label = np.asarray(question_ids, np.int64).copy()
    big = np.iinfo(np.int64).max
    while True:
        t_min = np.full(t_code.max() + 1 if len(t_code) else 0, big)
        np.minimum.at(t_min, t_code, label)
        c_min = np.full(c_code.max() + 1 if len(c_code) else 0, big)
        np.minimum.at(c_min, c_code, label)
        new = np.minimum(t_min[t_code], c_min[c_code])
        if np.array_equal(new, label):
            return label
        label = new


def plan(q: pd.DataFrame, f: "Fractions") -> pd.DataFrame:
    """Pure: one row per question (question_id, title, score, length, cluster, eval_question) ->
    side, title_side (title grouping only), reason (None: kept) and kept_id (drop mode's choice)."""
    keys = [group_key(i, t) for i, t in zip(q["question_id"].tolist(), q["title"].tolist())]
    ids = q["question_id"].to_numpy("int64")
    label = group_labels(ids, keys, q["cluster"].to_numpy("int64"))
    key_of = dict(zip(ids.tolist(), keys))
    side_of_key = {k: side_of(k, f.seed, f.test, f.val) for k in set(keys)}
    out = pd.DataFrame({"question_id": ids,
                        "side": [side_of_key[key_of[g]] for g in label.tolist()],
                        "title_side": [side_of_key[k] for k in keys]})
    kept_id = pd.Series(ids, index=q.index)
    if f.mode == "drop":
        order = q.sort_values(["cluster", "score", "length", "question_id"], ascending=[True, False, False, True],
                              kind="stable")
        first = order.drop_duplicates("cluster").set_index("cluster")["question_id"]
        kept_id = q["cluster"].map(first)
    out["kept_id"] = kept_id.to_numpy("int64")
    dropped = out["kept_id"] != out["question_id"]
    leak = q["eval_question"].notna().to_numpy() & out["side"].isin(["train", "val"]).to_numpy()
    out["reason"] = np.where(dropped, "near_duplicate", np.where(leak, "eval_overlap", None))
    return out


@dataclass(frozen=True)
class Fractions:
    seed: int
    test: float
    val: float
    mode: str = "group"


def _questions(batch_rows: int) -> pd.DataFrame:
    """One row per question of the pairs (their first pair), with its dedup cluster and eval match."""
    parts = []
    for b in iter_parquet(SOURCE, batch_rows, columns=["question_id", "title", "question", "question_score"]):
        length = pc.add(pc.utf8_length(pc.fill_null(b.column("title"), "")),
                        pc.utf8_length(pc.fill_null(b.column("question"), "")))
        parts.append(pd.DataFrame({"question_id": b.column("question_id").to_numpy(zero_copy_only=False),
                                   "title": b.column("title").to_pylist(),
                                   "score": b.column("question_score").to_numpy(zero_copy_only=False),
                                   "length": length.to_numpy(zero_copy_only=False)}))
    cols = ["question_id", "title", "score", "length"]
    q = (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)).drop_duplicates("question_id")
    cl = pq.read_table(CLUSTERS, columns=["question_id", "cluster", "exact", "eval_question", "eval_similarity"])
    q = q.merge(cl.to_pandas(), on="question_id", how="left", sort=False)
    missing = q["cluster"].isna()
    if missing.any():
        raise StageError(f"split: question {int(q['question_id'][missing].iloc[0])} of {SOURCE} is not in {CLUSTERS} "
                         f"({int(missing.sum())} such): its dedup output is stale, rerun `dvc repro dedup`")
    return q.astype({"cluster": "int64", "exact": "int64"}).reset_index(drop=True)


def _drop_details(q: pd.DataFrame, p: pd.DataFrame, batch_rows: int) -> dict[int, str]:
    """Why each dropped question went: the kept question and their Jaccard (from the dedup edge
    between them, 1.0 for identical texts, else computed here from both texts)."""
    dropped = p[p["reason"] == "near_duplicate"][["question_id", "kept_id"]]
    if dropped.empty:
        return {}
    exact = dict(zip(q["question_id"].tolist(), q["exact"].tolist()))
    e = pq.read_table(EDGES, columns=["a", "b", "kind", "jaccard"]).to_pandas()
    direct = {(a, b): j for a, b, j in zip(e["a"].tolist(), e["b"].tolist(), e["jaccard"].tolist())}
    known: dict[tuple[int, int], float] = {}
    for d, k in zip(dropped["question_id"].tolist(), dropped["kept_id"].tolist()):
        a, b = min(d, k), max(d, k)
        if exact[d] == exact[k]:
            known[(a, b)] = 1.0
        elif (a, b) in direct and not np.isnan(direct[(a, b)]):
            known[(a, b)] = direct[(a, b)]
    todo = [(d, k) for d, k in zip(dropped["question_id"].tolist(), dropped["kept_id"].tolist())
            if (min(d, k), max(d, k)) not in known]
    if todo:
        known.update(_jaccards(todo, batch_rows))
    return {d: f"question {d}: near-duplicate of kept question {k} (jaccard {known[(min(d, k), max(d, k))]:.3f})"
            for d, k in zip(dropped["question_id"].tolist(), dropped["kept_id"].tolist())}


def _jaccards(todo: list[tuple[int, int]], batch_rows: int) -> dict[tuple[int, int], float]:
    """Exact word 5-gram Jaccard of question pairs linked only through other cluster members."""
    want = pa.array(sorted({x for pair in todo for x in pair}), pa.int64())
    texts: dict[int, np.ndarray] = {}
    for b in iter_parquet(SOURCE, batch_rows, columns=["question_id", "title", "question"]):
        b = b.filter(pc.is_in(b.column("question_id"), value_set=want))
        if b.num_rows:
            norm = minhash.normalize(minhash.question_texts(pa.table({"title": b.column("title"),
                                                                       "body": b.column("question")})))
            for i, sset in zip(b.column("question_id").to_pylist(), minhash.shingle_sets(norm)):
                texts.setdefault(i, sset)
    return {(min(d, k), max(d, k)): minhash.jaccard(texts[d], texts[k]) for d, k in todo}


def build(ctx: TableContext) -> Iterator[tuple[str, Result]]:
    f: Fractions = ctx.options
    q = _questions(ctx.runtime.batch_rows)
    p = plan(q, f)
    details = _drop_details(q, p, ctx.runtime.batch_rows)
    evals = dict(zip(q["question_id"].tolist(), zip(q["eval_question"].tolist(), q["eval_similarity"].tolist())))
    for qid in p["question_id"][p["reason"] == "eval_overlap"].tolist():
        text, sim = evals[qid]
        details[qid] = f"question {qid}: matches human-eval question {text!r} (similarity {sim:.2f})"
    side = pd.Series(np.where(p["reason"].isna(), p["side"], p["reason"]), index=p["question_id"].to_numpy())
    sinks = {name: ctx.sink(f"{name}.parquet", PAIR_SCHEMA) for name in SPLITS}
    for batch in iter_parquet(SOURCE, ctx.runtime.batch_rows):
        pairs = to_frame(batch)
        where = side.reindex(pairs["question_id"].to_numpy("int64")).to_numpy()
        for name in SPLITS:
            part = pairs[where == name].reset_index(drop=True)
            sinks[name].write(part)
            yield "pairs", Result(kept=part)
        out = pairs[~np.isin(where, SPLITS)]
        if len(out):
            yield "pairs", Result.rejected_only(rejects(
                "pairs", out["answer_id"].tolist(), where[~np.isin(where, SPLITS)].tolist(),
                [details[x] for x in out["question_id"].tolist()]))
    kept = p[p["reason"].isna()]
    ctx.extra["split_rows"] = {name: sinks[name].rows for name in SPLITS}
    ctx.extra["split_questions"] = {name: int((kept["side"] == name).sum()) for name in SPLITS}
    # Questions whose side differs from the one title grouping alone gives them: the price of
    # keeping clusters together (adding data can move a question when it joins a cluster).
    ctx.extra["moved_questions"] = int((p["side"] != p["title_side"]).sum())
    ctx.extra["questions_removed"] = {r: int((p["reason"] == r).sum()) for r in ("near_duplicate", "eval_overlap")}


def options(params: dict[str, Any]) -> Fractions:
    p = params["split"]
    for key in ("test_fraction", "val_fraction"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise StageError(f"params.yaml: split.{key} must be a number in [0, 1), got {v!r}")
    mode = params["dedup"]["mode"]
    if mode not in MODES:
        raise StageError(f"params.yaml: dedup.mode must be one of {', '.join(MODES)}, got {mode!r}")
    return Fractions(whole_number(p["seed"], "split.seed"), float(p["test_fraction"]), float(p["val_fraction"]), mode)


def checks(params: dict[str, Any]) -> list[Check]:
    sp = params["split"]
    t, v = float(sp["test_fraction"]), float(sp["val_fraction"])
    return [
        Check("question_sides", "keys", "ExpectColumnValuesToBeUnique", {"column": "question_id"},
              "question ids disjoint across train/val/test: one question's answers on two sides leak test data"),
        Check("split_questions", "keys", "ExpectColumnMeanToBeBetween",
              {"column": "is_test", "min_value": "$test_min", "max_value": "$test_max"},
              f"share of questions in test near split.test_fraction={t} (within "
              f"{SPLIT_TOLERANCE_SE:g} binomial standard errors, at least ±{SPLIT_MIN_TOLERANCE})"),
        Check("split_questions", "keys", "ExpectColumnMeanToBeBetween",
              {"column": "is_val", "min_value": "$val_min", "max_value": "$val_max"},
              f"share of questions in val near (1-{t})*{v} (val is a share of non-test), same tolerance"),
        Check("cluster_sides", "keys", "ExpectColumnValuesToBeUnique", {"column": "cluster"},
              "no dedup cluster straddles sides: a near-duplicate of a test question in train leaks test data"),
        Check("eval_leaks", "keys", "ExpectColumnValuesToBeInSet", {"column": "eval_question", "value_set": []},
              "no train or val question matches a human-eval question: the model would be graded on what it saw"),
    ]


def frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    keys = [to_frame(pq.read_table(out / f"{s}.parquet", columns=["question_id"])).assign(side=s) for s in SPLITS]
    distinct = pd.concat(keys, ignore_index=True).drop_duplicates(["question_id", "side"]).reset_index(drop=True)
    yield "question_sides", "keys", distinct
    per_q = distinct.drop_duplicates("question_id").reset_index(drop=True)
    yield "split_questions", "keys", pd.DataFrame({
        "question_id": per_q["question_id"],
        "is_test": (per_q["side"] == "test").astype(float),
        "is_val": (per_q["side"] == "val").astype(float)})
    cl = pq.read_table(CLUSTERS, columns=["question_id", "cluster", "eval_question"]).to_pandas()
    per_q = per_q.astype({"question_id": "int64"}).merge(cl, on="question_id", how="left")
    yield "cluster_sides", "keys", per_q[["cluster", "side"]].drop_duplicates().reset_index(drop=True)
    trained = per_q[per_q["side"].isin(["train", "val"]) & per_q["eval_question"].notna()]
    yield "eval_leaks", "keys", trained[["question_id", "eval_question"]].reset_index(drop=True)


def tolerances(params: dict[str, Any], frames: list[Frame]) -> dict[str, Any]:
    """The accepted range of each side's share: it depends on how many questions there are."""
    n = sum(len(df) for t, _, df in frames if t == "split_questions")
    sp = params["split"]
    t, v = float(sp["test_fraction"]), float(sp["val_fraction"])
    out = {}
    for name, p in (("test", t), ("val", (1 - t) * v)):
        tol = max(SPLIT_MIN_TOLERANCE, SPLIT_TOLERANCE_SE * (p * (1 - p) / max(n, 1)) ** 0.5)
        out[f"{name}_min"], out[f"{name}_max"] = max(0.0, p - tol), min(1.0, p + tol)
    return out


STAGE = TableStage(
    name="split", module="stages.curate.split", reads=(str(SOURCE.parent), str(CLUSTERS.parent)), writes="data/split",
    params=("split.seed", "split.test_fraction", "split.val_fraction", "dedup.mode"), options=options,
    audit=("dedup.mode",),
    counts_in=(("pairs", str(SOURCE)),),
    build=build,
    suite=Suite(checks=checks, frames=frames, values=tolerances,
                ids={"question_sides": ["question_id"], "split_questions": ["question_id"], "cluster_sides": ["cluster"],
                     "eval_leaks": ["question_id"]}),
)

if __name__ == "__main__":
    run(STAGE)
