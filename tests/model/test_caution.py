"""The one-line caution under a toy model's answers: who gets it, and what it says."""
from __future__ import annotations

import json
from pathlib import Path

from stages.model.caution import SUMMARY_FILE, caution, read_summary, training_summary

SAMPLE = training_summary({"init": "scratch", "preset": "tiny", "parameters": 426_368}, train_pairs=39, steps=15)


def test_the_sample_model_is_a_toy_and_the_line_says_what_and_how():
    line = caution(SAMPLE)
    assert line == ("caution: a toy model (426,368 parameters, trained from scratch (preset tiny) on 39 "
                    "question-answer pairs): its answers only show that the pipeline works; for real answers "
                    "train on the full dataset (README: Your own data), start from a pretrained checkpoint "
                    "(dvc exp run -S model.init=models/flan-t5-base) and use a GPU.")
    assert "\n" not in line


def test_a_big_model_on_many_pairs_is_no_toy_but_few_pairs_or_few_parameters_are():
    big = {"init": "models/flan-t5-base", "preset": None, "parameters": 247_577_856}
    assert caution(training_summary(big, train_pairs=250_000, steps=90_000)) is None
    few = caution(training_summary(big, train_pairs=39, steps=15))
    assert few and "fine-tuned from models/flan-t5-base on 39 question-answer pairs" in few
    small = {"init": "scratch", "preset": "tiny", "parameters": 426_368}
    assert caution(training_summary(small, train_pairs=250_000, steps=90_000))


def test_summary_from_the_model_folder_or_only_the_size(tmp_path: Path):
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(SAMPLE))
    assert read_summary(tmp_path) == SAMPLE
    other = read_summary(tmp_path / "elsewhere", parameters=60_506_624)
    assert other["train_pairs"] is None and caution(other) is None
    assert "(1,000 parameters, training unknown)" in caution(read_summary(tmp_path / "elsewhere", parameters=1000))
