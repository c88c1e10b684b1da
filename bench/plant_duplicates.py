#!/usr/bin/env python3
"""Plant near-duplicate questions into a copy of a Kaggle-schema corpus (bench/make_corpus.py's
output), to check that the dedup stage finds every one and that split keeps each pair on one side.

Each planted copy takes a new id: its title reworded ("How do I" -> "How can I", "How to" -> "What
is the way to", else "In Python: " before it), one sentence added to the end of its body, and all
of its answers copied under new ids. OUT/planted.json lists the (original, copy) question ids.

    python bench/plant_duplicates.py --corpus /work/base/c150 --out /tmp/planted --count 500
    python bench/plant_duplicates.py --check /tmp/planted/planted.json --project .   # after dvc repro split
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

ADDED = "<p>I have searched for a while and tried a few things, but nothing I found works for me.</p>"
csv.field_size_limit(sys.maxsize)


def reword(title: str) -> str:
    for pattern, repl in ((r"^How do I\b", "How can I"), (r"^How to\b", "What is the way to")):
        new, n = re.subn(pattern, repl, title, count=1, flags=re.IGNORECASE)
        if n:
            return new
    return f"In Python: {title}"


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        r = csv.reader(f)
        header = next(r)
        return header, list(r)


def plant(corpus: Path, out: Path, count: int, seed: int) -> list[tuple[int, int]]:
    qh, questions = _rows(corpus / "Questions.csv")
    ah, answers = _rows(corpus / "Answers.csv")
    qi, ai = {c: i for i, c in enumerate(qh)}, {c: i for i, c in enumerate(ah)}
    by_parent: dict[str, list[list[str]]] = {}
    for a in answers:
        by_parent.setdefault(a[ai["ParentId"]], []).append(a)
    answered = [q for q in questions if q[qi["Id"]] in by_parent and q[qi["Id"]].isdigit()]
    rng = np.random.default_rng(seed)
    chosen = [answered[i] for i in sorted(rng.choice(len(answered), size=min(count, len(answered)), replace=False))]
    next_q = max(int(q[qi["Id"]]) for q in questions if q[qi["Id"]].isdigit()) + 1
    next_a = max(int(a[ai["Id"]]) for a in answers if a[ai["Id"]].isdigit()) + 1
    planted = []
    for q in chosen:
        copy = list(q)
        copy[qi["Id"]], copy[qi["Title"]] = str(next_q), reword(q[qi["Title"]])
        copy[qi["Body"]] = q[qi["Body"]] + "\n" + ADDED
        questions.append(copy)
        for a in by_parent[q[qi["Id"]]]:
            ac = list(a)
            ac[ai["Id"]], ac[ai["ParentId"]] = str(next_a), str(next_q)
            answers.append(ac)
            next_a += 1
        planted.append((int(q[qi["Id"]]), next_q))
        next_q += 1
    out.mkdir(parents=True, exist_ok=True)
    for name, header, rows in (("Questions.csv", qh, questions), ("Answers.csv", ah, answers)):
        with open(out / name, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
    (out / "planted.json").write_text(json.dumps({"seed": seed, "pairs": planted}) + "\n")
    return planted


def check(planted_json: Path, project: Path) -> dict:
    """Every planted pair whose both questions reached split: same dedup cluster, same side."""
    import pandas as pd
    import pyarrow.parquet as pq

    pairs = json.loads(planted_json.read_text())["pairs"]
    cl = pq.read_table(project / "data/dedup/clusters.parquet", columns=["question_id", "cluster"]).to_pandas()
    cluster = dict(zip(cl["question_id"], cl["cluster"]))
    edges = pq.read_table(project / "data/dedup/edges.parquet").to_pandas()
    near = set(map(tuple, edges[edges["kind"] == "near_duplicate"][["a", "b"]].to_numpy().tolist()))
    side = {}
    for s in ("train", "val", "test"):
        for q in pq.read_table(project / f"data/split/{s}.parquet", columns=["question_id"]).column(0).to_pylist():
            side[q] = s
    both = [(a, b) for a, b in pairs if a in cluster and b in cluster]
    same_cluster = sum(cluster[a] == cluster[b] for a, b in both)
    as_near = sum((min(a, b), max(a, b)) in near for a, b in both)
    in_split = [(a, b) for a, b in pairs if a in side and b in side]
    straddle = sum(side[a] != side[b] for a, b in in_split)
    return {"planted": len(pairs), "both_validated": len(both), "same_cluster": same_cluster,
            "near_duplicate_edge": as_near, "both_in_split": len(in_split), "straddling": straddle,
            "sides": pd.Series([side[a] for a, _ in in_split]).value_counts().to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--check", type=Path, help="planted.json to check against --project's dedup and split outputs")
    ap.add_argument("--project", type=Path, default=Path("."))
    args = ap.parse_args()
    if args.check:
        print(json.dumps(check(args.check, args.project), indent=2))
        return
    planted = plant(args.corpus, args.out, args.count, args.seed)
    print(f"planted {len(planted)} near-duplicates into {args.out}")


if __name__ == "__main__":
    main()
