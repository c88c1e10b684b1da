"""The README's experiment loop, followed literally in a fresh copy of the project: every command of
its section runs in order (those commented "# fails" must fail), `dvc exp show` prints the table the
README shows, and `dvc plots diff` draws every chart offline in headless Chromium.

Real DVC, real training on the embedded sample (about 4 minutes on 2 cores).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, copy_project, env

SECTION = "## The experiment loop"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
METRIC_TOLERANCE = 0.05   # relative: CPU training is seeded, but another CPU may round differently


def section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end > 0 else None]


def commands(text: str) -> list[tuple[str, bool]]:
    """(command, expected to fail) for every line of the section's bash blocks, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append((line.strip(), bool(re.search(r"#\s*fails\b", line))))
    return out


def table(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """A markdown table from `dvc exp show --md`: (header, {row key: cells}). The branch row is keyed
    HEAD (its name differs between clones), an experiment by its name (its hash differs per run)."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.strip().startswith("|")]
    header, body = rows[0], [r for r in rows[2:]]
    keyed = {}
    for i, r in enumerate(body):
        name = re.search(r"\[(.+?)\]", r[0])
        keyed[name.group(1) if name else ("HEAD" if i == 1 else r[0])] = r[1:]
    return header, keyed


def same_cell(column: str, expected: str, got: str) -> bool:
    if "." in column and not column.startswith(("val_", "test_")) and column.split(".")[0] in ("train", "generate"):
        return expected == got                                   # a param: exactly what -S set
    try:
        return abs(float(got) - float(expected)) <= METRIC_TOLERANCE * abs(float(expected))
    except ValueError:
        return expected == got


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    assert (REPO / ".dvc" / "plots_offline.html").is_file(), "run `make install`: it writes .dvc/plots_offline.html"
    text = section((REPO / "README.md").read_text(encoding="utf-8"))
    proj = copy_project(tmp_path_factory.mktemp("loop") / "proj")
    e = env() | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                 "GIT_COMMITTER_EMAIL": "t@t"}
    outputs: dict[str, subprocess.CompletedProcess] = {}
    for cmd, should_fail in commands(text):
        proc = subprocess.run(["bash", "-c", cmd], cwd=proj, env=e, capture_output=True, text=True, timeout=1200)
        outputs[cmd] = proc
        failed = proc.returncode != 0
        assert failed == should_fail, f"{cmd!r} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if "dvc plots diff" in cmd:      # kept before later commands overwrite the workspace
            shutil.copytree(proj / "dvc_plots", proj.parent / "plots")
            assert not subprocess.run(["git", "status", "--porcelain", "dvc_plots"], cwd=proj, capture_output=True,
                                      text=True).stdout, "dvc_plots/ is not git-ignored"
    return {"proj": proj, "text": text, "outputs": outputs}


@pytest.mark.slow
def test_the_loop_prints_the_readme_table(loop: dict) -> None:
    show = next(p for c, p in loop["outputs"].items() if c.startswith("dvc exp show --md"))
    want_header, want = table(loop["text"].splitlines())
    got_header, got = table(show.stdout.splitlines())
    assert got_header == want_header
    assert sorted(got) == sorted(want), show.stdout
    for key, cells in want.items():
        for column, expected, value in zip(want_header[1:], cells, got[key]):
            assert same_cell(column, expected, value), (key, column, expected, value, show.stdout)
    # Experiments did not stack: each changed only its own param.
    column = {c: i for i, c in enumerate(want_header[1:])}
    assert got["beams-1"][column["train.learning_rate"]] == got["HEAD"][column["train.learning_rate"]]
    assert got["lr-0.003"][column["generate.num_beams"]] == got["HEAD"][column["generate.num_beams"]]


@pytest.mark.slow
def test_after_the_failed_experiment_the_funnel_said_so_and_the_commit_came_back(loop: dict) -> None:
    funnel = next(p for c, p in loop["outputs"].items() if c.startswith("soqa funnel"))
    assert "audit missing for ingest" in funnel.stderr and "git checkout params.yaml && dvc repro" in funnel.stderr
    proj = loop["proj"]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=proj, capture_output=True, text=True).stdout
    assert status == "", status                     # params.yaml and every output as committed
    assert "learning_rate: 0.003" in (proj / "params.yaml").read_text()     # the applied winner


@pytest.mark.slow
def test_plots_diff_draws_every_chart_offline(loop: dict, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    index = loop["proj"].parent / "plots" / "index.html"
    page_html = index.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page_html and "vegaEmbed" in page_html
    charts = page_html.count("vegaEmbed('#")
    assert charts == 2                                    # train loss, val loss (dvc.yaml plots)
    problems: list[str] = []
    shot = tmp_path / "plots.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:", "blob:"))
                else problems.append(f"external request: {r.url}"))
        page.goto(index.as_uri(), wait_until="load")
        page.wait_for_function(f"document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= {charts}",
                               timeout=30_000)
        sizes = page.eval_on_selector_all(".vega-embed canvas, .vega-embed svg.marks",
                                          "els => els.map(e => [e.clientWidth, e.clientHeight])")
        # Every chart draws all three revisions, on its one pair of axes: each legend names them.
        legend = page.eval_on_selector_all(".vega-embed", "els => els.map(e => e.textContent)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert len(sizes) >= charts and all(w > 100 and h > 100 for w, h in sizes), sizes
    assert len(legend) == charts and all(all(rev in t for rev in ("HEAD", "lr-0.003", "beams-1")) for t in legend), \
        legend
    assert shot.stat().st_size > 20_000
    if os.environ.get("SOQA_SCREENSHOTS"):                 # for a person to look at
        shutil.copy(shot, Path(os.environ["SOQA_SCREENSHOTS"]) / "dvc_plots_diff.png")
