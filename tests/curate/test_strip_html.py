"""Stage strip_html: HTML to text with code intact, idempotent; its quality suite and the prose it reads."""
from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import example, given, settings, strategies as st

from gate_cases import (REPO, answers, assert_regexes_stay_on_arrow, assert_suite_passes_clean_and_fails_violating,
                        case_ids, questions, suite_params)
from stages.core.params import load_params
from stages.core.schemas import to_frame
from stages.curate import strip_html
from stages.curate.strip_html import prose_frame
from stages.curate.strip_html import strip_html as strip
from stages.curate.validate_utf import text_frame


# ----------------------------------------------------------------------------- the transform
def test_strip_keeps_code_blocks_lists_and_entities() -> None:
    html = ("<p>Try   this &amp; that:</p>\n<pre><code>def f(x):\n    if x &lt; 2:\n        return [x]\n</code></pre>"
            "<ul><li>one <code>a&lt;b</code></li><li>two</li></ul><p>Use the &lt;br&gt; tag<br>next</p>")
    assert strip(html) == (
        "Try this & that:\n\n```\ndef f(x):\n    if x < 2:\n        return [x]\n```\n\n"
        "- one `a<b`\n- two\n\nUse the `<br>` tag\n\nnext")


def test_strip_code_with_html_inside_is_not_parsed_again() -> None:
    html = "<pre><code>&lt;div&gt;List&lt;int&gt; xs;&lt;/div&gt;\n```\n</code></pre>"
    out = strip(html)
    assert "<div>List<int> xs;</div>" in out and out.startswith("````\n")
    assert strip(out) == out


def test_strip_rejects_empty_after_strip() -> None:
    df = pd.DataFrame({"id": pd.array([1, 2], dtype="Int64"), "body": ["<p><img src='x.png'></p>", "<p>ok</p>"]})
    res = strip_html.transform_frame("answers", df)
    assert res.kept["id"].tolist() == [2]
    assert res.rejected["reason"].tolist() == ["empty_after_strip"]


_TEXT = st.lists(st.sampled_from(list("ab <>&;/`#x1\n\t é’") + ["&lt;", "&amp;", "&#39;", "<br>", "<p>", "```\n"]),
                 max_size=30).map("".join)


@st.composite
def html_docs(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(
        _TEXT,
        _TEXT.map(lambda t: f"<p>{t}</p>"),
        _TEXT.map(lambda t: f"<pre><code>{t}</code></pre>"),
        _TEXT.map(lambda t: f"<code>{t}</code>"),
        st.lists(_TEXT, max_size=3).map(lambda xs: "<ul>" + "".join(f"<li>{x}</li>" for x in xs) + "</ul>"),
        _TEXT.map(lambda t: f"<blockquote><b>{t}</b></blockquote>"),
    ), max_size=6))
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(html_docs())
def test_strip_is_idempotent(doc: str) -> None:
    once = strip(doc)
    assert strip(once) == once


