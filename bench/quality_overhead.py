#!/usr/bin/env python3
"""What the quality gates cost each data stage: GX start-up, validation time, peak memory.

Each stage's suite (`STAGE.suite` of stages/curate/<name>) runs in its own fresh process over the
stage's committed output folder (`STAGE.writes`) in a project that `dvc repro` has already built
(so the figures are what a stage pays on top of its own work): GX imported as the gate imports it
(`stages.core.gx_import.import_gx`: import + ephemeral context), then
`stages.core.gate.run_suite` with the params the stage may read, all in that one process (row
checks included: the reference path, no GX preloader, no worker pool).

    python bench/quality_overhead.py /path/to/built/project      # prints a table, --json for JSON
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "strip_html", "validate_utf", "filter_upvotes", "top_answers", "split", "shard"]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import importlib
from pathlib import Path
from stages.core.gate import run_suite
from stages.core.gx_import import import_gx
from stages.core.params import load_params
from stages.core.runner import declared
STAGE = importlib.import_module(f"stages.curate.{sys.argv[2]}").STAGE
stage = STAGE.name
params = declared(load_params(), STAGE.params)   # only what the stage may read, as the runner gives it
t1 = time.perf_counter()
import_gx()                        # import GX and build the ephemeral context, as a stage's gate does
t2 = time.perf_counter()
report = run_suite(STAGE, params, Path(STAGE.writes))
t3 = time.perf_counter()
print(json.dumps({"stage": stage, "output": STAGE.writes, "gx_startup_s": round(t2 - t1, 3),
                  "validate_s": round(t3 - t2, 3),
                  "total_s": round(t3 - t1, 3), "expectations": report["evaluated"],
                  "passed": report["successful"], "rows_checked": sum(report["rows_checked"].values()),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def measure(project: Path, stage: str) -> dict:
    env = dict(os.environ, GX_ANALYTICS_ENABLED="False")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), stage], cwd=project,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measuring {stage} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a project folder where `dvc repro` has built data/")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(args.project.resolve(), s) for s in STAGES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["stage", "gx_startup_s", "validate_s", "total_s", "expectations", "passed", "rows_checked", "peak_rss_mb"]
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>14}" for c in cols))
    n = len(rows)
    print(f"mean per stage: GX start-up {sum(r['gx_startup_s'] for r in rows) / n:.2f} s, "
          f"validation {sum(r['validate_s'] for r in rows) / n:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
