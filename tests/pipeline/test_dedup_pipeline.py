"""Near-duplicates through real `dvc repro`: planted copies are found and kept on one side, the
counts show in `dvc metrics diff`, drop mode rejects all but one per cluster, and the knobs rerun
only what they should (dedup.mode reruns split, not dedup)."""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, run

sys.path.insert(0, str(REPO / "bench"))
from plant_duplicates import check, plant  # noqa: E402

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _set(project: Path, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = params
    for p in parents:
        node = node[p]
    node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _digests(project: Path) -> dict[str, str]:
    return {str(p.relative_to(project)): hashlib.md5(p.read_bytes()).hexdigest()
            for d in ("data/dedup", "data/split") for p in sorted((project / d).glob("*.parquet"))}


@pytest.mark.slow
def test_planted_duplicates_are_found_kept_together_and_counted(project: Path) -> None:
    run(["dvc", "repro", "split"], project)
    run(GIT + ["add", "-A"], project)
    run(GIT + ["commit", "-qm", "sample"], project)

    planted = plant(project / "data" / "sample", project / "data" / "planted", 12, seed=3)
    _set(project, "ingest.source", "data/planted")
    run(["dvc", "repro", "split"], project)
    found = check(project / "data" / "planted" / "planted.json", project)
    assert found["planted"] == found["both_validated"] == found["same_cluster"] == len(planted) == 12
    assert found["straddling"] == 0 and found["both_in_split"] > 0

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    dedup = diff["metrics/audit/dedup.json"]
    assert dedup["clusters"]["old"] == 0 and dedup["clusters"]["new"] >= 12
    assert dedup["questions_in_clusters"]["diff"] >= 24
    assert "moved_questions" in json.loads((project / "metrics" / "audit" / "split.json").read_text())
    quality = json.loads((project / "metrics" / "quality" / "split.json").read_text())
    assert any(r["name"].startswith("cluster_sides") and r["success"] for r in quality["results"])

    # The same bytes for another worker count and batch size (dvc does not rerun for runtime settings: forced).
    before = _digests(project)
    _set(project, "runtime", {"workers": 1, "batch_rows": 7, "executor": "local", "gx_preload": False})
    for stage in ("dedup", "split"):
        run(["dvc", "repro", "--force", "--single-item", stage], project)
    assert _digests(project) == before

    run(GIT + ["add", "-A"], project)
    run(GIT + ["commit", "-qm", "planted"], project)
    _set(project, "dedup.mode", "drop")
    dropped = run(["dvc", "repro", "split"], project)
    assert _ran(dropped.stdout) == ["split"]                 # dedup does not read dedup.mode
    audit = json.loads((project / "metrics" / "audit" / "split.json").read_text())
    assert audit["rows_in"] == audit["rows_out"] + audit["rejected"]
    assert audit["questions_removed"]["near_duplicate"] >= found["both_in_split"]
    rej = pq.read_table(project / "data" / "rejects" / "split.parquet").to_pandas()
    near = rej[rej["reason"] == "near_duplicate"]
    assert len(near) and near["detail"].str.contains(r"kept question \d+ \(jaccard [01]\.\d{3}\)").all()
    kept = set()
    for s in ("train", "val", "test"):
        kept |= set(pq.read_table(project / "data" / "split" / f"{s}.parquet", columns=["question_id"])
                    .column(0).to_pylist())
    assert not any(a in kept and b in kept for a, b in planted)     # one question per planted pair left
