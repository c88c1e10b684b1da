"""Ctrl-C: a stage interrupted part-way prints one line, exits non-zero, removes its temporary
output and leaves the committed one as it was; its worker processes print nothing.

A real subprocess in its own session gets SIGINT on its whole process group, as a terminal's
Ctrl-C reaches the stage and every worker it forked.
"""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_project, env, run

SAMPLE = REPO / "data" / "sample"
OUT = {"stages.curate.ingest": "raw", "stages.curate.strip_html": "stripped"}


def _big_kaggle(folder: Path, copies: int) -> Path:
    """The sample's rows `copies` times over under fresh ids: a source that takes seconds to read."""
    folder.mkdir(parents=True)
    for name, id_cols in (("Questions.csv", ["Id"]), ("Answers.csv", ["Id", "ParentId"])):
        with open(SAMPLE / name, encoding="latin-1", newline="") as fh:
            rows = list(csv.DictReader(fh))
        with open(folder / name, "w", encoding="latin-1", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            for k in range(copies):
                for r in rows:
                    w.writerow(r | {c: str(int(r[c]) + k * 100_000_000) for c in id_cols})
    return folder


def _set(proj: Path, **values: object) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for key, v in values.items():
        section, name = key.split("__")
        params[section][name] = v
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupt(proj: Path, module: str, after: float = 0.5, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a stage, send SIGINT to its process group once it writes its temporary output."""
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=proj, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if list((proj / "data").glob(f".{OUT[module]}.tmp-*")):
            time.sleep(after)
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _leftovers(proj: Path) -> list[str]:
    return [str(p.relative_to(proj)) for d in (proj / "data", proj / "data" / "rejects", proj / "metrics" / "audit")
            if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _assert_one_line(proc: subprocess.CompletedProcess, stage: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 130, f"exit {proc.returncode}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert lines == [f"error {stage}: interrupted (Ctrl-C); nothing written, earlier outputs left as they were"], lines


@pytest.mark.slow
def test_ctrl_c_leaves_committed_outputs_and_prints_one_line(tmp_path: Path) -> None:
    if not SAMPLE.exists():
        pytest.skip("data/sample is missing")
    proj = copy_project(tmp_path / "proj")
    _set(proj, runtime__gx_preload=False, runtime__workers=2)
    run([sys.executable, "-m", "stages.curate.ingest"], proj)
    run([sys.executable, "-m", "stages.curate.strip_html"], proj)
    committed = {d: _digests(proj / "data" / d) for d in ("raw", "stripped", "rejects")}
    audit = (proj / "metrics" / "audit" / "ingest.json").read_text()

    # The stream stage (this process only), part-way through a source that takes seconds to read.
    _set(proj, ingest__source=str(_big_kaggle(tmp_path / "big", 400)))
    proc = _interrupt(proj, "stages.curate.ingest")
    _assert_one_line(proc, "ingest")
    assert _digests(proj / "data" / "raw") == committed["raw"]
    assert _digests(proj / "data" / "rejects") == committed["rejects"]
    assert (proj / "metrics" / "audit" / "ingest.json").read_text() == audit
    assert _leftovers(proj) == []

    # A map stage on forked workers: Ctrl-C reaches them too; none may print a traceback.
    run([sys.executable, "-m", "stages.curate.ingest"], proj)
    rejects_before = _digests(proj / "data" / "rejects")
    proc = _interrupt(proj, "stages.curate.strip_html", after=1.0)
    _assert_one_line(proc, "strip_html")
    assert _digests(proj / "data" / "stripped") == committed["stripped"]
    assert _digests(proj / "data" / "rejects") == rejects_before
    assert _leftovers(proj) == []
