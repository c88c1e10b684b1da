"""Bad params: a wrong type or an out-of-range value stops the stage before any work, in one line
naming the key, the value and what is allowed; exit 1; no traceback; nothing written.

Each case runs the stage's real entry point (`python -m ...`) in a copy of the project whose
params.yaml holds the bad value, as `dvc exp run -S key=value` would write it.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, run

# (module, dotted key, value as YAML gives it, what the line must say is allowed)
CASES = [
    ("stages.curate.filter_upvotes", "filter.min_score", "abc", "a whole number"),
    ("stages.curate.filter_upvotes", "filter.min_score", 2.5, "a whole number"),
    ("stages.curate.filter_upvotes", "filter.min_score", True, "a whole number"),
    ("stages.curate.filter_upvotes", "filter.min_score", None, "a whole number"),
    ("stages.curate.filter_upvotes", "filter.min_score", 10**30, "<= 9223372036854775807"),
    ("stages.curate.top_answers", "top_answers.k", 0, "a whole number >= 1"),
    ("stages.curate.top_answers", "top_answers.k", "2", "a whole number >= 1"),
    ("stages.curate.top_answers", "top_answers.k", 1.5, "a whole number >= 1"),
    ("stages.curate.split", "split.test_fraction", 1, r"a number in [0, 1)"),
    ("stages.curate.split", "split.test_fraction", -0.1, r"a number in [0, 1)"),
    ("stages.curate.split", "split.test_fraction", "0.2", r"a number in [0, 1)"),
    ("stages.curate.split", "split.test_fraction", math.nan, r"a number in [0, 1)"),
    ("stages.curate.split", "split.val_fraction", 1.5, r"a number in [0, 1)"),
    ("stages.curate.split", "split.seed", "x", "a whole number"),
    ("stages.curate.shard", "shard.size", 0, "a whole number >= 1"),
    ("stages.curate.strip_html", "strip_html.engine", ["lxml"], "choose one of"),
    ("stages.curate.ingest", "ingest.tags", "python", "a list of tag names"),
    ("stages.curate.ingest", "ingest.tags", [1], "a list of tag names"),
    ("stages.curate.ingest", "ingest.tags", ["machine learning"], "a list of tag names"),
    ("stages.curate.ingest", "ingest.source", 5, "a path to a folder or file"),
    ("stages.curate.ingest", "ingest.source", "", "a path to a folder or file"),
]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("badparams") / "proj")


def _set(proj: Path, key: str, value: object) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    section, name = key.split(".")
    params[section][name] = value
    params["runtime"]["gx_preload"] = False
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _written(proj: Path) -> list[str]:
    return sorted(str(p.relative_to(proj)) for d in ("data", "metrics") if (proj / d).is_dir()
                  for p in (proj / d).rglob("*") if p.is_file() and not p.is_relative_to(proj / "data" / "sample")
                  and not p.is_relative_to(proj / "data" / "human_eval"))


@pytest.mark.parametrize("module,key,value,allowed", CASES, ids=[f"{k}={v!r}" for _, k, v, _ in CASES])
def test_bad_param_stops_the_stage_in_one_line(proj: Path, module: str, key: str, value: object, allowed: str) -> None:
    original = (proj / "params.yaml").read_text()
    before = _written(proj)
    try:
        _set(proj, key, value)
        proc = run([sys.executable, "-m", module], proj, check=False, timeout=120)
    finally:
        (proj / "params.yaml").write_text(original)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert key in line and allowed in line, line
    if key != "ingest.source" or value != "":
        assert repr(value) in line or str(value) in line, f"value not named: {line}"
    assert _written(proj) == before, "a stage with a bad param wrote something"


def test_tags_need_a_source_with_tags(proj: Path) -> None:
    """ingest.tags on the Kaggle sample, which has no Tags.csv: refused before any work."""
    original = (proj / "params.yaml").read_text()
    try:
        _set(proj, "ingest.tags", ["python"])
        proc = run([sys.executable, "-m", "stages.curate.ingest"], proj, check=False, timeout=120)
    finally:
        (proj / "params.yaml").write_text(original)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ingest.tags is ['python'] but the source has no Tags.csv" in proc.stderr
    assert not (proj / "data" / "raw").exists()
