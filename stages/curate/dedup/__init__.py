"""Stage dedup: near-duplicate questions, exact duplicate answers and moderators' duplicate links
gathered into clusters, so split can keep each cluster on one side (and drop mode keep one of it).

Reads the validated questions (data/utf8, beside filter_upvotes: a filter.min_score change does not
rerun it). Every question gets a row in clusters.parquet (its cluster id = the smallest question id
of its cluster; a question with no duplicate is its own cluster). edges.parquet holds the evidence:

- exact_text: identical title + body (a = the group's smallest id, b = each other member).
- near_duplicate: word 5-gram Jaccard of normalised title + body >= dedup.threshold, found by
  MinHash LSH (minhash.py) over one text per exact group, each candidate confirmed exactly.
- same_answer: one answer pasted under several questions (answer text equal once case is folded and
  the ends trimmed, at least dedup.answer_min_chars long: short answers like "Use sorted()" would
  link unrelated questions).
- dup_link: LinkTypeId 3 rows of a PostLinks.xml beside a Posts.xml source (links.py).

Clusters: union-find with a cap (clusters.py). Human-eval overlap (evalmatch.py): the matching eval
question of each question, for split to take out of train and val. Work on row groups runs through
the runtime executor (both cores); everything is ordered by ids, so outputs do not depend on the
worker count or batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.errors import StageError
from stages.core.executors import make_executor
from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.parquet import RowGroup, row_groups
from stages.core.runner import TableContext, TableStage
from stages.core.params import whole_number
from stages.curate.dedup import minhash
from stages.curate.dedup.clusters import KINDS, cluster, join_order
from stages.curate.dedup.evalmatch import EvalQuestion, best_matches, load_eval_questions
from stages.curate.dedup.links import duplicate_links, links_path

SOURCE = Path("data/utf8")
EVAL_QUESTIONS = Path("data/human_eval/questions.txt")
OUT = Path("data/dedup")
# Two SipHash keys: exact-text groups are keyed by 128 bits (a 64-bit collision among 600k texts
# has odds of about 1e-8; at 128 bits none is expected in any corpus).
_KEYS = ("0123456789123456", "soqa-dedup-key-2")

CLUSTER_SCHEMA = pa.schema([
    ("question_id", pa.int64()),
    ("cluster", pa.int64()),          # the smallest question id of its cluster
    ("exact", pa.int64()),            # the smallest question id with the same title + body
    ("eval_question", pa.string()),   # the human-eval question it matches, null for none
    ("eval_similarity", pa.float64()),
])
EDGE_SCHEMA = pa.schema([
    ("a", pa.int64()),
    ("b", pa.int64()),
    ("kind", pa.string()),            # exact_text | near_duplicate | dup_link | same_answer
    ("jaccard", pa.float64()),        # word 5-gram Jaccard of the two questions' title + body
    ("joined", pa.bool_()),           # false: refused, it would have made a cluster over dedup.max_cluster
])


@dataclass(frozen=True)
class Options:
    threshold: float
    bands: int
    rows: int
    max_cluster: int
    answer_min_chars: int
    eval_threshold: float
    evals: tuple[EvalQuestion, ...]
    links: str | None                 # PostLinks file beside the source, if any


# ----------------------------------------------------------------------------- jobs (run in workers)
def _text_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    values = texts.to_numpy(zero_copy_only=False).astype(object)
    return tuple(pd.util.hash_array(values, hash_key=k, categorize=False) for k in _KEYS)


def scan_job(job: tuple[RowGroup, Options]) -> dict[str, np.ndarray]:
    """A row group of questions: ids, the hash of title + body, the best human-eval match."""
    unit, o = job
    b = unit.read(["id", "title", "body"])
    h1, h2 = _text_hashes(minhash.question_texts(b))
    best, score = best_matches(b.column("title"), b.column("body"), list(o.evals), o.eval_threshold)
    return {"id": b.column("id").to_numpy(), "h1": h1, "h2": h2, "eval": best, "eval_score": score}


def sign_job(job: tuple[RowGroup, np.ndarray, int]) -> np.ndarray:
    """MinHash signatures of the chosen rows of a row group."""
    unit, rows, n_perm = job
    texts = minhash.question_texts(unit.read(["title", "body"])).take(pa.array(rows, pa.int64()))
    return minhash.signatures(*minhash.shingle_hashes(minhash.normalize(texts)), n_perm)


def sets_job(job: tuple[RowGroup, np.ndarray]) -> list[np.ndarray]:
    unit, rows = job
    texts = minhash.question_texts(unit.read(["title", "body"])).take(pa.array(rows, pa.int64()))
    return minhash.shingle_sets(minhash.normalize(texts))


def answer_job(job: tuple[RowGroup, int]) -> dict[str, np.ndarray]:
    """Answers of a row group at least min_chars long once normalised (case folded, leading and
    trailing whitespace trimmed: a pasted answer keeps the rest; folding inner whitespace too cost
    12 of the stage's CPU seconds on 1.4M answers): parent id, text hash."""
    unit, min_chars = job
    b = unit.read(["parent_id", "body"])
    norm = pc.utf8_trim_whitespace(pc.utf8_lower(pc.fill_null(b.column("body"), "")))
    long_ = pc.greater_equal(pc.utf8_length(norm), min_chars)
    h1, h2 = _text_hashes(norm.filter(long_))
    return {"parent": b.column("parent_id").filter(long_).to_numpy(zero_copy_only=False), "h1": h1, "h2": h2}


# ----------------------------------------------------------------------------- the whole-table work
def _by_group(positions: np.ndarray, units: list[RowGroup]) -> list[tuple[int, np.ndarray]]:
    """Sorted global row positions -> (row group index, positions within it) for groups holding any."""
    starts = np.cumsum([0] + [u.rows for u in units])
    g = np.searchsorted(starts, positions, side="right") - 1
    return [(int(k), positions[g == k] - starts[k]) for k in np.unique(g)]


def _exact_groups(ids: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Per row: the smallest id with the same text hash."""
    order = np.lexsort((ids, h2, h1))
    new = np.ones(len(ids), bool)
    new[1:] = (h1[order][1:] != h1[order][:-1]) | (h2[order][1:] != h2[order][:-1])
    first = order[np.flatnonzero(new)]
    group = np.cumsum(new) - 1
    rep = np.empty(len(ids), np.int64)
    rep[order] = ids[first][group]
    return rep


def _same_answer_pairs(answers: list[dict[str, np.ndarray]], known: np.ndarray) -> np.ndarray:
    """Question pairs (smallest question id of a shared answer text, another question under it)."""
    parent = np.concatenate([a["parent"] for a in answers]).astype(np.int64)
    h1 = np.concatenate([a["h1"] for a in answers])
    h2 = np.concatenate([a["h2"] for a in answers])
    keep = np.isin(parent, known)
    df = pd.DataFrame({"q": parent[keep], "h1": h1[keep], "h2": h2[keep]}).drop_duplicates()
    first = df.groupby(["h1", "h2"])["q"].transform("min")
    pairs = df.assign(first=first)[df["q"] != first][["first", "q"]].drop_duplicates()
    return np.sort(pairs.to_numpy(np.int64), axis=1) if len(pairs) else np.zeros((0, 2), np.int64)


def _between_texts(ids: np.ndarray, exact: np.ndarray, kinds: list[tuple[str, np.ndarray]]
                   ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The pairs of each kind whose questions differ in text (pairs of identical texts are joined
    already), their kinds, and each end's exact-text representative."""
    rep_of = pd.Series(exact, index=ids)
    pairs, names, reps = [np.zeros((0, 2), np.int64)], [], [np.zeros((0, 2), np.int64)]
    for kind, p in kinds:
        r = rep_of.reindex(p.ravel()).to_numpy(np.int64).reshape(-1, 2)
        differ = r[:, 0] != r[:, 1]
        pairs.append(p[differ])
        reps.append(r[differ])
        names += [kind] * int(differ.sum())
    return np.concatenate(pairs), names, np.concatenate(reps)


def _link_pairs(path: str | None, known: np.ndarray) -> tuple[np.ndarray, int]:
    if path is None:
        return np.zeros((0, 2), np.int64), 0
    links = duplicate_links(Path(path))
    keep = np.isin(links[:, 0], known) & np.isin(links[:, 1], known) & (links[:, 0] != links[:, 1])
    return np.unique(np.sort(links[keep], axis=1), axis=0), len(links)


def build(ctx: TableContext) -> Iterator[tuple[str, Result]]:
    o: Options = ctx.options
    units = row_groups(SOURCE / "questions.parquet")
    answer_units = row_groups(SOURCE / "answers.parquet")
    n_perm = o.bands * o.rows
    # The pool forks before any sink thread exists (core.executors); closed before the sinks write.
    executor = make_executor(ctx.runtime.workers)
    try:
        scans = list(executor.map(scan_job, [(u, o) for u in units]))
        ids = np.concatenate([s["id"] for s in scans]) if scans else np.zeros(0, np.int64)
        exact = _exact_groups(ids, *(np.concatenate([s[k] for s in scans]) if scans else np.zeros(0, np.uint64)
                                     for k in ("h1", "h2")))
        rep_pos = np.flatnonzero(ids == exact)                    # one text per exact group, file order
        groups = _by_group(rep_pos, units)
        signed = list(executor.map(sign_job, [(units[g], rows, n_perm) for g, rows in groups]))
        sig = np.concatenate(signed) if signed else np.zeros((0, n_perm), np.uint32)
        cand = minhash.candidates(sig, o.bands, o.rows)             # positions within rep_pos
        cand_ids = ids[rep_pos][cand]
        same = _same_answer_pairs(list(executor.map(answer_job, [(u, o.answer_min_chars) for u in answer_units])),
                                  ids)
        links, links_read = _link_pairs(o.links, ids)
        other, other_kind, other_reps = _between_texts(ids, exact, [("same_answer", same), ("dup_link", links)])
        # Exact Jaccard on the exact-group representatives of every pair that needs one.
        need_ids = np.unique(np.concatenate([cand_ids.ravel(), other_reps.ravel()]))
        pos_of = pd.Series(np.arange(len(ids)), index=ids)
        need_pos = np.sort(pos_of.reindex(need_ids).to_numpy(np.int64))
        sets: dict[int, np.ndarray] = {}
        starts = np.cumsum([0] + [u.rows for u in units])
        groups = _by_group(need_pos, units)
        for (g, rows), got in zip(groups, executor.map(sets_job, [(units[g], rows) for g, rows in groups])):
            for r, s in zip((rows + starts[g]).tolist(), got):
                sets[int(ids[r])] = s
    finally:
        executor.close()

    def jac(a: int, b: int) -> float:
        return 1.0 if a == b else minhash.jaccard(sets[a], sets[b])

    cand_j = np.array([jac(a, b) for a, b in cand_ids.tolist()], np.float64)
    near = cand_ids[cand_j >= o.threshold]
    near_j = cand_j[cand_j >= o.threshold]
    other_j = np.array([jac(a, b) for a, b in other_reps.tolist()], np.float64)
    members = np.flatnonzero(ids != exact)
    edges = pd.DataFrame({
        "a": np.concatenate([exact[members], near[:, 0], other[:, 0]]).astype(np.int64),
        "b": np.concatenate([ids[members], near[:, 1], other[:, 1]]).astype(np.int64),
        "kind": ["exact_text"] * len(members) + ["near_duplicate"] * len(near)
                + other_kind,
        "jaccard": np.concatenate([np.ones(len(members)), near_j, other_j]),
    })
    ctx.extra.update(_cluster(ctx, o, ids, exact, edges, scans, len(cand), links_read))
    yield "questions", Result(kept=pa.table({"id": ids}))


def _cluster(ctx: TableContext, o: Options, ids: np.ndarray, exact: np.ndarray, edges: pd.DataFrame,
             scans: list[dict[str, np.ndarray]], candidates: int, links_read: int) -> dict[str, Any]:
    """Union-find over exact groups, write clusters.parquet and edges.parquet; the audit facts."""
    node_ids, weights = np.unique(exact, return_counts=True)
    text_edges = edges["kind"] != "exact_text"
    e = edges[text_edges]
    rep = pd.Series(exact, index=ids)
    ra = np.searchsorted(node_ids, rep.reindex(e["a"]).to_numpy(np.int64))
    rb = np.searchsorted(node_ids, rep.reindex(e["b"]).to_numpy(np.int64))
    order = join_order(e["kind"].to_numpy(), e["jaccard"].to_numpy(), e["a"].to_numpy(), e["b"].to_numpy())
    c = cluster(node_ids, weights, ra, rb, order, o.max_cluster)
    joined = np.ones(len(edges), bool)
    joined[np.flatnonzero(text_edges.to_numpy())] = c.joined
    edges = edges.assign(joined=joined)
    edges["rank"] = edges["kind"].map({k: i for i, k in enumerate(KINDS)})
    edges = edges.sort_values(["rank", "a", "b"], kind="stable").drop(columns="rank").reset_index(drop=True)
    q_cluster = c.cluster[np.searchsorted(node_ids, exact)] if len(ids) else exact
    ev = np.concatenate([s["eval"] for s in scans]) if scans else np.zeros(0, np.int32)
    ev_score = np.concatenate([s["eval_score"] for s in scans]) if scans else np.zeros(0)
    texts = [q.text for q in o.evals]
    ctx.sink("clusters.parquet", CLUSTER_SCHEMA).write(pa.table({
        "question_id": ids, "cluster": q_cluster, "exact": exact,
        "eval_question": pa.array([texts[i] if i >= 0 else None for i in ev.tolist()], pa.string()),
        "eval_similarity": pa.array(np.round(ev_score, 4), pa.float64(), mask=ev < 0),
    }, schema=CLUSTER_SCHEMA))
    ctx.sink("edges.parquet", EDGE_SCHEMA).write(pa.Table.from_pandas(edges, schema=EDGE_SCHEMA,
                                                                      preserve_index=False))
    sizes = pd.Series(q_cluster).value_counts()
    multi = sizes[sizes > 1]
    return {
        "shingle_words": minhash.SHINGLE, "permutations": o.bands * o.rows, "bands": o.bands, "rows": o.rows,
        "candidate_pairs": int(candidates),
        "pairs": {k: int((edges["kind"] == k).sum()) for k in KINDS},
        "edges_refused": int((~edges["joined"]).sum()),
        "clusters": int(len(multi)),
        "questions_in_clusters": int(multi.sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "capped_clusters": len(c.capped),
        "capped_cluster_ids": c.capped[:20],
        "eval_matches": int((ev >= 0).sum()),
        "post_links_read": links_read,
    }


def options(params: dict[str, Any]) -> Options:
    p = params["dedup"]
    threshold = _fraction(p["threshold"], "dedup.threshold")
    eval_threshold = _fraction(p["eval_threshold"], "dedup.eval_threshold")
    bands = whole_number(p["bands"], "dedup.bands", 1)
    rows = whole_number(p["rows"], "dedup.rows", 1)
    if bands * rows > 1024:
        raise StageError(f"params.yaml: dedup.bands x dedup.rows must be at most 1024 permutations, got {bands * rows}")
    links = links_path(params["ingest"]["source"])
    return Options(threshold, bands, rows, whole_number(p["max_cluster"], "dedup.max_cluster", 2),
                   whole_number(p["answer_min_chars"], "dedup.answer_min_chars", 1), eval_threshold,
                   tuple(load_eval_questions(EVAL_QUESTIONS)), str(links) if links else None)


def _fraction(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 or math.isnan(v):
        raise StageError(f"params.yaml: {key} must be a number in (0, 1], got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- the quality suite
def checks(params: dict[str, Any]) -> list[Check]:
    p = params["dedup"]
    return [
        Check("clusters", "keys", "ExpectColumnValuesToBeUnique", {"column": "question_id"},
              "one cluster per question: split looks each question up once"),
        Check("clusters", "keys", "ExpectColumnPairValuesAToBeGreaterThanB",
              {"column_A": "question_id", "column_B": "cluster", "or_equal": True},
              "a cluster is named by its smallest question id (deterministic representative)"),
        Check("cluster_sizes", "keys", "ExpectColumnValuesToBeInSet", {"column": "over_cap", "value_set": [False]},
              f"no cluster over dedup.max_cluster={p['max_cluster']} questions, unless it is one group of "
              "identical texts (never cut: its copies would leak)"),
        Check("near_edges", "keys", "ExpectColumnValuesToBeBetween",
              {"column": "jaccard", "min_value": float(p["threshold"]), "max_value": 1.0},
              f"every near_duplicate edge confirmed by exact Jaccard >= dedup.threshold={p['threshold']}"),
    ]


def frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    cl = pq.read_table(out / "clusters.parquet", columns=["question_id", "cluster", "exact"]).to_pandas()
    yield "clusters", "keys", cl[["question_id", "cluster"]]
    size = cl.groupby("cluster").size()
    largest_exact = cl.groupby(["cluster", "exact"]).size().groupby(level=0).max()
    cap = int(params["dedup"]["max_cluster"])
    yield "cluster_sizes", "keys", pd.DataFrame({
        "cluster": size.index, "over_cap": ((size > cap) & (size != largest_exact)).to_numpy()})
    e = pq.read_table(out / "edges.parquet").to_pandas()
    yield "near_edges", "keys", e[e["kind"] == "near_duplicate"][["a", "b", "jaccard"]].reset_index(drop=True)


PARAMS = ("dedup.threshold", "dedup.bands", "dedup.rows", "dedup.max_cluster", "dedup.answer_min_chars",
          "dedup.eval_threshold", "ingest.source")

STAGE = TableStage(
    name="dedup", module="stages.curate.dedup", reads=(str(SOURCE), str(EVAL_QUESTIONS), "${ingest.source}"),
    writes=str(OUT), params=PARAMS, options=options,
    audit=("dedup.threshold", "dedup.max_cluster"),
    counts_in=(("questions", str(SOURCE / "questions.parquet")),),
    build=build,
    suite=Suite(checks=checks, frames=frames,
                ids={"clusters": ["question_id"], "cluster_sizes": ["cluster"], "near_edges": ["a", "b"]}),
)
