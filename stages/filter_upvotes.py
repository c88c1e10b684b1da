"""Stage 4, filter_upvotes: keep answers with Score >= filter.min_score; questions pass through."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.common import (BatchResult, DATA, Ledger, _tmp_sibling, parquet_rows, rejects, run_per_table,
                           stage_main)


def transform(df: pd.DataFrame | pa.Table | pa.RecordBatch, min_score: int) -> BatchResult:
    """Pure: answers -> those with score >= min_score; kept rows come back as the kind that went in."""
    if isinstance(df, (pa.Table, pa.RecordBatch)):
        # Arrow in, Arrow out: the stage never needs the bodies as Python strings.
        low = pc.less(df.column("score"), min_score)
        rej = df.filter(low)
        kept = df.filter(pc.invert(low))
        ids, scores = rej.column("id").to_pylist(), rej.column("score").to_pylist()
        kept = kept if isinstance(kept, pa.Table) else pa.Table.from_batches([kept])
    else:
        low = df["score"] < min_score
        kept = df[~low].reset_index(drop=True)
        ids, scores = df.loc[low, "id"].tolist(), df.loc[low, "score"].tolist()
    return BatchResult(kept=kept,
                       rejected=rejects("answers", ids, ["score_below_min"] * len(ids),
                                        [f"score {s} < {min_score}" for s in scores]))


def _transform_batch(args: tuple[str, Any, int]) -> tuple[int, BatchResult]:
    _, batch, min_score = args       # answers only: questions pass through as a file copy
    return batch.num_rows, transform(batch, min_score)


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        final = DATA / "filtered"
        tmp = _tmp_sibling(final)
        ledger.extra["min_score"] = int(params["filter"]["min_score"])
        # Questions pass through unchanged, so their file is copied as it is: decoding and re-encoding
        # the whole file gave the same bytes (one sink writes every stage's files).
        tmp.mkdir(parents=True)
        questions = DATA / "utf8" / "questions.parquet"
        shutil.copyfile(questions, tmp / "questions.parquet")
        n_questions = parquet_rows(questions)
        ledger.count_in("questions", n_questions)
        ledger.count_out("questions", n_questions)
        # A comparison per row: cheaper in this process than shipping batches to workers.
        run_per_table("filter_upvotes", DATA / "utf8", tmp, ledger, params, _transform_batch,
                      int(params["filter"]["min_score"]), tables=("answers",), workers=1)
        return {final: tmp}

    stage_main("filter_upvotes", body)


if __name__ == "__main__":
    main()
