"""Stage validate_utf: mojibake repaired, controls dropped, the untrustworthy rejected; the Arrow transform
equals the row-by-row rule; ftfy by line equals ftfy; its quality suite."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import ftfy
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate_cases import (REPO, answers, assert_regexes_stay_on_arrow, assert_suite_passes_clean_and_fails_violating,
                        case_ids, questions, suite_params)
from stages.core.params import load_params
from stages.curate import strip_html, validate_utf
from stages.curate.validate_utf import text_frame
from stages.curate.validate_utf.arrow import transform as transform_batch
from stages.curate.validate_utf.rules import FTFY_CONFIG, clean_text, fix_text_by_line, problem, transform_frame
from test_strip_html_engines import real_bodies


# ----------------------------------------------------------------------------- the transform
def test_validate_repairs_mojibake_and_controls_keeps_unicode() -> None:
    moj = "It doesn’t work — naïve café.".encode("utf-8").decode("cp1252")
    df = pd.DataFrame({"id": pd.array([1, 2, 3, 4], dtype="Int64"),
                       "body": [moj, "nul\x00 esc\x1b[31m bell\x07", "中文 “curly” 😀 é", "bad \ufffd char"]})
    res = transform_frame("answers", df)
    assert res.kept["body"].tolist() == ["It doesn’t work — naïve café.", "nul esc bell", "中文 “curly” 😀 é"]
    assert res.rejected["reason"].tolist() == ["replacement_char"]
    assert res.repaired["mojibake"] == 1 and res.repaired["control_chars"] == 1


def test_validate_rejects_lone_surrogates_and_takes_empty_batches() -> None:
    # Found by hypothesis: a lone surrogate crashed building its reject row (Arrow strings cannot
    # hold one), an empty batch crashed selecting rows. Parquet input never holds either; the
    # pure transform must still take them.
    df = pd.DataFrame({"id": pd.array([1, 2], dtype="Int64"), "body": pd.Series(["ok", "x \ud800 y"], dtype=object)})
    res = transform_frame("answers", df)
    assert res.kept["body"].tolist() == ["ok"]
    assert res.rejected["reason"].tolist() == ["replacement_char"]     # ftfy turns it into U+FFFD
    assert res.rejected["detail"].tolist() == ["x \\ud800 y"]
    empty = transform_frame("answers", df.iloc[:0])
    assert len(empty.kept) == 0 and len(empty.rejected) == 0


# ----------------------------------------------------------------------------- ftfy on changeable lines only
_LINE_CHARS = st.sampled_from(list("ab 1\t{}<>&;é’—中😀\x00\x1b[31m\x85\u200b\ufffd") +
                              ["â€™", "Ã©", "ï¬", "ｆ", "e\u0301", "\r", "\x0c", "\x7f"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_LINE_CHARS, max_size=12).map("".join), max_size=6).map("\n".join))
def test_fix_text_by_line_is_fix_text(text: str) -> None:
    assert fix_text_by_line(text) == ftfy.fix_text(text, FTFY_CONFIG)


def test_fix_text_by_line_on_real_bodies(shared: Path) -> None:
    bodies = [b for b in real_bodies(shared, 10) if not b.isascii()]
    assert len(bodies) > 500
    assert [fix_text_by_line(b) for b in bodies] == [ftfy.fix_text(b, FTFY_CONFIG) for b in bodies]


# ----------------------------------------------------------------------------- validate_utf: plain rows skip the loop
def _validate_reference(texts: list[str]) -> tuple[list[str], list[str | None], Counter]:
    """validate_utf's rule row by row, no vectorised shortcut: clean_text, then problem()."""
    cleaned, reasons, repaired = [], [], Counter()
    for t in texts:
        c, kinds = clean_text(t)
        repaired.update(kinds)
        why = problem(c)
        cleaned.append(c)
        reasons.append(why if why is not None or c.strip() else "empty_after_cleaning")
    return cleaned, reasons, repaired


