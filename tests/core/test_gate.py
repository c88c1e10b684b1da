"""The quality gate (stages/core/gate.py): every expectation says why, `mostly` is judged over the whole
table, row checks on workers report what one process reports, and a failing suite raises one message
and writes no metrics. Each stage's own suite cases are in tests/curate/test_<stage>.py."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gate_cases import answers, failed, questions, suite_params
from stages.core import gate
from stages.core.errors import StageError
from stages.core.executors import ProcessPool
from stages.core.schemas import ANSWER_SCHEMA, QUESTION_SCHEMA
from stages.curate import filter_upvotes, ingest, shard, split, strip_html, top_answers, validate_utf
from stages.curate.validate_utf import text_frame

STAGES = [ingest.STAGE, strip_html.STAGE, validate_utf.STAGE, filter_upvotes.STAGE, top_answers.STAGE, split.STAGE,
          shard.STAGE]
BY_NAME = {s.name: s for s in STAGES}


@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


def utf_frames(q_bodies: list[str], a_bodies: list[str]) -> list:
    return [("questions", "rows", text_frame(questions(q_bodies))), ("answers", "rows", text_frame(answers(a_bodies)))]


def test_every_expectation_says_why(params):
    assert len(STAGES) == 7
    for stage in STAGES:
        checks = stage.suite.checks(params)
        assert checks, stage.name
        for c in checks:
            assert len(c.why) > 20, c


def test_mostly_is_judged_over_all_batches(params):
    """Batches each under the mojibake allowance must not hide a table over it (and vice versa)."""
    suite = validate_utf.STAGE.suite
    clean = [f"row {i}" for i in range(999)]
    one_bad = utf_frames(["ok"], clean + ["donâ€™t"])          # 1 in 1000: within mostly=0.999
    assert gate.run_frames("validate_utf", suite, params, one_bad)["success"]
    # Two batches of 500 rows, one bad row each: each batch alone is over 0.1%, the table too.
    batches = [("questions", "rows", text_frame(questions(["ok"])))]
    for b in range(2):
        df = text_frame(answers(clean[:499] + ["cafÃ©"]))
        df["id"] = df["id"] + 1000 * b
        batches.append(("answers", "rows", df))
    report = gate.run_frames("validate_utf", suite, params, batches)
    check = failed(report)["answers.text: expect_column_values_to_not_match_regex"]
    assert check["element_count"] == 1000 and check["unexpected_count"] == 2


def _write_rows(path: Path, schema: pa.Schema, frame: pd.DataFrame, group_rows: int) -> None:
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path, row_group_size=group_rows)


def _run_on_workers(stage, params: dict, out: Path, workers: int) -> dict:
    pool = ProcessPool(workers)
    try:
        return gate.run_suite(stage, params, out, pool)
    finally:
        pool.close()


@pytest.mark.parametrize("stage", ["strip_html", "validate_utf"])
@pytest.mark.parametrize("workers", [2, 3])
def test_text_checks_on_workers_report_what_one_process_reports(tmp_path, params, stage, workers):
    """The gate's text checks run row group by row group on a pool: same counts, same first
    failing rows in file order, same verdicts (mostly judged on the whole table)."""
    stage_def = BY_NAME[stage]
    n = 120
    bodies = [f"answer {i} with `<div>` in code" for i in range(n)]
    for i in (3, 40, 41, 77, 118):                # failures spread over several row groups
        bodies[i] = f"left <b>bold</b> and &amp; {i}" if stage == "strip_html" else f"caf\u00c3\u00a9 \x01 {i}"
    q_bodies = [f"question {i}" for i in range(30)]
    q_bodies[25] = "<p>still html</p>" if stage == "strip_html" else "bad \ufffd"
    n_q = len(q_bodies)
    q = pd.DataFrame({"id": list(range(1, n_q + 1)), "owner_user_id": [None] * n_q, "creation_date": [None] * n_q,
                      "score": [1] * n_q, "title": [f"t{i}" for i in range(n_q)], "body": q_bodies})
    a = pd.DataFrame({"id": list(range(1001, 1001 + n)), "owner_user_id": [None] * n, "creation_date": [None] * n,
                      "parent_id": [1] * n, "score": [2] * n, "body": bodies})
    out = tmp_path / "out"
    out.mkdir()
    _write_rows(out / "questions.parquet", QUESTION_SCHEMA, q, 7)
    _write_rows(out / "answers.parquet", ANSWER_SCHEMA, a, 13)
    serial = gate.run_suite(stage_def, params, out)      # in this process
    assert not serial["success"] and serial["rows_checked"] == {"questions": n_q, "answers": n}
    assert _run_on_workers(stage_def, params, out, workers) == serial

    # An empty table is still checked (zero rows) and reported the same way.
    _write_rows(out / "questions.parquet", QUESTION_SCHEMA, q.iloc[:0], 7)
    assert _run_on_workers(stage_def, params, out, workers) == \
        gate.run_suite(stage_def, params, out)


# ----------------------------------------------------------------------------- the gate on files
def write_raw(folder: Path, question_ids: list[int]) -> None:
    folder.mkdir(parents=True)
    n = len(question_ids)
    q = pa.table({"id": question_ids, "owner_user_id": [None] * n, "creation_date": [None] * n,
                  "score": [1] * n, "title": ["t"] * n, "body": ["b"] * n}, schema=QUESTION_SCHEMA)
    a = pa.table({"id": [50], "owner_user_id": [None], "creation_date": [None], "parent_id": [question_ids[0]],
                  "score": [3], "body": ["x"]}, schema=ANSWER_SCHEMA)
    pq.write_table(q, folder / "questions.parquet")
    pq.write_table(a, folder / "answers.parquet")


def test_validate_stage_raises_one_message_and_writes_no_metrics(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 6, 7, 7])
    with pytest.raises(StageError) as err:
        gate.validate(ingest.STAGE, params, tmp_out)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("quality gate failed in stage ingest: expect_column_values_to_be_unique on questions.id")
    assert "4 of 5 rows failed, e.g. id 6, 6, 7, 7" in msg
    assert "Report: gx/uncommitted/failures/ingest.html" in msg
    assert not Path("metrics/quality/ingest.json").exists()
    page = Path("gx/uncommitted/failures/ingest.html").read_text(encoding="utf-8")
    assert "FAIL" in page and "questions.id" in page
    details = json.loads(Path("gx/uncommitted/failures/ingest.json").read_text(encoding="utf-8"))
    assert details["unsuccessful"] == 1


def test_validate_stage_writes_quality_metrics_when_all_pass(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 7])
    gate.validate(ingest.STAGE, params, tmp_out)
    m = json.loads(Path("metrics/quality/ingest.json").read_text(encoding="utf-8"))
    assert m["success"] and m["evaluated"] == m["successful"] > 10 and m["unsuccessful"] == 0
    assert m["rows_checked"] == {"questions": 3, "answers": 1}
    assert m["failed_rows"]["questions.id: expect_column_values_to_be_unique"] == 0
    assert "questions.id: expect_column_values_to_be_of_type" not in m["failed_rows"]   # a type has no rows
