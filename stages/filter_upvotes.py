"""Stage 4, filter_upvotes: keep answers with Score >= filter.min_score; questions pass through."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from stages.common import (BatchResult, DATA, Ledger, _tmp_sibling, rejects, run_per_table, stage_main,
                           to_frame)


def transform(df: pd.DataFrame, min_score: int) -> BatchResult:
    low = df["score"] < min_score
    rej = df[low]
    return BatchResult(kept=df[~low].reset_index(drop=True),
                       rejected=rejects("answers", rej["id"].tolist(), ["score_below_min"] * len(rej),
                                        [f"score {s} < {min_score}" for s in rej["score"].tolist()]))


def _transform_batch(args: tuple[str, Any, int]) -> tuple[int, BatchResult]:
    table, batch, min_score = args
    df = to_frame(batch)
    if table == "questions":
        return len(df), BatchResult(kept=df)
    return len(df), transform(df, min_score)


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        final = DATA / "filtered"
        tmp = _tmp_sibling(final)
        ledger.extra["min_score"] = int(params["filter"]["min_score"])
        run_per_table("filter_upvotes", DATA / "utf8", tmp, ledger, params, _transform_batch,
                      int(params["filter"]["min_score"]))
        return {final: tmp}

    stage_main("filter_upvotes", body)


if __name__ == "__main__":
    main()
