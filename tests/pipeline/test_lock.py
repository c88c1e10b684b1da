"""The committed dvc.lock matches the committed code, sample and params.

A change to stages/**/*.py or params.yaml without `dvc repro` and a commit of dvc.lock would leave
`dvc status` reporting stale stages on every fresh clone, and `dvc metrics diff` comparing figures
the code at that commit did not produce.
"""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def _tracked_by_git() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def stale_deps(status: dict, tracked: set[str]) -> list[str]:
    """'stage: path' for every git-tracked dependency (code, sample, params) that dvc.lock records differently.

    DVC lists changed params under "changed deps" too, keyed by the params file. Dependencies that are
    other stages' outputs are not in git; on a fresh clone they are missing, which
    says nothing about the lock.
    """
    stale = []
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for path, change in entry.get("changed deps", {}).items():
                if path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked):
                    stale.append(f"{stage}: {path} {change}")
    return sorted(stale)


def test_stale_deps_finds_modified_code_and_params() -> None:
    status = {
        "split": [{"changed deps": {"stages/curate/split.py": "modified", "data/top2": "deleted"}},
                  {"changed outs": {"data/split": "not in cache"}}],
        "filter_upvotes": [{"changed deps": {"params.yaml": {"filter.min_score": "modified"}}}],
        "ingest": [{"changed deps": {"data/sample": "modified"}}],
        "shard": ["always changed"],
    }
    tracked = {"stages/curate/split.py", "params.yaml", "data/sample/Questions.csv"}
    assert stale_deps(status, tracked) == [
        "filter_upvotes: params.yaml {'filter.min_score': 'modified'}",
        "ingest: data/sample modified",
        "split: stages/curate/split.py modified",
    ]


def test_committed_lock_matches_the_code() -> None:
    run = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    stale = stale_deps(json.loads(run.stdout or "{}"), _tracked_by_git())
    assert not stale, ("dvc.lock is stale (run `make repro` and commit dvc.lock with the code):\n  "
                       + "\n  ".join(stale))
