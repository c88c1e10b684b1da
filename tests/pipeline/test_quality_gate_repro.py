"""A corrupted input stops `dvc repro` at the stage whose quality gate it fails: one clear message,
nothing of that stage committed, nothing after it run."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run
from stages.core.params import load_params
from stages.core.schemas import PAIR_SCHEMA


@pytest.mark.slow
def test_corrupted_input_stops_dvc_repro_at_that_stage(project: Path):
    from stages.curate.split import assign

    run(["dvc", "repro", "top_answers"], project)
    # Corrupt split's input the way a bad join would: every pair carries the same title, so title
    # grouping puts every question in one group, on one side: a title that side is test for.
    path = project / "data" / "top2" / "pairs.parquet"
    df = pq.read_table(path).to_pandas()
    sp = load_params(project / "params.yaml")["split"]
    qid = int(df["question_id"].min())
    df["title"] = next(t for t in (f"How do I join two tables ({i})?" for i in range(1000))
                       if assign(qid, t, int(sp["seed"]), float(sp["test_fraction"]), float(sp["val_fraction"])) == "test")
    pq.write_table(pa.Table.from_pandas(df, schema=PAIR_SCHEMA, preserve_index=False), path)
    run(["dvc", "commit", "-f", "top_answers"], project)   # the corrupted data is top_answers' output now

    proc = run(["dvc", "repro", "report"], project, check=False)   # the data stages and the report
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "quality gate failed in stage split: expect_column_mean_to_be_between on split_questions.is" in out
    assert "Report: gx/uncommitted/failures/split.html" in out
    assert (project / "gx/uncommitted/failures/split.html").exists()
    # Nothing of the failed stage was committed, and nothing after it ran.
    assert not (project / "data" / "split").exists()
    assert not (project / "metrics" / "quality" / "split.json").exists()
    assert not (project / "data" / "shards").exists()
    lock = (project / "dvc.lock").read_text(encoding="utf-8")
    assert "top_answers:" in lock and "\n  split:" not in lock
    assert json.loads((project / "metrics/quality/top_answers.json").read_text())["success"]
