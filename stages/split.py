"""Stage 6, split: train/val/test grouped by question, by a stable hash.

A question's answers always land on one side (the seed split rows, so one question's two
answers leaked into train and test). The side depends only on a hash of the question's
normalised title (questions asked twice under the same title share a side) and the seed:
adding data never moves an existing question.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common import (DATA, Ledger, PAIR_SCHEMA, ParquetSink, StageError, _tmp_sibling, iter_parquet,
                           stage_main, to_frame)

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


def transform(pairs: pd.DataFrame, seed: int, test_fraction: float, val_fraction: float) -> dict[str, pd.DataFrame]:
    """Pure: pair rows -> {split: rows}; every row goes to exactly one split."""
    sides = [assign(q, t, seed, test_fraction, val_fraction)
             for q, t in zip(pairs["question_id"].tolist(), pairs["title"].tolist())]
    s = pd.Series(sides, index=pairs.index)
    return {name: pairs[s == name].reset_index(drop=True) for name in SPLITS}


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        p = params["split"]
        seed, test_f, val_f = int(p["seed"]), float(p["test_fraction"]), float(p["val_fraction"])
        if not (0 <= test_f < 1 and 0 <= val_f < 1):
            raise StageError(f"split: fractions must be in [0, 1): test_fraction={test_f}, val_fraction={val_f}")
        final = DATA / "split"
        tmp = _tmp_sibling(final)
        tmp.mkdir(parents=True)
        sinks = {name: ParquetSink(tmp / f"{name}.parquet", PAIR_SCHEMA, background=True)   # this stage never forks
                 for name in SPLITS}
        questions = {name: set() for name in SPLITS}
        try:
            for batch in iter_parquet(DATA / "top2" / "pairs.parquet", int(params["ingest"].get("batch_rows", 20000))):
                df = to_frame(batch)
                ledger.count_in("pairs", len(df))
                for name, part in transform(df, seed, test_f, val_f).items():
                    sinks[name].write(part)
                    ledger.count_out("pairs", len(part))
                    questions[name].update(part["question_id"].tolist())
        finally:
            for s in sinks.values():
                s.close()
        ledger.extra["split_rows"] = {name: sinks[name].rows for name in SPLITS}
        ledger.extra["split_questions"] = {name: len(questions[name]) for name in SPLITS}
        return {final: tmp}

    stage_main("split", body)


if __name__ == "__main__":
    main()
