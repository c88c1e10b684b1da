"""strip_html's fast engine gives the reference's output: lxml == beautifulsoup4 text, on real bodies,
injected faults, edge cases and generated HTML, and the whole strip is a fixed point either way."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.curate import strip_html
from test_strip_html import html_docs


def real_bodies(shared: Path, every: int) -> list[str]:
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
    bodies = real_bodies(shared, every)
    bad = _mismatches(bodies)
    share = 1 - len(bad) / len(bodies)
    print(f"lxml == bs4 on {len(bodies)} real bodies: {100 * share:.3f}% exact")
    assert not bad, f"{len(bad)} of {len(bodies)} differ, first: {bad[:3]}"


def test_lxml_matches_on_injected_faults(tmp_path: Path, shared: Path) -> None:
    """Broken HTML, mojibake, NUL and other controls, CSV-hostile text, a 2 MB body: same text."""
    from stages.curate.ingest import CSV_FILES, read_kaggle_csv

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
    bodies = real_bodies(shared, 40)
    checked = 0
    for b in bodies:
        out, known_normal = strip_html.html_to_text_lxml_normal(strip_html.CONTROL_IN_HTML.sub("", b))
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
