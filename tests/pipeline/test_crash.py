"""Crashes: kill -9 every data stage part-way; the next `dvc repro` gives exactly a clean run's outputs.

One copy of the project runs `dvc repro` again and again; each time the test waits until the
next stage has started writing its (temporary) output and kills the whole process group with
SIGKILL: DVC, the stage and its worker processes. Stages that finished before stay done (DVC
recorded them); the killed one must leave nothing that a later run would take for its output.
A last, uninterrupted `dvc repro` must then record the same hashes in dvc.lock as a clean run on
the same corpus, and leave no temporary files behind.

The train stage gets the same treatment under `dvc repro --single-item train` (on test_train's small
project): killed after a few checkpoints, the rerun resumes from the last one and publishes the
same safetensors weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import env, run
from stages.app.funnel import DATA_STAGES
from test_determinism import clean_run, data_stage_outs, file_digests, project_on_corpus, reliability_base  # noqa: F401

# The folder each data stage writes; the runner writes it as a hidden sibling ".<name>.tmp-<pid>" first.
STAGE_OUT = {"ingest": "raw", "strip_html": "stripped", "validate_utf": "utf8", "filter_upvotes": "filtered",
             "top_answers": "top2", "split": "split", "shard": "shards"}


def _started_writing(proj: Path, stage: str) -> bool:
    """The stage's temporary output folder exists and holds a file: it is part-way through."""
    for tmp in (proj / "data").glob(f".{STAGE_OUT[stage]}.tmp-*"):
        if tmp.is_dir() and any(tmp.iterdir()):
            return True
    return False


def _locked_stages(proj: Path) -> set[str]:
    lock = proj / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def kill_repro_during(proj: Path, stage: str, timeout: float = 600) -> None:
    """Start `dvc repro`, SIGKILL its process group once `stage` has started writing its output."""
    proc = subprocess.Popen(["dvc", "repro", DATA_STAGES[-1]], cwd=proj, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _started_writing(proj, stage):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise AssertionError(f"{stage} was never seen writing (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_kill_each_data_stage_then_repro_matches_clean_run(reliability_base: Path) -> None:
    proj = project_on_corpus(reliability_base, "crashed")
    for i, stage in enumerate(DATA_STAGES):
        kill_repro_during(proj, stage)
        # Every stage before the killed one is recorded; the killed one is not, and its final
        # output was never put in place (DVC removed the old one before running it).
        assert _locked_stages(proj) & set(DATA_STAGES) == set(DATA_STAGES[:i]), stage
        assert not (proj / "data" / STAGE_OUT[stage]).exists(), f"{stage} left a final output after kill -9"

    finished = run(["dvc", "repro", DATA_STAGES[-1]], proj, timeout=1200)
    assert "Running stage 'shard'" in finished.stdout
    clean = clean_run(reliability_base, "clean-a")
    assert data_stage_outs(proj) == data_stage_outs(clean)
    assert file_digests(proj) == file_digests(clean)
    leftovers = [p.relative_to(proj).as_posix() for top in ("data", "metrics") for p in (proj / top).rglob("*")
                 if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == [], f"temporary files left after the resumed run: {leftovers}"
    status = run(["dvc", "status", DATA_STAGES[-1]], proj)
    assert "up to date" in status.stdout.lower(), status.stdout


@pytest.mark.slow
def test_kill_train_under_dvc_repro_then_resume_matches_uninterrupted(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 `dvc repro` in the middle of training; the next one resumes from the last checkpoint and
    publishes the same weights (safetensors, byte for byte) as an uninterrupted run."""
    from stages.model.train import complete_checkpoints
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "model"))    # tests/model: test_train
    from test_train import _stage_project   # synthetic shards, tiny model, checkpoints every 2 steps

    proj = _stage_project(tmp_path / "killed")
    ckpt = proj / "models" / ".checkpoints" / "qa-t5"
    proc = subprocess.Popen(["dvc", "repro", "--single-item", "train"], cwd=proj, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(int(p.name.split("-")[1]) >= 6 for p in complete_checkpoints(ckpt)):
            assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (proj / "models" / "qa-t5").exists() and "train" not in _locked_stages(proj)
    last = int(complete_checkpoints(ckpt)[-1].name.split("-")[1])

    resumed = run(["dvc", "repro", "--single-item", "train"], proj, timeout=900)
    assert "train: resuming from" in resumed.stdout
    metrics = json.loads((proj / "metrics" / "train.json").read_text())
    assert last <= metrics["resumed_from_step"] < metrics["steps"]
    assert "train" in _locked_stages(proj) and not ckpt.exists()

    fresh = _stage_project(tmp_path / "fresh")
    run(["dvc", "repro", "--single-item", "train"], fresh, timeout=900)
    model_files = sorted(p.name for p in (proj / "models" / "qa-t5").iterdir())
    assert "model.safetensors" in model_files
    assert not [n for n in model_files if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))], model_files
    same = (proj / "models" / "qa-t5" / "model.safetensors").read_bytes() == \
        (fresh / "models" / "qa-t5" / "model.safetensors").read_bytes()
    assert same, "resumed weights differ from an uninterrupted run's"
    uninterrupted = json.loads((fresh / "metrics" / "train.json").read_text())
    assert (metrics["train_loss"], metrics["val_loss"]) == (uninterrupted["train_loss"], uninterrupted["val_loss"])
