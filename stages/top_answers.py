"""Stage 5, top_answers: the k best answers of each question, joined with it into pairs.

Ranking: score descending, ties broken by the older answer (lower id), so the choice is
deterministic. Answers whose question did not survive the earlier stages are rejected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from stages.common import (BatchResult, DATA, Ledger, PAIR_SCHEMA, ParquetSink, _tmp_sibling, iter_parquet,
                           rejects, stage_main, to_frame)


def rank_answers(answers: pd.DataFrame, question_ids: set[int] | pd.Series, k: int) -> BatchResult:
    """Pure: answers (id, parent_id, score, ...) -> top-k per question with answer_rank, and rejects."""
    has_q = answers["parent_id"].isin(question_ids)
    orphans = answers[~has_q]
    a = answers[has_q].sort_values(["parent_id", "score", "id"], ascending=[True, False, True], kind="stable")
    a = a.assign(answer_rank=a.groupby("parent_id").cumcount() + 1)
    over = a["answer_rank"] > k
    below = a[over]
    rej = pd.concat([
        rejects("answers", orphans["id"].tolist(), ["question_not_kept"] * len(orphans),
                [f"question {p} was rejected by an earlier stage" for p in orphans["parent_id"].tolist()]),
        rejects("answers", below["id"].tolist(), ["not_top_k"] * len(below),
                [f"rank {r} > k={k}" for r in below["answer_rank"].tolist()]),
    ], ignore_index=True)
    return BatchResult(kept=a[~over].reset_index(drop=True), rejected=rej)


def join_pairs(questions: pd.DataFrame, top: pd.DataFrame) -> pd.DataFrame:
    """Pure: questions x their ranked answers -> pair rows in question order, then rank."""
    q = questions.rename(columns={"id": "question_id", "body": "question", "score": "question_score"})
    a = top.rename(columns={"id": "answer_id", "parent_id": "question_id", "body": "answer", "score": "answer_score"})
    pairs = q[["question_id", "title", "question", "question_score"]].merge(
        a[["question_id", "answer_id", "answer_rank", "answer", "answer_score"]], on="question_id", how="inner",
        sort=False)
    return pairs[PAIR_SCHEMA.names]


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        k = int(params["top_answers"]["k"])
        batch_rows = int(params["ingest"].get("batch_rows", 20000))
        src = DATA / "filtered"
        final = DATA / "top2"
        tmp = _tmp_sibling(final)
        tmp.mkdir(parents=True)
        # Ranking needs every answer of a question at once. Only the answers are held (their
        # bodies are the larger half after filtering); questions stream past them in batches.
        qids = pq.read_table(src / "questions.parquet", columns=["id"]).column("id").to_pandas()
        answers = to_frame(pq.read_table(src / "answers.parquet"))
        ledger.count_in("answers", len(answers))
        ranked = rank_answers(answers, set(qids.tolist()), k)
        del answers
        ledger.reject(ranked.rejected)
        top = ranked.kept.set_index("parent_id", drop=False).sort_index(kind="stable")
        sink = ParquetSink(tmp / "pairs.parquet", PAIR_SCHEMA)
        questions_without_answer = []
        try:
            for batch in iter_parquet(src / "questions.parquet", batch_rows):
                q = to_frame(batch)
                ledger.count_in("questions", len(q))
                mine = top.loc[top.index.intersection(q["id"])].reset_index(drop=True)
                pairs = join_pairs(q, mine)
                sink.write(pairs)
                ledger.count_out("answers", len(pairs))
                answered = q["id"].isin(mine["parent_id"])
                ledger.count_out("questions", int(answered.sum()))
                lone = q[~answered]
                questions_without_answer.append(
                    rejects("questions", lone["id"].tolist(), ["no_answer_kept"] * len(lone)))
        finally:
            sink.close()
        for r in questions_without_answer:
            ledger.reject(r)
        ledger.extra["pairs"] = sink.rows
        ledger.extra["k"] = k
        return {final: tmp}

    stage_main("top_answers", body)


if __name__ == "__main__":
    main()
