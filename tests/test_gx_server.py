"""The GX preloader (stages/gx_server.py): a validation run there gives exactly what it gives
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

from stages import common, gx_server, quality
from stages.common import StageError, load_params
from test_quality import write_raw

REPO = Path(__file__).resolve().parents[1]


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
        run = gx_server.validate if how == "server" else quality.validate_stage
        try:
            run("ingest", {"data/raw": tmp_out}, params)
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
    monkeypatch.setattr(gx_server, "_code_key", lambda root, code_dir=None: "no-such-server-test")
    monkeypatch.setattr(gx_server, "start", lambda root=None: None)
    monkeypatch.setattr(gx_server, "START_GRACE", 0.3)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 6])
    with pytest.raises(gx_server.ServerUnavailable):
        gx_server.validate("ingest", {"data/raw": tmp_out}, params)
    # The stage's gate falls back to validating in its own process, and still fails the bad data.
    with pytest.raises(StageError, match="expect_column_values_to_be_unique on questions.id"):
        common.run_checks("ingest", {"data/raw": tmp_out}, params)
    assert "GX server unavailable" in capsys.readouterr().err


def test_server_is_keyed_by_project_and_code(tmp_path):
    code = tmp_path / "stages"
    shutil.copytree(gx_server.CODE_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    key = gx_server._code_key(tmp_path / "a", code)
    assert gx_server._code_key(tmp_path / "a", code) == key
    assert gx_server._code_key(tmp_path / "b", code) != key          # another project
    quality_py = code / "quality.py"
    quality_py.write_text(quality_py.read_text(encoding="utf-8") + "\n# an edited suite\n", encoding="utf-8")
    assert gx_server._code_key(tmp_path / "a", code) != key          # edited code: a new server


def test_server_exits_when_idle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOQA_GX_SERVER_IDLE", "1")
    sock = gx_server.socket_path(tmp_path)
    gx_server.start(tmp_path)
    assert _wait(lambda: gx_server._server_running(sock), 10), "server did not start"
    assert _wait(lambda: sock.exists(), 60), "server never listened"
    # Idle for a second: it exits, removing its socket and releasing its lock.
    assert _wait(lambda: not gx_server._server_running(sock), 30)
    assert not sock.exists()


def test_disabled_server_validates_in_process(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOQA_GX_SERVER", "0")
    monkeypatch.setattr(gx_server, "validate", lambda *a, **k: pytest.fail("the server was asked"))
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 7])
    common.run_checks("ingest", {"data/raw": tmp_out}, params)
    assert json.loads(Path("metrics/quality/ingest.json").read_text(encoding="utf-8"))["success"]
    assert os.environ["SOQA_GX_SERVER"] == "0"


def test_killed_server_cleans_up_and_a_new_one_serves(tmp_path, monkeypatch, params):
    import psutil

    monkeypatch.chdir(tmp_path)
    sock = gx_server.socket_path(tmp_path)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 7])
    gx_server.validate("ingest", {"data/raw": tmp_out}, params)      # starts one and uses it
    found = [p for p in psutil.process_iter(["cmdline", "ppid"]) if str(sock) in (p.info["cmdline"] or [])]
    # The server's forked validation child carries its command line too, and may still be exiting.
    servers = [p for p in found if p.info["ppid"] not in {q.pid for q in found}]
    assert len(servers) == 1, found
    servers[0].terminate()
    assert servers[0].wait(10) == 0
    assert not sock.exists() and not gx_server._server_running(sock)
    Path("metrics/quality/ingest.json").unlink()
    gx_server.validate("ingest", {"data/raw": tmp_out}, params)      # a fresh server answers
    assert json.loads(Path("metrics/quality/ingest.json").read_text(encoding="utf-8"))["success"]


def test_gx_import_defers_modules_no_gate_needs_and_they_still_work(tmp_path):
    """scipy.stats and altair (1 s of GX's import) stand deferred through a whole validation, and
    whoever does use them gets the real modules, also through a name imported before."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from pathlib import Path
from stages import quality
from stages.common import load_params
from test_quality import write_raw

quality._gx()
from scipy import stats          # bound to the stand-in, as GX's own modules are
import altair
assert all(type(sys.modules[n]) is quality._DeferredModule for n in quality.DEFERRED_IMPORTS)
write_raw(Path("data/.raw.tmp-1"), [5, 6, 7])
quality.validate_stage("ingest", {{"data/raw": Path("data/.raw.tmp-1")}}, load_params({str(REPO / 'params.yaml')!r}))
assert all(type(sys.modules[n]) is quality._DeferredModule for n in quality.DEFERRED_IMPORTS), "a gate used one"
assert abs(stats.norm.cdf(0.0) - 0.5) < 1e-12
assert type(sys.modules["scipy.stats"]) is not quality._DeferredModule
assert sys.modules["scipy"].stats is sys.modules["scipy.stats"]
assert altair.Chart.__name__ == "Chart" and type(sys.modules["altair"]) is not quality._DeferredModule
from scipy.stats import norm
assert norm is stats.norm
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
