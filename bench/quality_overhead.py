#!/usr/bin/env python3
"""What the quality gates cost each data stage: GX start-up, validation time, peak memory.

Each stage's suite runs in its own fresh process over the stage's committed outputs in a
project that `dvc repro` has already built (so the figures are what a stage pays on top of its
own work): `import great_expectations` + context, then `run_suite` over the output's frames.

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
STAGE_OUTPUT = {"ingest": "data/raw", "strip_html": "data/stripped", "validate_utf": "data/utf8",
                "filter_upvotes": "data/filtered", "top_answers": "data/top2", "split": "data/split",
                "shard": "data/shards"}

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
stage, out = sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
from stages import quality
from stages.common import load_params
params = load_params()
t1 = time.perf_counter()
quality._gx()                      # import GX and build the ephemeral context, as a stage does
t2 = time.perf_counter()
from pathlib import Path
report = quality.run_suite(stage, params, quality.stage_frames(stage, Path(out), params))
t3 = time.perf_counter()
print(json.dumps({"stage": stage, "gx_startup_s": round(t2 - t1, 3), "validate_s": round(t3 - t2, 3),
                  "total_s": round(t3 - t1, 3), "expectations": report["evaluated"],
                  "passed": report["successful"], "rows_checked": sum(report["rows_checked"].values()),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def measure(project: Path, stage: str) -> dict:
    env = dict(os.environ, GX_ANALYTICS_ENABLED="False")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), stage, STAGE_OUTPUT[stage]], cwd=project,
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a project folder where `dvc repro` has built data/")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(args.project.resolve(), s) for s in STAGE_OUTPUT]
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
