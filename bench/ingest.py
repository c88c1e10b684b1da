"""Ingest alone on one source, this tree against an older commit, alternately: wall and CPU seconds,
peak RSS, and whether the outputs (data/raw, the rejects) are md5-identical.

    .venv/bin/python bench/ingest.py --source /work/base/c150 --old HEAD~5 --runs 3
    .venv/bin/python bench/ingest.py --source /tmp/c150.zip            # this tree only

Each run is `python -m stages.curate.ingest` in a fresh folder (runtime.gx_preload off, so the
figures are the stage's own: reading, typing, writing, the quality gate).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _tree(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_ingest(code: Path, source: str, work: Path) -> dict:
    """One ingest run of the code in `code` on `source`: its figures and output md5s."""
    work.mkdir(parents=True)
    params = yaml.safe_load((code / "params.yaml").read_text())
    params["ingest"]["source"] = source
    params["runtime"]["gx_preload"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    with open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stages.curate.ingest"], cwd=work, stderr=err,
                                stdout=subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": str(code), "CI": "1"})
        _, status, usage = os.wait4(proc.pid, 0)         # this child's own CPU time and peak RSS
    wall = time.perf_counter() - t0
    stderr = (work / "stderr.txt").read_text()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(stderr)
    md5 = {str(p.relative_to(work)): hashlib.md5(p.read_bytes()).hexdigest()
           for p in sorted((work / "data").rglob("*.parquet"))}
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2), "md5": md5, "summary": stderr.strip().splitlines()[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True)
    ap.add_argument("--old", help="a git revision to run alternately with this tree")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": REPO}
        if args.old:
            trees = {"old": _tree(args.old, Path(tmp) / "old"), "new": REPO}
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for k in range(args.runs):
            for name, code in trees.items():
                r = run_ingest(code, args.source, Path(tmp) / f"{name}-{k}")
                results[name].append(r)
                print(f"{name} run {k + 1}: {r['wall_s']} s wall, {r['cpu_s']} CPU s, peak {r['peak_rss_gb']} GB "
                      f"({r['summary']})", flush=True)
        for name, rs in results.items():
            print(f"{name}: mean {sum(r['wall_s'] for r in rs) / len(rs):.2f} s wall, "
                  f"{sum(r['cpu_s'] for r in rs) / len(rs):.2f} CPU s")
        if args.old:
            same = all(r["md5"] == results["old"][0]["md5"] for rs in results.values() for r in rs)
            print("outputs md5-identical" if same else "OUTPUTS DIFFER")


if __name__ == "__main__":
    main()
