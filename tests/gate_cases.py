"""Helpers for the quality-suite tests of every stage (tests/curate/test_<stage>.py, tests/core/test_gate.py):
small frames as the suites read them, and the one assertion every suite case makes."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.core import gate
from stages.core.params import load_params
from stages.core.runner import Stage

REPO = Path(__file__).resolve().parents[1]


def suite_params() -> dict:
    """params.yaml with small, fixed values for the knobs the suites read."""
    p = load_params(REPO / "params.yaml")
    p["filter"]["min_score"] = 2
    p["top_answers"]["k"] = 2
    p["split"].update(test_fraction=0.2, val_fraction=0.05)
    p["shard"]["size"] = 3
    return p


def ids(values: list) -> pd.Series:
    return pd.Series(values, dtype="Int64")


def questions(bodies: list[str], titles: list[str] | None = None) -> pd.DataFrame:
    n = len(bodies)
    # object columns: pandas' Arrow strings would refuse a lone surrogate before the suite sees it
    return pd.DataFrame({"id": ids(list(range(1, n + 1))), "title": titles or [f"title {i}" for i in range(n)],
                         "body": pd.Series(bodies, dtype=object)})


def answers(bodies: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids(list(range(101, 101 + len(bodies)))), "body": pd.Series(bodies, dtype=object)})


def pairs(qids: list[int], aids: list[int], ranks: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"question_id": ids(qids), "answer_id": ids(aids), "answer_rank": ids(ranks)})


def failed(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["results"] if not r["success"]}


def case_ids(cases: list[tuple]) -> list[str]:
    """pytest ids for (stage, clean, bad, check, ...) cases."""
    return [f"{c[0]}-{c[3].split(':')[0]}-{i}" for i, c in enumerate(cases)]


def assert_suite_passes_clean_and_fails_violating(stage: Stage, params: dict, clean: list, bad: list, check: str,
                                                  n_failed: int, example_ids: list) -> None:
    """The stage's suite passes `clean` frames, and fails `bad` ones on `check` with the given
    failed-row count and example ids, in one message that names the stage, the check and where to look."""
    suite = stage.suite
    ok = gate.run_frames(stage.name, suite, params, clean)
    assert ok["success"], failed(ok)
    assert ok["evaluated"] == len(suite.checks(params)) == ok["successful"]

    report = gate.run_frames(stage.name, suite, params, bad)
    assert not report["success"]
    bad_checks = failed(report)
    assert check in bad_checks, sorted(bad_checks)
    assert bad_checks[check]["unexpected_count"] == n_failed
    assert bad_checks[check]["examples"][:len(example_ids)] == example_ids
    assert report["unsuccessful"] == len(bad_checks) >= 1

    msg = gate.failure_message(report, suite.ids, Path("gx/uncommitted/failures") / f"{stage.name}.html")
    assert f"stage {stage.name}" in msg and "Outputs not written" in msg
    assert f"gx/uncommitted/failures/{stage.name}.html" in msg
    first = next(r for r in report["results"] if not r["success"])
    assert first["expectation"] in msg and first["why"] in msg
    if first["unexpected_count"]:
        assert f"{first['unexpected_count']} of {first['element_count']} rows failed" in msg
        assert "e.g. " + "/".join(suite.ids[first["table"]]) in msg
        assert str(first["examples"][0]) in msg


# What makes pandas run a str.contains pattern through Python's re row by row, not Arrow's RE2
# (pandas.core.arrays._arrow_string_mixins): \s \S \w \W \d \D \b \B, lookaround, \u escapes.
_PYTHON_ONLY_REGEX = re.compile(r"\\[sSwWdDbBuUN]|\(\?<?[=!]")


def assert_regexes_stay_on_arrow(patterns: list[str]) -> None:
    """Text suites read every body of the corpus: each regex must be one RE2 runs (see above), and
    mean the same to both engines on text that exercises them."""
    assert patterns and not [p for p in patterns if _PYTHON_ONLY_REGEX.search(p)]
    texts = ["<p>x", "<P\u3000a>", "<div\x0b>", "a &amp; b", "&#x41;", " \u2028 ", "", "x", "Ã©", "\x01",
             "\ufffd", "<br/>", "<lı>", "List<int>", "<a`x`>"]
    arr = pa.array(texts)
    for p in patterns:
        expected = [re.search(p, t) is not None for t in texts]
        if "(?i)" in p:     # Python's re alone also reads "ı" as "i" (see strip_html.HTML_TAG)
            expected = [e and "ı" not in t for e, t in zip(expected, texts)]
        assert pc.match_substring_regex(arr, p).to_pylist() == expected, p