def _assert_transform_is_reference(texts: list[str]) -> None:
    """Both shapes of the transform follow the rule: over a DataFrame, and over an Arrow batch (the
    stage's path, with plain rows picked out by Arrow and only the rest cleaned by a worker)."""
    df = pd.DataFrame({"id": pd.array(range(len(texts)), dtype="Int64"), "body": pd.Series(texts, dtype=object)})
    res = transform_frame("answers", df)
    cleaned, reasons, repaired = _validate_reference(texts)
    assert res.kept["body"].tolist() == [c for c, r in zip(cleaned, reasons) if r is None]
    assert res.rejected["reason"].tolist() == [r for r in reasons if r is not None]
    assert res.repaired == repaired
    if any(not t.isascii() and any("\ud800" <= ch <= "\udfff" for ch in t) for t in texts):
        return        # a lone surrogate cannot be an Arrow string: parquet input never holds one
    batch = pa.RecordBatch.from_pydict({"id": pa.array(range(len(texts)), pa.int64()),
                                        "body": pa.array(texts, pa.string())})
    res_arrow = transform_batch("answers", batch)
    assert res_arrow.kept.column("body").to_pylist() == res.kept["body"].tolist()
    assert res_arrow.kept.column("id").to_pylist() == res.kept["id"].tolist()
    assert res_arrow.rejected.to_dict("list") == res.rejected.to_dict("list") and res_arrow.repaired == repaired


def test_validate_batch_transform_is_the_dataframe_transform_on_questions() -> None:
    """Two text columns: a row's reason is its title's when both fail, as in the DataFrame transform."""
    moj = "donâ€™t"
    rows = [("ok", "body"), (" \t", "body"), ("title", "\n \n"), ("bad \ufffd", " "), (moj, "caf\u00e9 \x07"),
            ("\x1b[31m", "é"), ("plain", "x \ufffd"), ("", "")]
    df = pd.DataFrame({"id": pd.array(range(len(rows)), dtype="Int64"), "score": pd.array([1] * len(rows), dtype="Int64"),
                       "title": [t for t, _ in rows], "body": [b for _, b in rows]})
    res = transform_frame("questions", df)
    batch = pa.RecordBatch.from_pandas(df, preserve_index=False)
    res_arrow = transform_batch("questions", batch)
    assert res.rejected["id"].tolist() == [1, 2, 3, 5, 6, 7]
    assert res.rejected["reason"].tolist() == ["empty_after_cleaning", "empty_after_cleaning", "replacement_char",
                                               "empty_after_cleaning", "replacement_char", "empty_after_cleaning"]
    assert res.repaired == Counter({"mojibake": 1, "unicode_fixed": 1, "control_chars": 1})
    assert res_arrow.rejected.to_dict("list") == res.rejected.to_dict("list") and res_arrow.repaired == res.repaired
    assert res_arrow.kept.to_pandas()[["title", "body"]].equals(res.kept[["title", "body"]])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_LINE_CHARS | st.sampled_from(["\ud800", "  ", "\n", "\x9f", "plain ascii"]),
                         max_size=10).map("".join), max_size=12))
def test_validate_transform_is_the_row_by_row_rule(texts: list[str]) -> None:
    _assert_transform_is_reference(texts)


def test_validate_transform_is_the_row_by_row_rule_on_real_bodies(shared: Path) -> None:
    bodies = [strip_html.strip_html(b, "lxml") for b in real_bodies(shared, 40)]
    assert sum(not b.isascii() for b in bodies) > 100
    _assert_transform_is_reference(bodies + ["", " \t", "a\x00b", "x\x7f", "ok"])


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


def utf_frames(q_bodies: list[str], a_bodies: list[str]) -> list:
    return [("questions", "rows", text_frame(questions(q_bodies))), ("answers", "rows", text_frame(answers(a_bodies)))]


# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("validate_utf", utf_frames(["café, don’t", "中文 😀"], ["ok"]), utf_frames(["fine", "bad \ufffd here"], ["ok"]),
     "questions.text: expect_column_values_to_not_match_regex", 1, [2]),
    ("validate_utf", utf_frames(["café"], ["tab\tand\nnewline"]), utf_frames(["café"], ["bell \x07 here"]),
     "answers.text: expect_column_values_to_not_match_regex", 1, [101]),
    ("validate_utf", utf_frames(["café"], ["ok"]), utf_frames(["cafÃ© and donâ€™t"], ["ok"]),
     "questions.text: expect_column_values_to_not_match_regex", 1, [1]),
    ("validate_utf", utf_frames(["café"], ["ok"]), utf_frames(["café"], ["lone \ud800 surrogate"]),
     "answers.encodes_as_utf8: expect_column_values_to_be_in_set", 1, [101]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(validate_utf.STAGE, params, clean, bad, check, n_failed, example_ids)


@pytest.mark.parametrize("stage", ["validate_utf"])
def test_text_suite_regexes_stay_on_arrow(stage):
    """The text suites read every body of the corpus: each regex must be one RE2 runs (gate_cases)."""
    checks = validate_utf.STAGE.suite.checks(load_params(REPO / "params.yaml"))
    assert_regexes_stay_on_arrow([c.kwargs["regex"] for c in checks if "regex" in c.kwargs])
