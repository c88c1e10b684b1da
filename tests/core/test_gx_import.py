"""GX's import (stages/core/gx_import.py): modules no gate needs stay deferred through a whole validation,
and whoever does use them gets the real modules."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gx_import_defers_modules_no_gate_needs_and_they_still_work(tmp_path):
    """scipy.stats and altair (1 s of GX's import) stand deferred through a whole validation, and
    whoever does use them gets the real modules, also through a name imported before."""
    code = f"""
import sys
sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO / 'tests' / 'core')!r}]
from pathlib import Path
from stages.core import gate
from stages.core.gx_import import DEFERRED_IMPORTS, DeferredModule, import_gx
from stages.core.params import load_params
from stages.curate import ingest
from test_gate import write_raw

import_gx()
from scipy import stats          # bound to the stand-in, as GX's own modules are
import altair
assert all(type(sys.modules[n]) is DeferredModule for n in DEFERRED_IMPORTS)
write_raw(Path("data/.raw.tmp-1"), [5, 6, 7])
gate.validate(ingest.STAGE, load_params({str(REPO / 'params.yaml')!r}), Path("data/.raw.tmp-1"))
assert all(type(sys.modules[n]) is DeferredModule for n in DEFERRED_IMPORTS), "a gate used one"
assert abs(stats.norm.cdf(0.0) - 0.5) < 1e-12
assert type(sys.modules["scipy.stats"]) is not DeferredModule
assert sys.modules["scipy"].stats is sys.modules["scipy.stats"]
assert altair.Chart.__name__ == "Chart" and type(sys.modules["altair"]) is not DeferredModule
from scipy.stats import norm
assert norm is stats.norm
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
