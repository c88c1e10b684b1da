"""Stage 5, top_answers: the k best answers of each question, joined with it into pairs.

Ranking: score descending, ties broken by the older answer (lower id), so the choice is
deterministic. Answers whose question did not survive the earlier stages are rejected.
A whole-table stage (core.runner.TableStage): ranking needs every answer of a question at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.params import whole_number
from stages.core.parquet import iter_parquet
from stages.core.runner import TableContext, TableStage, run
from stages.core.schemas import ANSWER_SCHEMA, PAIR_SCHEMA, rejects, to_frame

SOURCE = Path("data/filtered")


def rank_answers(answers: pd.DataFrame, question_ids: set[int] | pd.Series, k: int) -> Result:
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
    return Result(kept=a[~over].reset_index(drop=True), rejected=rej)


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


def build(ctx: TableContext) -> Iterator[tuple[str, Result]]:
    """Rank on id, question and score only, then keep the bodies of the top k answers (as Arrow
    buffers, not Python strings) and stream the questions past them in batches."""
    k, batch_rows = ctx.options, ctx.runtime.batch_rows
    qids = pq.read_table(SOURCE / "questions.parquet", columns=["id"]).column("id").to_numpy()
    light = to_frame(pq.read_table(SOURCE / "answers.parquet", columns=["id", "parent_id", "score"]))
    ranked = rank_answers(light, set(qids.tolist()), k)
    del light
    yield "answers", Result.rejected_only(ranked.rejected)
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
         for b in iter_parquet(SOURCE / "answers.parquet", batch_rows, columns=["id", "score", "body"])],
        schema=pa.schema([ANSWER_SCHEMA.field(c) for c in ("id", "score", "body")])).combine_chunks()
    a_rows = pd.Index(chosen.column("id").to_numpy()).get_indexer(top_ids)
    sink = ctx.sink("pairs.parquet", PAIR_SCHEMA)
    lone_questions = []          # rejected after every pair is written, as the audit has always listed them
    start = offset = 0
    for batch in iter_parquet(SOURCE / "questions.parquet", batch_rows):
        n = batch.num_rows
        stop = int(np.searchsorted(q_pos, offset + n))
        q_rows = q_pos[start:stop] - offset
        pairs = pair_rows(batch, q_rows, chosen, a_rows[start:stop], ranks[start:stop])
        sink.write(pairs)
        answered = np.zeros(n, dtype=bool)
        answered[q_rows] = True
        yield "answers", Result(kept=pairs.select(["answer_id"]))
        yield "questions", Result(kept=batch.select(["id"]).filter(pa.array(answered)))
        lone = batch.column("id").filter(pa.array(~answered)).to_pylist()
        lone_questions.append(rejects("questions", lone, ["no_answer_kept"] * len(lone)))
        start, offset = stop, offset + n
    for r in lone_questions:
        yield "questions", Result.rejected_only(r)
    ctx.extra.update(pairs=sink.rows, k=k)


def options(params: dict[str, Any]) -> int:
    return whole_number(params["top_answers"]["k"], "top_answers.k", 1)


def checks(params: dict[str, Any]) -> list[Check]:
    k = int(params["top_answers"]["k"])
    return [
        Check("pairs", "keys", "ExpectColumnValuesToBeBetween",
              {"column": "answer_rank", "min_value": 1, "max_value": k},
              f"at most k={k} answers per question (with the uniqueness of question+rank below)"),
        Check("pairs", "keys", "ExpectCompoundColumnsToBeUnique", {"column_list": ["question_id", "answer_rank"]},
              "ranks are unique within a question, so ranks 1..k mean at most k answers"),
        Check("pairs", "keys", "ExpectCompoundColumnsToBeUnique", {"column_list": ["question_id", "answer_id"]},
              "no duplicate pairs: a duplicate would be trained on twice"),
        Check("pairs", "keys", "ExpectColumnValuesToBeUnique", {"column": "answer_id"},
              "an answer belongs to one question: one pair per answer"),
        Check("pairs", "keys", "ExpectColumnValuesToBeInSet",
              {"column": "question_in_input", "value_set": [True]},
              "every pair's question exists among the stage's input questions (data/filtered)"),
    ]


def frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    pairs = to_frame(pq.read_table(out / "pairs.parquet", columns=["question_id", "answer_id", "answer_rank"]))
    input_q = pq.read_table(SOURCE / "questions.parquet", columns=["id"]).column("id").to_pandas()
    yield "pairs", "keys", pairs.assign(question_in_input=pairs["question_id"].isin(input_q).astype(bool))


STAGE = TableStage(
    name="top_answers", module="stages.curate.top_answers", reads=(str(SOURCE),), writes="data/top2",
    params=("top_answers.k",), options=options,
    counts_in=(("questions", str(SOURCE / "questions.parquet")), ("answers", str(SOURCE / "answers.parquet"))),
    build=build,
    suite=Suite(checks=checks, frames=frames, ids={"pairs": ["answer_id"]}),
)

if __name__ == "__main__":
    run(STAGE)
