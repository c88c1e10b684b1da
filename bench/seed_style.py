#!/usr/bin/env python3
"""Seed-style curation: the seed notebook's data preparation, re-created as a benchmark peer.

Only a baseline for bench/curation.py, which runs it on the same corpus in the same run so that
soqa's figures are compared with a peer measured on the same machine at the same time. It is not
part of the pipeline and deliberately not optimised: one process, whole tables in memory, the
seed's libraries and steps in the seed's order:

1. pandas `read_csv(..., encoding="latin-1")` of Questions.csv and Answers.csv (Kaggle schema);
2. `BeautifulSoup(body, "html.parser").get_text()` on every question and answer body;
3. the seed's "UTF check": drop every row whose title or body is not pure ASCII;
4. keep answers with Score >= 2;
5. merge with the questions and keep each question's top two answers by score;
6. a row-wise random 80/20 train/test split (`DataFrame.sample(frac=0.8, random_state=42)`;
   the seed used sklearn's train_test_split, which is not installed here);
7. train written as parquet in 20,000-row chunks, test as one parquet file.

The seed crashed on missing bodies and non-numeric scores; so that faulty corpora run at all,
missing texts read as "" and unreadable scores as NaN (dropped by the score filter).

    python bench/seed_style.py --corpus DIR --out DIR     # prints one JSON line: rows per step
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from bs4 import BeautifulSoup

MIN_SCORE = 2
TOP_K = 2
TEST_FRACTION = 0.2
SEED = 42
CHUNK = 20_000


def strip_html(body: str) -> str:
    return BeautifulSoup(body, "html.parser").get_text()


def is_ascii(text: str) -> bool:
    try:
        text.encode("ascii")
        return True
    except UnicodeEncodeError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="folder with Questions.csv and Answers.csv")
    ap.add_argument("--out", type=Path, required=True, help="folder for the train chunks and test file")
    args = ap.parse_args()
    steps: list[dict] = []
    t0 = time.perf_counter()

    def step(name: str, rows_in: int, rows_out: int) -> None:
        steps.append({"step": name, "rows_in": rows_in, "rows_out": rows_out,
                      "at_s": round(time.perf_counter() - t0, 2)})

    questions = pd.read_csv(args.corpus / "Questions.csv", encoding="latin-1")
    answers = pd.read_csv(args.corpus / "Answers.csv", encoding="latin-1")
    n_q, n_a = len(questions), len(answers)
    step("read_csv", n_q + n_a, n_q + n_a)

    for df in (questions, answers):
        df["Body"] = df["Body"].fillna("").astype(str).apply(strip_html)
    questions["Title"] = questions["Title"].fillna("").astype(str)
    step("strip_html", n_q + n_a, n_q + n_a)

    questions = questions[questions["Title"].apply(is_ascii) & questions["Body"].apply(is_ascii)]
    answers = answers[answers["Body"].apply(is_ascii)]
    step("utf_check", n_q + n_a, len(questions) + len(answers))

    n = len(answers)
    answers = answers.assign(Score=pd.to_numeric(answers["Score"], errors="coerce"))
    answers = answers[answers["Score"] >= MIN_SCORE]
    step("filter_upvotes", n, len(answers))

    pairs = questions.merge(answers, left_on="Id", right_on="ParentId", suffixes=("_q", "_a"))
    pairs = pairs.sort_values(["Id_q", "Score_a"], ascending=[True, False]).groupby("Id_q").head(TOP_K)
    pairs = pairs[["Id_q", "Title", "Body_q", "Id_a", "Score_a", "Body_a"]].rename(
        columns={"Id_q": "question_id", "Title": "title", "Body_q": "question", "Id_a": "answer_id",
                 "Score_a": "score", "Body_a": "answer"}).reset_index(drop=True)
    step("top_answers", len(questions) + len(answers), len(pairs))

    train = pairs.sample(frac=1 - TEST_FRACTION, random_state=SEED)
    test = pairs.drop(train.index)
    step("split", len(pairs), len(train) + len(test))

    args.out.mkdir(parents=True, exist_ok=True)
    chunks = 0
    for start in range(0, len(train), CHUNK):
        train.iloc[start:start + CHUNK].to_parquet(args.out / f"train_chunk_{chunks}.parquet", index=False)
        chunks += 1
    test.to_parquet(args.out / "test.parquet", index=False)
    step("shard", len(train) + len(test), len(train) + len(test))

    print(json.dumps({"questions_in": n_q, "answers_in": n_a, "rows_in": n_q + n_a, "pairs_out": len(pairs),
                      "train": len(train), "test": len(test), "train_chunks": chunks,
                      "seconds": round(time.perf_counter() - t0, 2), "steps": steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
