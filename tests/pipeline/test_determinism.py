"""Determinism: two clean `dvc repro` runs of the data stages give byte-identical outputs.

Both runs use the same synthetic corpus with injected faults (so rejects, repairs and the
2 MB bodies are part of what must repeat), in two separate copies of the project at different
paths. `clean_run` is shared with tests/pipeline/test_crash.py, which compares a run that was killed
part-way through every stage with one of these clean runs.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SHARED, copy_project, run
from stages.app.funnel import DATA_STAGES

MAKE_CORPUS = SHARED / "bench" / "make_corpus.py"
# The data stages in an order dvc could run them: dedup (not in the funnel: it rejects nothing) before split.
RUN_ORDER = DATA_STAGES[:DATA_STAGES.index("top_answers")] + ["dedup"] + DATA_STAGES[DATA_STAGES.index("top_answers"):]
# Big enough that every stage spends a noticeable time writing its output (tests/pipeline/test_crash.py kills
# them part-way), small enough for CI: about 1,400 answers, 10 MB of CSV with a few 2 MB bodies.
CORPUS_ARGS = ["--questions", "600", "--faults", "0.03", "--seed", "11"]
_RUNS: dict[Path, Path] = {}


def reliability_corpus(base: Path) -> Path:
    corpus = base / "corpus"
    if not (corpus / "faults.json").exists():
        if not MAKE_CORPUS.exists():
            pytest.skip("../shared/bench/make_corpus.py is not beside the repo")
        run([sys.executable, str(MAKE_CORPUS), "--out", str(corpus), *CORPUS_ARGS], base)
    return corpus


def project_on_corpus(base: Path, name: str) -> Path:
    """A fresh copy of the project whose ingest.source is the reliability corpus."""
    corpus = reliability_corpus(base)
    proj = copy_project(base / name)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["ingest"]["source"] = str(corpus)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return proj


def clean_run(base: Path, name: str = "clean-a") -> Path:
    """`dvc repro` of the data stages, uninterrupted, in a fresh copy (once per session and name)."""
    key = base / name
    if key not in _RUNS:
        proj = project_on_corpus(base, name)
        run(["dvc", "repro", DATA_STAGES[-1]], proj, timeout=1200)
        _RUNS[key] = proj
    return _RUNS[key]


@pytest.fixture(scope="session")
def reliability_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp() / "reliability"
    base.mkdir(exist_ok=True)
    return base


def data_stage_outs(proj: Path) -> dict[str, str]:
    """{output path: md5} of every data stage's outputs as recorded in dvc.lock."""
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    outs = {}
    for stage in DATA_STAGES:
        assert stage in lock["stages"], f"{stage} missing from dvc.lock"
        for o in lock["stages"][stage]["outs"]:
            outs[o["path"]] = o["md5"]
    return outs


def file_digests(proj: Path) -> dict[str, str]:
    """sha256 of every file under data/ and metrics/ that a data stage writes."""
    out = {}
    for top in ("data", "metrics"):
        for p in sorted((proj / top).rglob("*")):
            rel = p.relative_to(proj).as_posix()
            if p.is_file() and not rel.startswith("data/sample") and "/." not in "/" + rel:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_two_clean_runs_are_byte_identical(reliability_base: Path) -> None:
    a = clean_run(reliability_base, "clean-a")
    b = clean_run(reliability_base, "clean-b")
    outs_a, outs_b = data_stage_outs(a), data_stage_outs(b)
    assert outs_a == outs_b
    assert {p for p in outs_a if p.startswith("data/")} >= {
        "data/raw", "data/stripped", "data/utf8", "data/filtered", "data/top2", "data/split", "data/shards"}
    files_a, files_b = file_digests(a), file_digests(b)
    differ = sorted(k for k in files_a.keys() | files_b.keys() if files_a.get(k) != files_b.get(k))
    assert differ == [], f"files differ between two clean runs: {differ}"
    assert any(k.startswith("data/shards/") for k in files_a)


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
        params["runtime"]["batch_rows"] = batch_rows
        params["runtime"]["workers"] = workers
        params["strip_html"]["engine"] = engine
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in RUN_ORDER:
            run([sys.executable, "-m", f"stages.curate.{stage}"], project)
        digests.append(_digest(project))
    assert len(digests[0]) >= 15
    assert digests[0] == digests[1] == digests[2]
