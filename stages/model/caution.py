"""What a model was trained on, and the one-line caution printed wherever a toy model answers.

The train stage writes `training.json` into the model folder (its size and training pairs);
`soqa ask`, metrics/human_eval.md and the HTML report read it and, for a toy model, say so in
one line: what it was trained on and how to get real answers. A toy is a model under
TOY_PARAMETERS parameters or trained on fewer than TOY_PAIRS pairs: the embedded sample's
426k-parameter model trained on 39 pairs answers with word salad, and nothing else warned.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY_FILE = "training.json"
TOY_PARAMETERS = 20_000_000      # FLAN-T5-small has 77M; the CPU preset `tiny` 0.4M
TOY_PAIRS = 10_000               # the full Kaggle set gives hundreds of thousands of pairs
REAL_ANSWERS = ("for real answers train on the full dataset (README: Your own data), start from a pretrained "
                "checkpoint (dvc exp run -S model.init=models/flan-t5-base) and use a GPU")


def training_summary(model_desc: dict[str, Any], train_pairs: int, steps: int) -> dict[str, Any]:
    """The summary the train stage saves beside the weights (SUMMARY_FILE)."""
    return {"init": model_desc.get("init"), "preset": model_desc.get("preset"),
            "parameters": int(model_desc["parameters"]), "train_pairs": int(train_pairs), "steps": int(steps)}


def read_summary(model_dir: Path, parameters: int | None = None) -> dict[str, Any]:
    """The model folder's training summary; a folder the train stage did not write (a downloaded
    checkpoint) gives only its parameter count, with its training data unknown."""
    path = Path(model_dir) / SUMMARY_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"init": None, "preset": None, "parameters": parameters, "train_pairs": None, "steps": None}


def is_toy(summary: dict[str, Any]) -> bool:
    params, pairs = summary.get("parameters"), summary.get("train_pairs")
    return (params is not None and params < TOY_PARAMETERS) or (pairs is not None and pairs < TOY_PAIRS)


def trained_on(summary: dict[str, Any]) -> str:
    """'426,368 parameters, trained from scratch (preset tiny) on 39 question-answer pairs'."""
    params = f"{summary['parameters']:,} parameters" if summary.get("parameters") is not None else "size unknown"
    init = summary.get("init")
    start = ("trained from scratch" + (f" (preset {summary['preset']})" if summary.get("preset") else "")
             if init == "scratch" else f"fine-tuned from {init}" if init else "training unknown")
    pairs = summary.get("train_pairs")
    return f"{params}, {start}" + (f" on {pairs:,} question-answer pairs" if pairs is not None else "")


def caution(summary: dict[str, Any]) -> str | None:
    """One line for a toy model's answers; None for a model that is not one."""
    if not is_toy(summary):
        return None
    return f"caution: a toy model ({trained_on(summary)}): its answers only show that the pipeline works; " \
           f"{REAL_ANSWERS}."