def test_strip_batch_control_scan_matches_the_python_regex() -> None:
    """transform finds control characters with one RE2 scan of the Arrow batch; it must
    flag exactly the texts HAS_CONTROL (Python re) flags, or CONTROL_IN_HTML would be skipped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = [chr(c) for c in range(0x100)] + ["a\x00b", "é\x1bx", "tab\tnl\ncr\r", "\u2028", "", "\U0001f600\x7f"]
    scanned = pc.match_substring_regex(pa.array(texts), strip_html.HAS_CONTROL.pattern).to_pylist()
    assert scanned == [strip_html.HAS_CONTROL.search(t) is not None for t in texts]


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


def strip_frames(q_bodies: list[str], a_bodies: list[str]) -> list:
    return [("questions", "rows", prose_frame(questions(q_bodies))), ("answers", "rows", prose_frame(answers(a_bodies)))]


CODE_BODY = "Use this:\n\n```\n<div class=\"x\">&amp;</div>\n```\n\nor `List<int>` and `&lt;`."
# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("strip_html", strip_frames(["plain text", CODE_BODY], ["- item one\n- item two"]),
     strip_frames(["plain text", "left over <p>tag</p> here"], ["ok"]),
     "questions.body_prose: expect_column_values_to_not_match_regex", 1, [2]),
    ("strip_html", strip_frames(["plain"], ["a < b and b > c", "quote `&amp;` in code"]),
     strip_frames(["plain"], ["fine", "Tom &amp; Jerry"]),
     "answers.body_prose: expect_column_values_to_not_match_regex", 1, [102]),
    ("strip_html", strip_frames(["plain"], ["ok"]), strip_frames(["plain"], ["ok", "   "]),
     "answers.body: expect_column_values_to_match_regex", 1, [102]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(strip_html.STAGE, params, clean, bad, check, n_failed, example_ids)


HTML_FRAGMENTS = ["<p>", "</p>", "<div>", "</div>", "<pre><code>", "</code></pre>", "<code>", "</code>", "&amp;",
                  "&lt;", "&gt;", "&lt;div&gt;", "List&lt;int&gt;", "&amp;amp;", "\n", " ", "word", "<br>", "<li>",
                  "<ul>", "</ul>", "&#39;", "&nbsp;", "<b>", "</b>", "a < b", "x > y", "&", "<a href='x'>", "</a>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(HTML_FRAGMENTS), max_size=25))
def test_strip_html_output_passes_the_prose_checks(parts):
    """The gate and the stage agree: whatever HTML (without literal backticks) strip_html is given,
    its output leaves no tag or entity in prose, so the tag/entity checks never fire on a sound stage."""
    text = strip("".join(parts))
    p = strip_html.prose(text)
    assert not re.search(strip_html.HTML_TAG, p) and not re.search(strip_html.HTML_ENTITY, p), (text, p)


def test_prose_drops_code_blocks_and_spans_but_not_across_paragraphs():
    text = "Use `<div>` here.\n\n```\n<p>&amp;</p>\n```\n\nA lone ` tick.\n\nThen <b>left</b> and `x`."
    p = strip_html.prose(text)
    assert "<div>" not in p and "&amp;" not in p and "<b>left</b>" in p and "`x`" not in p


_PROSE_PARTS = ["<", "</", ">", "/", "a", "b", "div", "DiV", "li", "h1", "x", "&", "#", "x2", "12", "amp", ";",
                "`", "``", "```", "\n", "\n\n", " ", "=", "'", "</b>", "<i>", "</Li >", "<br/>", "&amp;", "&#39;",
                "&#x2F;", "`<b>`", "```\n<p>\n```\n"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PROSE_PARTS), max_size=30))
@example(["</div>"])
@example(["&#x41;"])
@example(["<a", "`x`", ">"])          # prose joins what code split: "<a >" is a tag, "<a`x`>" is not
@example(["``", "</b>", "``"])
def test_prose_suspect_finds_every_text_whose_prose_can_fail(parts):
    """prose_frame skips the code-stripping regexes for texts PROSE_SUSPECT does not match: their
    prose must then hold no tag or entity either, or the gate would judge the wrong text."""
    text = "".join(parts)
    p = strip_html.prose(text)
    if re.search(strip_html.HTML_TAG, p) or re.search(strip_html.HTML_ENTITY, p) or \
            re.search(strip_html.HTML_TAG, text) or re.search(strip_html.HTML_ENTITY, text):
        assert re.search(strip_html.PROSE_SUSPECT, text), (text, p)
    framed = prose_frame(answers([text]))
    assert framed["body_prose"].tolist() == [p if re.search(strip_html.PROSE_SUSPECT, text) else text]


def test_space_classes_match_what_python_s_matches_in_both_engines():
    """SPACE and NOT_SPACE spell out Python's \\s and \\S so that GX's regex checks run on Arrow's
    RE2: over every code point, Python's re and RE2 must read them exactly as Python reads \\s."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    is_space = [re.fullmatch(r"\s", c) is not None for c in chars]
    assert [re.fullmatch(strip_html.SPACE, c) is not None for c in chars] == is_space
    assert [re.fullmatch(strip_html.NOT_SPACE, c) is None for c in chars] == is_space
    arr = pa.array(chars)
    assert pc.match_substring_regex(arr, f"^{strip_html.SPACE}$").to_pylist() == is_space
    assert pc.match_substring_regex(arr, f"^{strip_html.NOT_SPACE}$").to_pylist() == [not s for s in is_space]


@pytest.mark.parametrize("stage", ["strip_html"])
def test_text_suite_regexes_stay_on_arrow(stage):
    """The text suites read every body of the corpus: each regex must be one RE2 runs (gate_cases)."""
    checks = strip_html.STAGE.suite.checks(load_params(REPO / "params.yaml"))
    patterns = [c.kwargs["regex"] for c in checks if "regex" in c.kwargs]
    patterns += list(strip_html._SUSPECT_HALVES)
    assert_regexes_stay_on_arrow(patterns)


_CELL = st.one_of(st.none(), st.text(st.sampled_from(list("ab <>&#;`\n\t é　")), max_size=12),
                  st.lists(st.sampled_from(_PROSE_PARTS), max_size=8).map("".join))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_CELL, _CELL), max_size=8), st.booleans())
def test_row_frames_from_arrow_equal_the_row_by_row_frames(rows, with_title):
    """The stages read Arrow-held strings, which text_frame/prose_frame handle without a Python string
    per row; object columns (which may hold surrogates) take the row-by-row path. Same frames."""
    cols = {"id": pa.array(range(1, len(rows) + 1), pa.int64()), "body": pa.array([b for _, b in rows], pa.string())}
    if with_title:
        cols["title"] = pa.array([t for t, _ in rows], pa.string())
    arrow_held = to_frame(pa.table(cols))
    object_held = arrow_held.astype({c: object for c in ("title", "body") if c in arrow_held})
    object_held = object_held.where(object_held.notna(), None)
    for derive in (text_frame, prose_frame):
        fast, plain = derive(arrow_held), derive(object_held)
        assert fast.columns.tolist() == plain.columns.tolist()
        for c in ("text", "encodes_as_utf8", "body_prose"):
            if c in fast:
                assert fast[c].tolist() == plain[c].tolist(), c
    bodies = [b or "" for _, b in rows]
    assert prose_frame(arrow_held)["body_prose"].tolist() == \
        [strip_html.prose(b) if re.search(strip_html.PROSE_SUSPECT, b) else b for b in bodies]
