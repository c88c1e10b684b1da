"""The `report` stage: a static offline HTML report built by `dvc repro`, opened in headless Chromium,
`soqa report` printing the same funnel, and `dvc metrics diff` showing funnel and check changes."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import copy_project, run
from stages.app.funnel import DATA_STAGES
from stages.app.report import bars_svg, dedup_section, funnel_svg, histogram, model_section, offline_page, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXTERNAL_FETCH = re.compile(r"<(?:script|img|iframe|link|source|video|audio)\b[^>]*(?:src|href)\s*=\s*['\"]?"
                            r"(?:https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample pipeline reproduced up to the report, in a throw-away copy."""
    proj = copy_project(tmp_path_factory.mktemp("report") / "proj")
    run(["dvc", "repro", "report"], proj)
    return proj


# ----------------------------------------------------------------------------- pure pieces
def test_histogram_puts_every_value_in_one_bin():
    edges = [0, 10, 100, float("inf")]
    assert histogram([0, 9, 10, 99, 100, 10**9], edges) == [2, 2, 2]
    assert histogram([-1], edges) == [0, 0, 0]


def test_funnel_svg_shows_kept_and_lost_rows():
    svg = funnel_svg({"a": {"stage": "a", "rows_in": 10, "rows_out": 10, "rejected": 0},
                      "b": {"stage": "b", "rows_in": 10, "rows_out": 6, "rejected": 4}})
    assert svg.startswith("<svg") and "6 kept · 4 lost (40%)" in svg and "10 kept" in svg
    assert "b: 4 rejected" in svg


def test_bars_svg_escapes_labels():
    svg = bars_svg(["<1", "≥1"], {"x & y": [1, 3]}, "t <b>")
    assert "&lt;1" in svg and "x &amp; y" in svg and "t &lt;b&gt;" in svg and "<b>" not in svg


def test_offline_page_drops_everything_that_fetches():
    page = ("<html><head><link rel='stylesheet' href='https://cdn.example/x.css'>"
            "<script src='https://cdn.example/x.js'></script><style>a{background:url('https://x/y.png')}</style>"
            "</head><body><img src='//cdn.example/logo.png'><script>$('#x')</script>"
            "<footer><form action='https://x'></form></footer></body></html>")
    out = offline_page(page)
    assert not EXTERNAL_FETCH.search(out) and "url('https" not in out
    assert "<script" not in out and "<footer" not in out and "</head>" in out


def test_dedup_section_shows_a_cluster_side_by_side():
    d = {"audit": {"clusters": 1, "questions_in_clusters": 2, "largest_cluster": 2, "pairs": {"near_duplicate": 1}},
         "split": {"mode": "group", "moved_questions": 1, "questions_removed": {"eval_overlap": 1}},
         "clusters": [{"cluster": 4, "members": [{"id": 4, "title": "Sort a <dict>", "side": "train"},
                                                 {"id": 9, "title": "Sorting a dict", "side": "train"}],
                       "edges": [{"a": 4, "b": 9, "kind": "near_duplicate", "jaccard": 0.81, "joined": True}]}],
         "eval_matches": [{"id": 5, "title": "How to install numpy 3", "side": "removed: eval_overlap",
                           "eval_question": "How to install Numpy?", "similarity": 0.76}]}
    page = dedup_section(d)
    row = re.search(r"<tr><th>4<br>.*?</tr>", page).group(0)
    assert row.index("<b>4</b>") < row.index("<b>9</b>") and "Sort a &lt;dict&gt;" in row   # one row, in id order
    assert "4–9 near_duplicate 0.81" in page and "1 questions moved side" in page
    assert "How to install Numpy?" in page and "0.76" in page
    assert dedup_section(None) == ""


def _data(audits: dict, model: dict | None = None) -> dict:
    return {"audits": audits, "quality": {}, "examples": {}, "model": model or {},
            "distributions": {"lengths": {"a": [0] * 10}, "scores": {"b": [0] * 10}},
            "split_rows": {}, "split_questions": {}, "params": {"source": "s", "min_score": 2, "k": 2, "shard_size": 9}}


def test_a_stage_whose_audit_is_missing_is_shown_not_left_out():
    a = {"stage": "strip_html", "rows_in": 5, "rows_out": 5, "rejected": 0, "tables": {"questions": {}}}
    page = render(_data({"strip_html": a}), {})
    assert "Audit missing for ingest, validate_utf" in page and "git checkout params.yaml &amp;&amp; dvc repro" in page
    assert page.index(">ingest</td>") < page.index("strip_html</a>")
    assert "audit missing (no <code>metrics/audit/ingest.json</code>)" in page
    assert "<td>posts</td>" in page


def test_model_section_cautions_about_a_toy_model_and_escapes_answers():
    model = {"metrics": {"examples": 3, "test_pairs": 3, "rouge1": 0.5, "initial": {"rouge1": 0.1}},
             "human_eval": {"caution": "caution: a toy model (1 parameters)", "settings": {"num_beams": 4},
                            "answers": [{"question": "Q <1>?", "answer": "<script>x</script>"}]}}
    html = model_section(model)
    assert "<p class='caution'>Caution: a toy model (1 parameters)</p>" in html
    assert "Q &lt;1&gt;?" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert "num_beams=4" in html and "<td class='n'>0.5</td><td class='n'>0.1</td>" in html
    assert "Not evaluated yet" in model_section({})


