"""Stage 6, split: train/val/test grouped by question, by a stable hash.

A question's answers always land on one side (the seed split rows, so one question's two
answers leaked into train and test). The side depends only on a hash of the question's
normalised title (questions asked twice under the same title share a side) and the seed:
adding data never moves an existing question. A whole-table stage (core.runner.TableStage): its
check reads every side at once.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq

from stages.core.errors import StageError
from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.params import whole_number
from stages.core.parquet import iter_parquet
from stages.core.runner import TableContext, TableStage, run
from stages.core.schemas import PAIR_SCHEMA, to_frame

SOURCE = Path("data/top2/pairs.parquet")
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
    u = unit_hash(group_key(question_id, title), seed)
    if u < test_fraction:
        return "test"
    # val is a share of what is not test, as in the seed (5% of train).
    if u < test_fraction + (1 - test_fraction) * val_fraction:
        return "val"
    return "train"


def sides(pairs: pd.DataFrame, seed: int, test_fraction: float, val_fraction: float) -> dict[str, pd.DataFrame]:
    """Pure: pair rows -> {split: rows}; every row goes to exactly one split."""
    sides = [assign(q, t, seed, test_fraction, val_fraction)
             for q, t in zip(pairs["question_id"].tolist(), pairs["title"].tolist())]
    s = pd.Series(sides, index=pairs.index)
    return {name: pairs[s == name].reset_index(drop=True) for name in SPLITS}


@dataclass(frozen=True)
class Fractions:
    seed: int
    test: float
    val: float


def build(ctx: TableContext) -> Iterator[tuple[str, Result]]:
    f: Fractions = ctx.options
    sinks = {name: ctx.sink(f"{name}.parquet", PAIR_SCHEMA) for name in SPLITS}
    questions: dict[str, set] = {name: set() for name in SPLITS}
    for batch in iter_parquet(SOURCE, ctx.runtime.batch_rows):
        for name, part in sides(to_frame(batch), f.seed, f.test, f.val).items():
            sinks[name].write(part)
            questions[name].update(part["question_id"].tolist())
            yield "pairs", Result(kept=part)
    ctx.extra["split_rows"] = {name: sinks[name].rows for name in SPLITS}
    ctx.extra["split_questions"] = {name: len(questions[name]) for name in SPLITS}


def options(params: dict[str, Any]) -> Fractions:
    p = params["split"]
    for key in ("test_fraction", "val_fraction"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise StageError(f"params.yaml: split.{key} must be a number in [0, 1), got {v!r}")
    return Fractions(whole_number(p["seed"], "split.seed"), float(p["test_fraction"]), float(p["val_fraction"]))


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
    name="split", module="stages.curate.split", reads=(str(SOURCE.parent),), writes="data/split",
    params=("split.seed", "split.test_fraction", "split.val_fraction"), options=options,
    counts_in=(("pairs", str(SOURCE)),),
    build=build,
    suite=Suite(checks=checks, frames=frames, values=tolerances,
                ids={"question_sides": ["question_id"], "split_questions": ["question_id"]}),
)

if __name__ == "__main__":
    run(STAGE)
