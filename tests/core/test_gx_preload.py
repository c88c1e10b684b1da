"""The GX preloader (stages/core/gx_preload.py): a validation run there gives exactly what it gives
in-process, a broken or absent server never skips the gate, and servers are per project and code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.core import gate, gx_preload, runner
from stages.core.errors import StageError
from stages.core.params import Runtime, load_params
from stages.curate import ingest
from test_gate import write_raw

REPO = Path(__file__).resolve().parents[2]
MODULE = ingest.STAGE.module


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO / "params.yaml")


def _wait(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _quality_files(root: Path) -> dict[str, object]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.parts[len(root.parts)] in ("metrics", "gx"):
            text = p.read_text(encoding="utf-8")
            out[str(p.relative_to(root))] = json.loads(text) if p.suffix == ".json" else text
    return out


@pytest.mark.parametrize("question_ids,passes", [([5, 6, 7], True), ([5, 6, 6, 7, 7], False)])
def test_server_validates_exactly_as_in_process(tmp_path, monkeypatch, params, question_ids, passes):
    results = {}
    for how in ("server", "in_process"):
        root = tmp_path / how
        root.mkdir()
        monkeypatch.chdir(root)
        tmp_out = Path("data/.raw.tmp-1")
        write_raw(tmp_out, question_ids)
        try:
            if how == "server":
                gx_preload.validate(MODULE, params, tmp_out, 1)
            else:
                gate.validate(ingest.STAGE, params, tmp_out)
            message = None
        except StageError as exc:
            message = str(exc)
        results[how] = (message, _quality_files(root))
    assert results["server"] == results["in_process"]
    message, files = results["server"]
    assert (message is None) == passes
    if passes:
        assert files["metrics/quality/ingest.json"]["success"]
    else:
        assert message.startswith("quality gate failed in stage ingest: expect_column_values_to_be_unique")
        assert "metrics/quality/ingest.json" not in files and "gx/uncommitted/failures/ingest.json" in files


def test_a_server_that_cannot_start_never_skips_the_gate(tmp_path, monkeypatch, params, capsys):
    monkeypatch.chdir(tmp_path)
    # A different code key than any real server's, a start that does nothing, a short grace.
    monkeypatch.setattr(gx_preload, "_code_key", lambda root, code_dir=None: "no-such-server-test")
    monkeypatch.setattr(gx_preload, "start", lambda root=None: None)
    monkeypatch.setattr(gx_preload, "START_GRACE", 0.3)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 6])
    with pytest.raises(gx_preload.ServerUnavailable):
        gx_preload.validate(MODULE, params, tmp_out, 1)
    # The stage's gate falls back to validating in its own process, and still fails the bad data.
    with pytest.raises(StageError, match="expect_column_values_to_be_unique on questions.id"):
        runner.run_gate(ingest.STAGE, params, tmp_out, Runtime(workers=1))
    assert "GX preloader unavailable" in capsys.readouterr().err


def test_server_is_keyed_by_project_and_code(tmp_path):
    code = tmp_path / "stages"
    shutil.copytree(gx_preload.CODE_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    key = gx_preload._code_key(tmp_path / "a", code)
    assert gx_preload._code_key(tmp_path / "a", code) == key
    assert gx_preload._code_key(tmp_path / "b", code) != key          # another project
    suite_py = code / "curate" / "ingest.py"
    suite_py.write_text(suite_py.read_text(encoding="utf-8") + "\n# an edited suite\n", encoding="utf-8")
    assert gx_preload._code_key(tmp_path / "a", code) != key          # edited code: a new server


def test_server_exits_when_idle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOQA_GX_SERVER_IDLE", "1")
    sock = gx_preload.socket_path(tmp_path)
    gx_preload.start(tmp_path)
    assert _wait(lambda: gx_preload._server_running(sock), 10), "server did not start"
    assert _wait(lambda: sock.exists(), 60), "server never listened"
    # Idle for a second: it exits, removing its socket and releasing its lock.
    assert _wait(lambda: not gx_preload._server_running(sock), 30)
    assert not sock.exists()


def test_disabled_server_validates_in_process(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOQA_GX_SERVER", "0")
    monkeypatch.setattr(gx_preload, "validate", lambda *a, **k: pytest.fail("the server was asked"))
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 7])
    runner.run_gate(ingest.STAGE, params, tmp_out, Runtime(workers=1))
    assert json.loads(Path("metrics/quality/ingest.json").read_text(encoding="utf-8"))["success"]
    assert os.environ["SOQA_GX_SERVER"] == "0"


def test_killed_server_cleans_up_and_a_new_one_serves(tmp_path, monkeypatch, params):
    import psutil

    monkeypatch.chdir(tmp_path)
    sock = gx_preload.socket_path(tmp_path)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 7])
    gx_preload.validate(MODULE, params, tmp_out, 1)      # starts one and uses it
    found = [p for p in psutil.process_iter(["cmdline", "ppid"]) if str(sock) in (p.info["cmdline"] or [])]
    # The server's forked validation child carries its command line too, and may still be exiting.
    servers = [p for p in found if p.info["ppid"] not in {q.pid for q in found}]
    assert len(servers) == 1, found
    servers[0].terminate()
    assert servers[0].wait(10) == 0
    assert not sock.exists() and not gx_preload._server_running(sock)
    Path("metrics/quality/ingest.json").unlink()
    gx_preload.validate(MODULE, params, tmp_out, 1)      # a fresh server answers
    assert json.loads(Path("metrics/quality/ingest.json").read_text(encoding="utf-8"))["success"]