# ----------------------------------------------------------------------------- the built report
@pytest.mark.slow
def test_report_stage_writes_an_offline_report(built: Path):
    index = built / "reports" / "index.html"
    page = index.read_text(encoding="utf-8")
    for stage in DATA_STAGES:
        assert f"id='stage-{stage}'" in page
        q = json.loads((built / "metrics" / "quality" / f"{stage}.json").read_text(encoding="utf-8"))
        assert q["success"] and q["evaluated"] == q["successful"] > 0
        assert (built / "reports" / "data_docs" / f"{stage}.html").exists()
        assert f"data_docs/{stage}.html" in page
    audits = {s: json.loads((built / "metrics" / "audit" / f"{s}.json").read_text()) for s in DATA_STAGES}
    # The funnel shows each stage's numbers, and rejected reasons with example rows.
    for s, a in audits.items():
        assert f"<td class='n'>{a['rows_out']:,}</td>" in page or f"<td class='n'>{a['rows_out']:,} (" in page
        for reason in a["rejected_by_reason"]:
            assert f"{s} · {reason}" in page
    assert "score_below_min" in page
    assert "Split sizes" in page and "Text length in characters" in page and "<svg" in page
    assert "id='dedup'" in page and "Near-duplicates and leakage" in page
    assert "<td>posts</td>" in page and "<td>pairs</td>" in page and "question-answer pairs" in page
    assert "<p class='caution'>Caution: a toy model (" in page and "id='model'" in page
    # Data Docs: no fake run time, their own styling (GX's bootstrap classes, no CDN).
    for docs in (built / "reports" / "data_docs").glob("*.html"):
        text = docs.read_text(encoding="utf-8")
        assert "1970" not in text and "__none__" not in text and "Run Time" in text, docs
        assert ".card{" in text and ".navbar.sticky-top{" in text and "{%" not in text, docs
    # Offline: no CDN, no script at all, nothing fetched from a network in any page.
    for html_file in (built / "reports").rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        assert not EXTERNAL_FETCH.search(text), html_file
        assert "<script" not in text, html_file


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built: Path, tmp_path: Path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    pages = [built / "reports" / "index.html"] + sorted((built / "reports" / "data_docs").glob("*.html"))
    problems: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as pw:
        # Debian's chromium, never a downloaded browser.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:"))
                else problems.append(f"external request: {r.url}"))
        for p in pages:
            page.goto(p.as_uri(), wait_until="load")
            assert page.title(), p
            if p.parent.name == "data_docs":      # styled offline: section cards on a tinted page
                assert page.locator(".ge-section").first.evaluate("e => getComputedStyle(e).borderRadius") == "8px"
            if p.name == "index.html":
                assert page.locator(".caution").is_visible()
                assert page.locator("#funnel svg").is_visible()
                assert page.locator("#quality").is_visible()
                assert page.locator("text=expectations passed").is_visible()
                page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert shot.stat().st_size > 20_000
    shutil.copy(shot, built / "reports" / "screenshot.png")   # kept beside the report for a person to look at


@pytest.mark.slow
def test_soqa_report_prints_funnel_and_gates(built: Path):
    proc = run(["soqa", "report"], built)
    out = proc.stdout
    assert "soqa curation funnel" in out and "quality gates" in out
    for stage in ("ingest", "strip_html", "shard"):
        assert stage in out
    assert "reports/index.html" in out


@pytest.mark.slow
def test_metrics_diff_shows_funnel_and_check_changes(built: Path, tmp_path: Path):
    proj = tmp_path / "proj"
    shutil.copytree(built, proj, symlinks=True)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], proj)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "built"], proj)
    params = proj / "params.yaml"
    text = params.read_text(encoding="utf-8")
    assert "min_score: 2" in text
    params.write_text(text.replace("min_score: 2", "min_score: 5", 1), encoding="utf-8")
    run(["dvc", "repro", "report"], proj)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], proj).stdout)
    audit = diff["metrics/audit/filter_upvotes.json"]
    assert audit["rows_out"]["diff"] < 0 and audit["rejected_by_reason.score_below_min"]["diff"] > 0
    checks = diff["metrics/quality/filter_upvotes.json"]
    assert checks["rows_checked.answers"]["diff"] < 0
    assert "metrics/quality/top_answers.json" in diff


@pytest.mark.slow
def test_report_rebuilds_to_the_same_bytes(built: Path, tmp_path: Path):
    """Same results, same report: GX's random element ids are numbered, so a forced rebuild is no new version."""
    proj = tmp_path / "proj"
    shutil.copytree(built, proj, symlinks=True)
    run(["dvc", "repro", "-f", "-s", "report"], proj)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root / "reports")): p.read_bytes() for p in sorted((root / "reports").rglob("*"))
                if p.is_file() and p.name != "screenshot.png"}

    before, after = files(built), files(proj)
    assert any(k.startswith("data_docs/") for k in before)
    assert after == before
