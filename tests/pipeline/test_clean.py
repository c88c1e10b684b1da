"""`make clean` removes what the pipeline and the tests generate, and nothing a user committed or
the DVC cache, which `make repro` restores outputs from."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run

GENERATED = ["data/raw", "data/stripped", "data/utf8", "data/dedup", "data/filtered", "data/top2", "data/split", "data/shards",
             "data/rejects/ingest.parquet", "gx/uncommitted/failures/x.html", "reports/index.html", "dvc_plots/index.html",
             "models/.checkpoints/step-1/x", "stages/core/__pycache__/x.pyc", ".hypothesis/x"]


@pytest.mark.slow
def test_make_clean_removes_generated_files_only(project: Path):
    run(["dvc", "repro", "shard"], project)
    for rel in GENERATED:
        p = project / rel
        if not p.exists():                      # what this repro did not make: made here, as tests would
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x")
    run(["make", "clean"], project)
    assert [rel for rel in GENERATED if (project / rel).exists()] == []
    status = run(["git", "status", "--porcelain", "--untracked-files=no"], project).stdout.splitlines()
    assert [line for line in status if "D" in line[:2]] == []          # no committed file removed
    assert any((project / ".dvc" / "cache").rglob("*")), "the DVC cache stays"
    assert (project / "data" / "sample" / "Questions.csv").exists()
