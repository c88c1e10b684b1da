"""`soqa funnel`: the table names its units (posts, then question-answer pairs) and shows a stage
whose audit is missing (a failed experiment deleted it) instead of leaving it out."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import run
from stages.app.funnel import DATA_STAGES


def _audit(stage: str, rows_in: int, rows_out: int, tables: tuple[str, ...], **extra) -> dict:
    return {"stage": stage, "rows_in": rows_in, "rows_out": rows_out, "rejected": rows_in - rows_out,
            "rejected_by_reason": {"some_reason": rows_in - rows_out} if rows_in > rows_out else {},
            "repaired_by_kind": {}, "tables": {t: {} for t in tables}, **extra}


SAMPLE = {
    "ingest": _audit("ingest", 201, 201, ("questions", "answers")),
    "strip_html": _audit("strip_html", 201, 201, ("questions", "answers")),
    "validate_utf": _audit("validate_utf", 201, 201, ("questions", "answers")),
    "filter_upvotes": _audit("filter_upvotes", 201, 175, ("questions", "answers")),
    "top_answers": _audit("top_answers", 175, 85, ("questions", "answers"), pairs=54),
    "split": _audit("split", 54, 54, ("pairs",)),
    "shard": _audit("shard", 39, 39, ("pairs",)),
}


def _write(root: Path, stages: list[str]) -> Path:
    audit = root / "metrics" / "audit"
    audit.mkdir(parents=True)
    for s in stages:
        (audit / f"{s}.json").write_text(json.dumps(SAMPLE[s]))
    return root


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] in DATA_STAGES:
            rows[cells[0]] = cells
    return rows


def test_funnel_names_its_units(tmp_path: Path):
    proc = run(["soqa", "funnel"], _write(tmp_path, DATA_STAGES))
    rows = _rows(proc.stdout)
    assert list(rows) == DATA_STAGES
    assert [rows[s][1] for s in DATA_STAGES] == ["posts"] * 5 + ["pairs"] * 2
    assert rows["top_answers"][3] == "85 (54 pairs)" and rows["split"][2] == "54"
    assert "rows: posts (questions + answers) up to top_answers, which joins them into 54 question-answer pairs" \
        in proc.stdout


def test_a_missing_audit_is_shown_and_fails(tmp_path: Path):
    proc = run(["soqa", "funnel"], _write(tmp_path, DATA_STAGES[1:]), check=False)
    assert proc.returncode == 1
    rows = _rows(proc.stdout)
    assert list(rows) == DATA_STAGES                       # ingest is there, not left out
    assert rows["ingest"][2] == "audit missing" and "metrics/audit/ingest.json" in rows["ingest"][6]
    assert "audit missing for ingest" in proc.stderr and "git checkout params.yaml && dvc repro" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_audit_at_all_says_run_dvc_repro(tmp_path: Path):
    proc = run(["soqa", "funnel"], tmp_path, check=False)
    assert proc.returncode == 1 and "run `dvc repro` first" in proc.stderr
