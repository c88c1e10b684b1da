"""The data half of the pipeline under real DVC, in a throw-away copy of the project."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import run

# In the order dvc runs them (dedup reads validate_utf's output, beside filter_upvotes).
DATA_STAGES = ["ingest", "strip_html", "validate_utf", "filter_upvotes", "dedup", "top_answers", "split", "shard"]


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.mark.slow
def test_repro_noop_and_partial_rerun(project: Path) -> None:
    first = run(["dvc", "repro", "shard"], project)
    assert _ran(first.stdout) == DATA_STAGES
    # Every stage's audit balances, and the funnel is printed per stage.
    for stage in DATA_STAGES:
        audit = json.loads((project / "metrics" / "audit" / f"{stage}.json").read_text())
        assert audit["rows_in"] == audit["rows_out"] + audit["rejected"], stage
        assert (project / "data" / "rejects" / f"{stage}.parquet").exists()
    assert "filter_upvotes: 201 in → 175 out" in first.stderr

    # Shards hold the train split, nothing else.
    train = pq.read_table(project / "data" / "split" / "train.parquet")
    shard_rows = sum(pq.read_metadata(p).num_rows for p in (project / "data" / "shards").glob("*.parquet"))
    assert shard_rows == train.num_rows > 0

    second = run(["dvc", "repro", "shard"], project)
    assert _ran(second.stdout) == []

    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], project)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first run"], project)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["filter"]["min_score"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro", "shard"], project)
    # A min_score change reruns what is after the filter, and not dedup (it reads the unfiltered questions).
    assert _ran(third.stdout) == [s for s in DATA_STAGES[DATA_STAGES.index("filter_upvotes"):] if s != "dedup"]

    diff = run(["dvc", "metrics", "diff", "--json"], project)
    changes = json.loads(diff.stdout)
    filt = changes["metrics/audit/filter_upvotes.json"]
    assert filt["rows_out"]["old"] == 175 and filt["rows_out"]["new"] < 175
    assert filt["min_score"] == {"old": 2, "new": 5, "diff": 3}


@pytest.mark.slow
def test_failed_stage_writes_nothing(project: Path) -> None:
    # A dump whose layout is recognised but which breaks off mid-file: the stage fails after work began.
    (project / "Posts.xml").write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
                                       '  <row Id="1" PostTypeId="1" Score="3" Title="t" Body="&lt;p&gt;b&lt;/p&gt;" '
                                       'CreationDate="2008-08-01T13:57:07.123" />\n  <row Id="2" PostTy')
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["source"] = "Posts.xml"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro", "ingest"], project, check=False)
    assert proc.returncode != 0
    assert "ingest: Posts.xml:" in proc.stderr
    assert not (project / "data" / "raw").exists()
    assert not (project / "metrics" / "audit" / "ingest.json").exists()
    assert not [p for p in (project / "data").rglob("*") if ".tmp-" in p.name]
