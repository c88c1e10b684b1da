"""The fast paths give the reference's output: lxml == beautifulsoup4 text, ftfy by line == ftfy,
and the stage outputs are byte-identical whatever the number of workers or the batch size."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import ftfy
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run
from test_transforms import html_docs
from stages import strip_html
from stages import validate_utf
from stages.validate_utf import FTFY_CONFIG, clean_text, fix_text_by_line, problem

DATA_STAGES = ["ingest", "strip_html", "validate_utf", "filter_upvotes", "top_answers", "split", "shard"]


def _real_bodies(shared: Path, every: int) -> list[str]:
    """Every `every`-th question and answer body of the real Stack Overflow pages in ../shared."""
    t = pq.read_table(shared / "data" / "pymaker" / "pymaker_so_python.parquet", columns=["question_body", "answers"])
    bodies = t.column("question_body").to_pylist() + [a for ans in t.column("answers").to_pylist() for a in ans]
    return bodies[::every]


def _mismatches(bodies: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for b in bodies:
        ref, fast = strip_html.html_to_text_bs4(b), strip_html.html_to_text_lxml(b)
        if ref != fast:
            out.append((b[:300], ref[:300], fast[:300]))
    return out


def test_lxml_gives_the_reference_text_on_real_bodies(shared: Path) -> None:
    # All 149,523 bodies matched exactly when measured (SOQA_ENGINES_ALL=1 runs them all, ~3 min
    # on 2 cores); the default run checks every 40th, about 3,700 bodies.
    every = 1 if os.environ.get("SOQA_ENGINES_ALL") else 40
    bodies = _real_bodies(shared, every)
    bad = _mismatches(bodies)
    share = 1 - len(bad) / len(bodies)
    print(f"lxml == bs4 on {len(bodies)} real bodies: {100 * share:.3f}% exact")
    assert not bad, f"{len(bad)} of {len(bodies)} differ, first: {bad[:3]}"


def test_lxml_matches_on_injected_faults(tmp_path: Path, shared: Path) -> None:
    """Broken HTML, mojibake, NUL and other controls, CSV-hostile text, a 2 MB body: same text."""
    from stages.ingest import CSV_FILES, read_kaggle_csv

    out = tmp_path / "dirty"
    subprocess.run([sys.executable, str(shared / "bench" / "make_corpus.py"), "--out", str(out), "--questions", "400",
                    "--faults", "0.3", "--seed", "7"], check=True, capture_output=True)
    # The 2 MB bodies take bs4 seconds each; one of them is enough.
    bodies = [b for table, name in CSV_FILES.items() for raw in read_kaggle_csv(out / name, table)
              for b in raw["Body"].to_pylist() if b]
    huge = [b for b in bodies if len(b) > 100_000]
    bodies = [b for b in bodies if len(b) <= 100_000] + huge[:1]
    assert len(bodies) > 1000 and huge
    bad = _mismatches(bodies)
    assert not bad, f"{len(bad)} of {len(bodies)} differ, first: {bad[:3]}"


@pytest.mark.parametrize("html", [
    "<p>a\x00b</p>",                                # NUL: U+FFFD for lxml, kept (then removed) for bs4
    "<code>a\rb</code> <b>x</b>",                   # lone CR: a newline for lxml, a space for bs4
    "<![CDATA[x]]><b>y</b>",                        # CDATA: dropped by lxml, text for bs4
    "R&D and a&b <i>c</i>", "&copy2015 &amp x <b>y</b>", "&foo; &Amp; <b>y</b>",  # unterminated/unknown entities
    "\ud800 <b>x</b>",                              # lone surrogate: lxml cannot encode it
    "&#65 &#x41x &#0; <b>y</b>",
    "<table><tr><td>a</td>b<td>c</td></tr></table>",
    "<ul><li>a<li>b</ul>tail</p> <br/>x</br>y",
    "<p><hr/>\nabc</p> def", "<p>a<div>b</div>c</p>d", "<b><p>x</p></b>y",   # mis-nested: libxml2 closes early
    "<p>x</p><pre><code", "a <b",                   # a tag cut off at the end
    "<pre>\r\n  x = 1\r\n\r\n  y\r\n</pre><p>a<p>b</p>c</p>",
    "<html><head><title>t</title><style>s</style></head><body><!-- c --><p>x<?php p ?>y</p></body></html>",
    "", "   ", "plain &lt;br&gt; text <em>e</em>",
])
def test_lxml_matches_on_edge_cases(html: str) -> None:
    assert strip_html.html_to_text_lxml(html) == strip_html.html_to_text_bs4(html)


def test_lxml_is_a_registered_engine() -> None:
    assert strip_html.strip_html("<p>x <code>y</code></p>", "lxml") == strip_html.strip_html("<p>x <code>y</code></p>", "bs4")


def test_known_normal_output_is_a_fixed_point_on_real_bodies(shared: Path) -> None:
    # The lxml path skips normalize_text when its builder knows the text is normal already.
    bodies = _real_bodies(shared, 40)
    checked = 0
    for b in bodies:
        out, known_normal = strip_html._html_to_text_lxml(strip_html.CONTROL_IN_HTML.sub("", b))
        if known_normal:
            checked += 1
            assert strip_html.normalize_text(out) == out, b[:300]
    assert checked > 0.95 * len(bodies)


@settings(max_examples=400, deadline=None)
@given(html_docs())
def test_lxml_strip_equals_reference_strip(doc: str) -> None:
    # Whole strip_html (controls dropped, normal form skipped or not) against the bs4 reference.
    fast = strip_html.strip_html(doc, "lxml")
    assert fast == strip_html.strip_html(doc, "bs4")
    assert strip_html.strip_html(fast, "lxml") == fast


@pytest.mark.parametrize("html", [
    "<p><code>``x</code> y</p><pre><code>a</code></pre>",      # a code span with a 3-backtick bar
    "<ul><li><code>```</code></li><li>b</li></ul>",
    "<p>a&#1;b <code>c&#x1b;[31md</code></p>", "<pre>x&#7;\n  y</pre>",   # controls written as references
    # found by hypothesis: whitespace-only strings in inline code, empty numeric references,
    # a bar behind spaces, a tag across two list items
    "<code>\t<br>```\na</code>", "&#;&#;&lt; <b>x</b>", "&#1a; <i>y</i>", " ````\n````\n",
    "<ul><li>&lt;a</li><li></li></ul>>",
])
def test_strip_edge_cases_match_and_are_fixed_points(html: str) -> None:
    fast = strip_html.strip_html(html, "lxml")
    assert fast == strip_html.strip_html(html, "bs4") == strip_html.normalize_text(fast)
    assert strip_html.strip_html(fast, "lxml") == fast == strip_html.strip_html(fast, "bs4")


@given(st.text(st.sampled_from(list("a \x00\x07\x1b[31m\x7f\x85é\n\r\t")), max_size=40))
def test_control_fast_check_finds_what_the_substitution_removes(text: str) -> None:
    # strip skips the substitution when the plain class finds nothing: both must agree.
    assert (strip_html.HAS_CONTROL.search(text) is None) == (strip_html.CONTROL_IN_HTML.sub("", text) == text)


# ----------------------------------------------------------------------------- ftfy on changeable lines only
_LINE_CHARS = st.sampled_from(list("ab 1\t{}<>&;é’—中😀\x00\x1b[31m\x85\u200b\ufffd") +
                              ["â€™", "Ã©", "ï¬", "ｆ", "e\u0301", "\r", "\x0c", "\x7f"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_LINE_CHARS, max_size=12).map("".join), max_size=6).map("\n".join))
def test_fix_text_by_line_is_fix_text(text: str) -> None:
    assert fix_text_by_line(text) == ftfy.fix_text(text, FTFY_CONFIG)


def test_fix_text_by_line_on_real_bodies(shared: Path) -> None:
    bodies = [b for b in _real_bodies(shared, 10) if not b.isascii()]
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
    res = validate_utf.transform("answers", df)
    cleaned, reasons, repaired = _validate_reference(texts)
    assert res.kept["body"].tolist() == [c for c, r in zip(cleaned, reasons) if r is None]
    assert res.rejected["reason"].tolist() == [r for r in reasons if r is not None]
    assert res.repaired == repaired
    if any(not t.isascii() and any("\ud800" <= ch <= "\udfff" for ch in t) for t in texts):
        return        # a lone surrogate cannot be an Arrow string: parquet input never holds one
    batch = pa.RecordBatch.from_pydict({"id": pa.array(range(len(texts)), pa.int64()),
                                        "body": pa.array(texts, pa.string())})
    res_arrow = validate_utf.transform_batch("answers", batch)
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
    res = validate_utf.transform("questions", df)
    batch = pa.RecordBatch.from_pandas(df, preserve_index=False)
    res_arrow = validate_utf.transform_batch("questions", batch)
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
    bodies = [strip_html.strip_html(b, "lxml") for b in _real_bodies(shared, 40)]
    assert sum(not b.isascii() for b in bodies) > 100
    _assert_transform_is_reference(bodies + ["", " \t", "a\x00b", "x\x7f", "ok"])


# ----------------------------------------------------------------------------- workers and batch size
def _digest(project: Path) -> dict[str, str]:
    out = {}
    for top in ("data", "metrics/audit"):
        for p in sorted((project / top).rglob("*")):
            if p.is_file() and "sample" not in p.parts:
                out[str(p.relative_to(project))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_outputs_identical_whatever_workers_and_batch_size(project: Path, shared: Path) -> None:
    corpus = project.parent / "corpus"
    subprocess.run([sys.executable, str(shared / "bench" / "make_corpus.py"), "--out", str(corpus), "--questions", "600",
                    "--faults", "0.03", "--seed", "3"], check=True, capture_output=True)
    digests = []
    for workers, batch_rows, engine in ((1, 100000, "bs4"), (2, 97, "lxml"), (2, 1000, "bs4")):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["ingest"]["source"] = str(corpus)
        params["ingest"]["batch_rows"] = batch_rows
        params["workers"] = workers
        params["strip_html"]["engine"] = engine
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in DATA_STAGES:
            run([sys.executable, "-m", f"stages.{stage}"], project)
        digests.append(_digest(project))
    assert len(digests[0]) >= 15
    assert digests[0] == digests[1] == digests[2]


def test_background_sink_writes_the_same_bytes(tmp_path: Path) -> None:
    import pyarrow as pa

    from stages.common import PAIR_SCHEMA, ParquetSink

    rows = 3 * ParquetSink.ROW_GROUP + 123
    table = pa.table({
        "question_id": pa.array(range(rows), pa.int64()), "answer_id": pa.array(range(rows), pa.int64()),
        "answer_rank": pa.array([1] * rows, pa.int32()), "title": [f"t{i}" for i in range(rows)],
        "question": [f"q {i} é" for i in range(rows)], "answer": [f"a {i}" * (i % 7) for i in range(rows)],
        "question_score": pa.array([i % 5 for i in range(rows)], pa.int64()),
        "answer_score": pa.array([i % 3 for i in range(rows)], pa.int64())}, schema=PAIR_SCHEMA)
    for background in (False, True):
        sink = ParquetSink(tmp_path / f"{background}.parquet", PAIR_SCHEMA, background=background)
        for start in range(0, rows, 5000):
            sink.write(table.slice(start, 5000))
        sink.close()
        assert sink.rows == rows
    assert (tmp_path / "False.parquet").read_bytes() == (tmp_path / "True.parquet").read_bytes()
