"""The stage contract: a toy stage declares only what it reads, writes and decides; the runner
gives it counting, the quality gate and the atomic commit without code of its own."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core import runner
from stages.core.errors import StageError
from stages.core.schemas import QUESTION_SCHEMA

TOY = '''
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.gate import Check, Suite
from stages.core.ledger import Result
from stages.core.runner import MapStage, TableStage
from stages.core.schemas import rejects, to_frame


def transform(table, batch, min_score):
    low = pc.less(batch.column("score"), min_score)
    kept = batch.filter(pc.invert(low))
    {lose}
    ids = batch.filter(low).column("id").to_pylist()
    return Result(kept=kept, rejected=rejects(table, ids, ["too_low"] * len(ids)))


def checks(params):
    return [Check("questions", "keys", "ExpectColumnValuesToBeBetween",
                  {{"column": "score", "min_value": {check_min}}}, "the toy's promise")]


def frames(out, params):
    yield "questions", "keys", to_frame(pq.read_table(out / "questions.parquet", columns=["id", "score"]))


STAGE = MapStage(name="toy", module="{module}", reads=("data/in",), writes="data/out",
                 params=("toy.min_score",), options=lambda p: p["toy"]["min_score"],
                 tables=("questions",), transform=transform,
                 suite=Suite(checks=checks, frames=frames, ids={{"questions": ["id"]}}))


def build(ctx):
    sink = ctx.sink("questions.parquet", pq.read_schema("data/in/questions.parquet"))
    for b in pq.ParquetFile("data/in/questions.parquet").iter_batches(batch_size=3):
        sink.write(b)
        yield "questions", Result(kept=b)


WHOLE = TableStage(name="toy", module="{module}", reads=("data/in",), writes="data/out", params=(),
                   counts_in=(("questions", "data/in/questions.parquet"),), build=build,
                   suite=Suite(checks=lambda p: [], ids={{}}))
'''


def _toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, lose: str = "", check_min: int = 2):
    """A project folder with 40 questions (scores 0..39) in data/in and the toy stage module `name`."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / f"{name}.py").write_text(TOY.format(module=name, lose=lose, check_min=check_min))
    monkeypatch.syspath_prepend(str(code))
    proj = tmp_path / "proj"
    (proj / "data" / "in").mkdir(parents=True)
    n = 40
    table = pa.table({"id": list(range(1, n + 1)), "owner_user_id": [None] * n,
                      "creation_date": pa.nulls(n, pa.timestamp("s", tz="UTC")), "score": list(range(n)),
                      "title": [f"t{i}" for i in range(n)], "body": [f"b{i}" for i in range(n)]}, schema=QUESTION_SCHEMA)
    # Four row groups: the executor hands out four jobs.
    pq.write_table(table, proj / "data" / "in" / "questions.parquet", row_group_size=10)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("SOQA_GX_SERVER", "0")
    __import__(name)
    return sys.modules[name]


PARAMS = {"toy": {"min_score": 2}, "unrelated": {"x": 1}}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_toy_stage_gets_counting_the_gate_and_the_commit(tmp_path, monkeypatch, workers):
    toy = _toy(tmp_path, monkeypatch, f"toy_ok_{workers}")
    summary = runner.execute(toy.STAGE, PARAMS | {"runtime": {"workers": workers}})
    assert (summary["rows_in"], summary["rows_out"], summary["rejected"]) == (40, 38, 2)
    assert summary["rejected_by_reason"] == {"too_low": 2}
    out = pq.read_table("data/out/questions.parquet")
    assert out.column("id").to_pylist() == list(range(3, 41))          # input order, whatever the workers
    rej = pq.read_table("data/rejects/toy.parquet").to_pylist()
    assert [(r["stage"], r["id"], r["reason"]) for r in rej] == [("toy", 1, "too_low"), ("toy", 2, "too_low")]
    audit = json.loads(Path("metrics/audit/toy.json").read_text())
    assert audit["tables"] == {"questions": {"rows_in": 40, "rows_out": 38, "rejected": 2}}
    quality = json.loads(Path("metrics/quality/toy.json").read_text())
    assert quality["success"] and quality["evaluated"] == 1
    assert sorted(p.name for p in Path("data").iterdir()) == ["in", "out", "rejects"]    # no temporaries left


def test_a_failing_gate_commits_nothing(tmp_path, monkeypatch):
    toy = _toy(tmp_path, monkeypatch, "toy_gate", check_min=5)
    with pytest.raises(StageError, match=r"quality gate failed in stage toy: .*the toy's promise: 3 of 38 rows failed, "
                                         r"e\.g\. id 3, 4, 5"):
        runner.execute(toy.STAGE, PARAMS)
    assert not Path("data/out").exists() and not Path("data/rejects/toy.parquet").exists()
    assert not Path("metrics/audit/toy.json").exists() and not Path("metrics/quality/toy.json").exists()
    assert [p.name for p in Path("data").iterdir() if p.name.startswith(".")] == []


def test_rows_a_transform_loses_stop_the_stage(tmp_path, monkeypatch):
    toy = _toy(tmp_path, monkeypatch, "toy_lose", lose="kept = kept.slice(1)")
    with pytest.raises(StageError, match=r"stage toy: rows lost in table questions: rows_in 40 != rows_out 34 \+ "
                                         r"rejected 2"):
        runner.execute(toy.STAGE, PARAMS)
    assert not Path("data/out").exists() and not Path("metrics/audit/toy.json").exists()


def test_a_stage_sees_only_the_params_it_declares(tmp_path, monkeypatch):
    toy = _toy(tmp_path, monkeypatch, "toy_params")
    assert runner.declared(PARAMS, toy.STAGE.params) == {"toy": {"min_score": 2}}
    with pytest.raises(StageError, match="params.yaml: missing key toy.min_score"):
        runner.execute(toy.STAGE, {"unrelated": {"x": 1}})


def test_the_whole_table_form_is_counted_from_its_input_files(tmp_path, monkeypatch):
    toy = _toy(tmp_path, monkeypatch, "toy_whole")
    summary = runner.execute(toy.WHOLE, {})
    assert (summary["rows_in"], summary["rows_out"], summary["rejected"]) == (40, 40, 0)
    assert pq.read_table("data/out/questions.parquet").num_rows == 40


def test_runtime_settings_are_checked_before_any_work(tmp_path, monkeypatch):
    toy = _toy(tmp_path, monkeypatch, "toy_runtime")
    with pytest.raises(StageError, match=r"runtime.workers must be a whole number >= 1, got 0"):
        runner.execute(toy.STAGE, PARAMS | {"runtime": {"workers": 0}})
    with pytest.raises(StageError, match=r"unknown runtime settings \['wrokers'\]"):
        runner.execute(toy.STAGE, PARAMS | {"runtime": {"wrokers": 2}})
    assert not Path("data/out").exists()


def test_the_toy_module_is_written_against_the_contract_only():
    """The toy holds a transform, its params, its checks: no counting, no sink, no commit."""
    body = textwrap.dedent(TOY)
    for mechanic in ("count_in", "count_out", "Ledger", "ParquetSink(", "commit_path", "atomic_path", "validate("):
        assert mechanic not in body
