"""Stage 5, top_answers: the k best answers of each question, joined with it into pairs.

Ranking: score descending, ties broken by the older answer (lower id), so the choice is
deterministic. Answers whose question did not survive the earlier stages are rejected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.common import (ANSWER_SCHEMA, BatchResult, DATA, Ledger, PAIR_SCHEMA, ParquetSink, _tmp_sibling,
                           iter_parquet, rejects, stage_main, to_frame)


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


def pair_rows(questions: pa.Table | pa.RecordBatch, q_rows: np.ndarray, answers: pa.Table, a_rows: np.ndarray,
              ranks: np.ndarray) -> pa.Table:
    """Pure: pair i joins question row q_rows[i] with answer row a_rows[i] (rank ranks[i]), in Arrow."""
    q_take, a_take = pa.array(q_rows, pa.int64()), pa.array(a_rows, pa.int64())
    return pa.table({
        "question_id": questions.column("id").take(q_take),
        "answer_id": answers.column("id").take(a_take),
        "answer_rank": pa.array(ranks, pa.int32()),
        "title": questions.column("title").take(q_take),
        "question": questions.column("body").take(q_take),
        "answer": answers.column("body").take(a_take),
        "question_score": questions.column("score").take(q_take),
        "answer_score": answers.column("score").take(a_take),
    }, schema=PAIR_SCHEMA)


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        k = int(params["top_answers"]["k"])
        batch_rows = int(params["ingest"].get("batch_rows", 20000))
        src = DATA / "filtered"
        final = DATA / "top2"
        tmp = _tmp_sibling(final)
        tmp.mkdir(parents=True)
        # Ranking needs every answer of a question at once, but only its id, question and score:
        # rank on those columns, then keep the bodies of the top k answers only (as Arrow
        # buffers, not Python strings) and stream the questions past them in batches.
        qids = pq.read_table(src / "questions.parquet", columns=["id"]).column("id").to_numpy()
        light = to_frame(pq.read_table(src / "answers.parquet", columns=["id", "parent_id", "score"]))
        ledger.count_in("answers", len(light))
        ranked = rank_answers(light, set(qids.tolist()), k)
        del light
        ledger.reject(ranked.rejected)
        top = ranked.kept
        # Pair order: questions as they stand in their file, then by rank.
        q_pos = pd.Index(qids).get_indexer(top["parent_id"].to_numpy("int64"))
        order = np.lexsort((top["answer_rank"].to_numpy("int64"), q_pos))
        q_pos = q_pos[order]
        top_ids = top["id"].to_numpy("int64")[order]
        ranks = top["answer_rank"].to_numpy("int64")[order]
        del top, ranked
        wanted = pa.array(top_ids, pa.int64())
        # One chunk: take() on a column of many chunks concatenates them on every call (once per question batch).
        chosen = pa.Table.from_batches(
            [b.filter(pc.is_in(b.column("id"), value_set=wanted))
             for b in iter_parquet(src / "answers.parquet", batch_rows, columns=["id", "score", "body"])],
            schema=pa.schema([ANSWER_SCHEMA.field(c) for c in ("id", "score", "body")])).combine_chunks()
        a_rows = pd.Index(chosen.column("id").to_numpy()).get_indexer(top_ids)
        sink = ParquetSink(tmp / "pairs.parquet", PAIR_SCHEMA, background=True)    # this stage never forks
        questions_without_answer = []
        start = offset = 0
        try:
            for batch in iter_parquet(src / "questions.parquet", batch_rows):
                n = batch.num_rows
                ledger.count_in("questions", n)
                stop = int(np.searchsorted(q_pos, offset + n))
                q_rows = q_pos[start:stop] - offset
                pairs = pair_rows(batch, q_rows, chosen, a_rows[start:stop], ranks[start:stop])
                sink.write(pairs)
                ledger.count_out("answers", pairs.num_rows)
                answered = np.zeros(n, dtype=bool)
                answered[q_rows] = True
                ledger.count_out("questions", int(answered.sum()))
                lone = batch.column("id").filter(pa.array(~answered)).to_pylist()
                questions_without_answer.append(rejects("questions", lone, ["no_answer_kept"] * len(lone)))
                start, offset = stop, offset + n
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
