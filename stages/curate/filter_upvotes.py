"""Stage 4, filter_upvotes: keep answers with Score >= filter.min_score; questions pass through."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.params import whole_number
from stages.core.runner import MapStage, run
from stages.core.schemas import rejects, to_frame


def transform(table: str, batch: pa.Table | pa.RecordBatch, min_score: int) -> Result:
    """Pure: answers -> those with score >= min_score (Arrow in, Arrow out: bodies never become
    Python strings)."""
    low = pc.less(batch.column("score"), min_score)
    rej = batch.filter(low)
    kept = batch.filter(pc.invert(low))
    ids, scores = rej.column("id").to_pylist(), rej.column("score").to_pylist()
    return Result(kept=kept, rejected=rejects(table, ids, ["score_below_min"] * len(ids),
                                              [f"score {s} < {min_score}" for s in scores]))


def options(params: dict[str, Any]) -> int:
    # Scores are int64: a bound outside them cannot be compared with one.
    return whole_number(params["filter"]["min_score"], "filter.min_score", -(2**63), 2**63 - 1)


def checks(params: dict[str, Any]) -> list[Check]:
    k = int(params["filter"]["min_score"])
    return [Check("answers", "keys", "ExpectColumnValuesToBeBetween", {"column": "score", "min_value": k},
                  f"every kept answer has score >= filter.min_score ({k}): the filter is the stage's promise")]


def frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    yield "answers", "keys", to_frame(pq.read_table(out / "answers.parquet", columns=["id", "score"]))


STAGE = MapStage(
    name="filter_upvotes", module="stages.curate.filter_upvotes", reads=("data/utf8",), writes="data/filtered",
    params=("filter.min_score",), options=options, audit=("filter.min_score",),
    tables=("answers",),
    passthrough=("questions",),    # copied as they are: decoding and re-encoding gave the same bytes
    in_process=True,               # a comparison per row: cheaper here than the trip to a worker
    transform=transform,
    suite=Suite(checks=checks, frames=frames, ids={"answers": ["id"]}),
)

if __name__ == "__main__":
    run(STAGE)
