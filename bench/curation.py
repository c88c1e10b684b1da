#!/usr/bin/env python3
"""Curation benchmark: the data stages raw -> shards on a Kaggle-schema corpus, timed stage by stage.

It runs exactly what `dvc repro` runs (same code, same params.yaml, each stage as its own
`python -m stages.curate.<name>` process in a throw-away copy of the project, so interpreter,
import and Great Expectations start-up are paid as in a real run) and reports per stage: wall
time, posts/s, CPU time, peak memory of the stage's whole process tree (parent + workers); then
the seed-style peer (bench/seed_style.py: the seed notebook's curation, one process, pandas +
BeautifulSoup) on the same corpus, measured the same way in the same run, and the ratios soqa /
seed-style; then the fixed start-up cost of each stage measured separately; then the DVC
figures: a no-op `dvc repro` and the re-run after a `filter.min_score` change.

    python bench/curation.py --questions 0 --corpus /tmp/c150         # generate ~150k posts, run
    python bench/curation.py --questions 607000 --corpus /tmp/c607    # Kaggle size (2.2 GB CSV)
    python bench/curation.py --corpus ~/kaggle/pythonquestions        # the real Kaggle files
    python bench/curation.py --corpus /tmp/c150 --set runtime.workers=1 --set strip_html.engine=bs4

A corpus folder holds Questions.csv and Answers.csv (Kaggle schema); it is generated with
../shared/bench/make_corpus.py when --questions is given and the folder does not hold one yet.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
MAKE_CORPUS = REPO.parent / "shared" / "bench" / "make_corpus.py"
STAGES = ["ingest", "strip_html", "validate_utf", "dedup", "filter_upvotes", "top_answers", "split", "shard"]
TARGET = STAGES[-1]
# Generated outputs never travel into the copy: the benchmark rebuilds them.
_SKIP_PREFIXES = ("data/raw/", "data/stripped/", "data/utf8/", "data/filtered/", "data/top2/", "data/split/", "data/dedup/",
                  "data/shards/", "data/rejects/", "metrics/", "models/", "dvc.lock", "bench/results/")

SEED_STYLE = REPO / "bench" / "seed_style.py"
# Targets against the seed-style peer measured in the same run on the same machine (absolute
# seconds do not carry between machines: the seed-style run took 42.3 s on one machine at 150k
# posts and 1,401 s on another at Kaggle size), keyed by question count: raw -> shards within this
# share of the seed-style wall time, and at Kaggle size an absolute bound on the peak tree RSS.
SEED_TARGETS = {
    44767: {"name": "150k posts (make_corpus default)", "max_wall_ratio": 1 / 2, "max_rss_gb": None},
    607000: {"name": "Kaggle size (make_corpus --questions 607000)", "max_wall_ratio": 1 / 4, "max_rss_gb": 3.0},
}
TARGET_NOOP_S = 2.0
TARGET_MIN_SCORE_SHARE = 0.20


# ----------------------------------------------------------------------------- project copy
def copy_project(dest: Path, source: Path, overrides: dict[str, Any]) -> Path:
    """Copy the working tree (tracked + untracked, not ignored, no pipeline outputs) and point it at `source`."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in files:
        if not rel or rel.startswith(_SKIP_PREFIXES) or not (REPO / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    params_path = dest / "params.yaml"
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    params["ingest"]["source"] = str(source)
    for key, value in overrides.items():
        set_param(params, key, value)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    git = ["git", "-c", "user.email=bench@soqa", "-c", "user.name=bench"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "bench copy"], cwd=dest, check=True)
    return dest


def set_param(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = params
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set expects key=value, got {text!r}")
    return key, yaml.safe_load(value)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CI"] = "1"                 # no progress bars: a terminal redraw is not part of the work
    env["PYTHONPATH"] = ""
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    return env


# ----------------------------------------------------------------------------- measuring one process tree
def gx_servers(proj: Path) -> list[psutil.Process]:
    """The project's GX preloader (`python -m stages.core.gx_preload --root PROJ --socket ...`):
    detached from the stage that started it, so it and its validation children are added to every
    measurement by hand."""
    found = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info.get("cmdline") or []
        if "stages.core.gx_preload" in cmd and str(proj) in cmd:
            found.append(p)
    # The server's forked validation children (and their pool workers) carry its command line too:
    # keep only the root(s), whose descendants the callers add, so nothing is counted twice.
    pids = {p.pid for p in found}
    return [p for p in found if p.info["ppid"] not in pids]


def gx_server_cpu(proj: Path) -> float:
    """CPU seconds of the project's GX servers so far, validations they reaped included."""
    total = 0.0
    for p in gx_servers(proj):
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def stop_gx_servers(proj: Path) -> None:
    """End the project's GX servers, so the next measurement starts cold as a fresh `dvc repro` would."""
    servers = gx_servers(proj)
    for p in servers:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    psutil.wait_procs(servers, timeout=10)


class TreeSampler(threading.Thread):
    """Samples the summed RSS (and PSS, which counts pages shared by forked workers once) of a process
    tree, the project's GX server and its validation children included.

    Sampling must not slow what it measures (2 cores here): RSS comes from /proc/PID/statm every
    `interval` (about 0.01 ms a process), the GX server is looked up every PSS_EVERY seconds (a scan
    of every process's command line, about 5 ms), and PSS, which reads /proc/PID/smaps (about 3 ms a
    process), at most every PSS_EVERY seconds: when the RSS sum reaches a new high, and in any case
    every second. Sampling every process's PSS every 50 ms took about a third of a core and made the
    text stages about 15% slower than unobserved.
    """

    PSS_EVERY = 0.5

    def __init__(self, pid: int, interval: float = 0.05, proj: Path | None = None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.proj = pid, interval, proj
        self.peak_rss = 0
        self.peak_pss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        servers: list[psutil.Process] = []
        servers_at = pss_at = -1e9
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            if self.proj is not None:
                if now - servers_at >= self.PSS_EVERY:
                    servers, servers_at = gx_servers(self.proj), now
                seen = {p.pid for p in procs}
                for server in servers:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                        procs += [q for q in [server] + server.children(recursive=True) if q.pid not in seen]
            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    rss += p.memory_info().rss
            new_high = rss > self.peak_rss
            self.peak_rss = max(self.peak_rss, rss)
            since_pss = now - pss_at
            if since_pss >= 1.0 or (new_high and since_pss >= self.PSS_EVERY):
                pss_at, pss = now, 0
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        mem = p.memory_full_info()
                        pss += getattr(mem, "pss", mem.rss)
                self.peak_pss = max(self.peak_pss, pss)
            self.stop.wait(self.interval)


def run_measured(cmd: list[str], cwd: Path, log: Path, gx: bool = True) -> dict[str, Any]:
    """Run `cmd`; wall time, CPU time and peak memory of it and its children (wait4 rusage + sampling).

    CPU time excludes the validations the GX server ran for it (reported once, see gx_server_cpu).
    gx=False: `cmd` starts no GX server (the seed-style peer), so none is looked for.
    """
    with open(log, "wb") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=fh, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, proj=cwd if gx else None)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),       # includes reaped pool workers
        "max_process_rss_mb": round(ru.ru_maxrss / 1024, 1),  # largest single process of the tree
        "peak_tree_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "peak_tree_pss_mb": round(sampler.peak_pss / 2**20, 1),
    }


def tail(path: Path, n: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def read_audit(proj: Path, stage: str) -> dict[str, Any]:
    p = proj / "metrics" / "audit" / f"{stage}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


# ----------------------------------------------------------------------------- the parts of the benchmark
def run_stages(proj: Path, logs: Path) -> list[dict[str, Any]]:
    rows = []
    for stage in STAGES:
        log = logs / f"{stage}.log"
        m = run_measured([sys.executable, "-m", f"stages.curate.{stage}"], proj, log)
        if m["rc"] != 0:
            raise SystemExit(f"stage {stage} failed (exit {m['rc']}), log {log}:\n{tail(log)}")
        audit = read_audit(proj, stage)
        m.update(stage=stage, rows_in=audit.get("rows_in", 0), rows_out=audit.get("rows_out", 0),
                 rejected=audit.get("rejected", 0))
        m["rows_per_s"] = round(m["rows_in"] / m["wall_s"]) if m["wall_s"] else 0
        rows.append(m)
        print(f"  {stage:<15} {m['wall_s']:8.2f} s  {m['rows_in']:>9} rows in  "
              f"tree RSS {m['peak_tree_rss_mb']:8.1f} MB", file=sys.stderr, flush=True)
    return rows


def measure_startup(source: Path, overrides: dict[str, Any], logs: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Fixed cost per stage: bare imports, and a whole stage run on the embedded sample (a few hundred rows)."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="soqa-bench-startup-") as tmp:
        proj = copy_project(Path(tmp), source, overrides)
        interp = [run_measured([sys.executable, "-c", "pass"], proj, logs / "startup-python.log")["wall_s"]
                  for _ in range(repeats)]
        gx = [run_measured([sys.executable, "-c", "import great_expectations"], proj, logs / "startup-gx.log")["wall_s"]
              for _ in range(repeats)]
        # What the GX server pays: the same import with the modules no suite uses deferred.
        gx_quiet = "from stages.core.gx_import import import_gx; import_gx()"
        gx_server = [run_measured([sys.executable, "-c", gx_quiet], proj, logs / "startup-gx-server.log")["wall_s"]
                     for _ in range(repeats)]
        out["python"] = {"interpreter_s": statistics.median(interp), "gx_import_s": statistics.median(gx),
                         "gx_server_import_s": statistics.median(gx_server)}
        for stage in STAGES:
            imports = [run_measured([sys.executable, "-c", f"import stages.curate.{stage}"], proj,
                                    logs / f"startup-import-{stage}.log")["wall_s"] for _ in range(repeats)]
            tiny = run_measured([sys.executable, "-m", f"stages.curate.{stage}"], proj,
                                logs / f"startup-run-{stage}.log")
            if stage == STAGES[-1]:
                stop_gx_servers(proj)
            out[stage] = {"import_s": statistics.median(imports), "sample_run_s": tiny["wall_s"],
                          "sample_cpu_s": tiny["cpu_s"], "sample_rows_in": read_audit(proj, stage).get("rows_in", 0)}
            if tiny["rc"] != 0:
                # Reported, not fatal: the main figures stand; later stages lack their input.
                out[stage]["error"] = tail(logs / f"startup-run-{stage}.log", 3)
                print(f"start-up run of {stage} failed on the sample: {out[stage]['error']}", file=sys.stderr)
                break
    return out


def run_seed_style(corpus: Path, work: Path, logs: Path) -> dict[str, Any]:
    """The seed-style peer (bench/seed_style.py) on the same corpus, measured as the stages are:
    wall s, CPU s, peak RSS of its process tree. Its output is deleted afterwards."""
    out = work / "seed-style-out"
    log = logs / "seed_style.log"
    print("  seed-style curation (bench/seed_style.py) ...", file=sys.stderr, flush=True)
    m = run_measured([sys.executable, str(SEED_STYLE), "--corpus", str(corpus), "--out", str(out)],
                     work, log, gx=False)
    shutil.rmtree(out, ignore_errors=True)
    if m["rc"] != 0:
        raise RuntimeError(f"seed-style run failed (exit {m['rc']}), log {log}:\n{tail(log)}")
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("{")]
    rows = json.loads(lines[-1]) if lines else {}
    print(f"  {'seed-style':<15} {m['wall_s']:8.2f} s  {rows.get('rows_in', 0):>9} rows in  "
          f"tree RSS {m['peak_tree_rss_mb']:8.1f} MB", file=sys.stderr, flush=True)
    return {"script": str(SEED_STYLE.relative_to(REPO)), "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
            "peak_tree_rss_mb": m["peak_tree_rss_mb"], "peak_tree_pss_mb": m["peak_tree_pss_mb"],
            "max_process_rss_mb": m["max_process_rss_mb"], "rows": rows}


def seed_ratios(total: dict[str, Any], seed: dict[str, Any]) -> dict[str, float]:
    """soqa raw -> shards / seed-style, from the same run: below 1 is soqa faster or smaller."""
    def ratio(a: float, b: float) -> float:
        return round(a / b, 4) if b else float("nan")
    return {"wall": ratio(total["wall_s"], seed["wall_s"]), "cpu": ratio(total["cpu_s"], seed["cpu_s"]),
            "peak_tree_rss": ratio(total["peak_tree_rss_mb"], seed["peak_tree_rss_mb"])}


def dvc(proj: Path, args: list[str], logs: Path, name: str) -> dict[str, Any]:
    log = logs / f"dvc-{name}.log"
    m = run_measured([str(Path(sys.executable).parent / "dvc"), *args], proj, log)
    if m["rc"] != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {m['rc']}), log {log}:\n{tail(log)}")
    text = log.read_text(errors="replace")
    m["stages_run"] = [s for s in STAGES if f"Running stage '{s}'" in text]
    return m


def measure_dvc(proj: Path, logs: Path, new_min_score: int | None) -> dict[str, Any]:
    """Record the finished run in dvc.lock, then time a no-op repro and a filter.min_score change.

    The target is the last data stage (`shard`): the stages after it (tokenizer, training, ...)
    are not part of curation and would train a model here.
    """
    out: dict[str, Any] = {"commit": dvc(proj, ["commit", "-f", "--with-deps", TARGET], logs, "commit")}
    out["noop_repro"] = dvc(proj, ["repro", TARGET], logs, "noop")
    params_path = proj / "params.yaml"
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    old = int(params["filter"]["min_score"])
    params["filter"]["min_score"] = old + 1 if new_min_score is None else new_min_score
    params_path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    out["min_score_change"] = {"from": old, "to": params["filter"]["min_score"]}
    stop_gx_servers(proj)       # the user's next repro comes later: it pays the GX import again
    out["min_score_repro"] = dvc(proj, ["repro", TARGET], logs, "min-score")
    stop_gx_servers(proj)
    return out


# ----------------------------------------------------------------------------- executor ray beside local
RAY_WORKER_TITLES = ("ray::soqa_job", "ray::IDLE")     # Ray's agents (ray::DashboardAgent, ...) are not workers


class RayWorkerCpu(threading.Thread):
    """CPU seconds of the Ray workers on this machine (titled ray::soqa_job while they run a job,
    ray::IDLE between jobs), sampled every half second: a job's workers exit with their driver, so
    the last half second of each is lost."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.last: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            # Fresh Process objects: process_iter() shares its cached ones (and their .info) with the
            # memory sampler's thread.
            for pid in psutil.pids():
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    cmd = p.cmdline()
                    if cmd and cmd[0].startswith(RAY_WORKER_TITLES):
                        t = p.cpu_times()
                        self.last[pid] = t.user + t.system
            self.stop.wait(0.5)

    def total(self) -> float:
        return round(sum(self.last.values()), 2)


def output_digests(proj: Path) -> dict[str, str]:
    """md5 of every data output, reject file, audit and quality report."""
    import hashlib

    out = {}
    for top in ("data", "metrics/audit", "metrics/quality"):
        for p in sorted((proj / top).rglob("*")):
            rel = p.relative_to(proj).as_posix()
            if p.is_file() and not rel.startswith("data/sample") and "/." not in "/" + rel:
                out[rel] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def run_on_ray(corpus: Path, overrides: dict[str, Any], work: Path, logs: Path, address: str | None,
               local_proj: Path) -> dict[str, Any]:
    """The same stages with runtime.executor: ray, on `address` or on a two-node cluster started
    here (ray.cluster_utils, each node half of runtime.workers CPUs and a 1 GB object store); each
    stage's fixed cost on the embedded sample; whether every output equals the local run's."""
    from ray.cluster_utils import Cluster

    cluster = None
    if address is None:
        cpus = max(1, int(overrides.get("runtime.workers", 2)) // 2)
        node = {"num_cpus": cpus, "object_store_memory": 1 << 30}
        cluster = Cluster(initialize_head=True, head_node_args=node | {"include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        address = cluster.address
    ray_overrides = overrides | {"runtime.executor": "ray", "runtime.ray_address": address}
    try:
        proj = copy_project(work / "proj-ray", corpus, ray_overrides)
        (logs / "ray").mkdir()
        sampler = RayWorkerCpu()
        sampler.start()
        stages = run_stages(proj, logs / "ray")
        sampler.stop.set()
        sampler.join()
        stop_gx_servers(proj)
        a, b = output_digests(local_proj), output_digests(proj)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        sample = copy_project(work / "sample-ray", REPO / "data" / "sample", ray_overrides)
        fixed = {}
        for stage in STAGES:
            m = run_measured([sys.executable, "-m", f"stages.curate.{stage}"], sample, logs / "ray" / f"sample-{stage}.log")
            fixed[stage] = m["wall_s"]
        stop_gx_servers(sample)
        shutil.rmtree(proj, ignore_errors=True)
        shutil.rmtree(sample, ignore_errors=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
    for r in stages:
        r["sample_run_s"] = fixed[r["stage"]]
    return {"address": "two-node cluster on this machine" if cluster is not None else address,
            "stages": stages, "wall_s": round(sum(r["wall_s"] for r in stages), 3),
            "driver_cpu_s": round(sum(r["cpu_s"] for r in stages), 2), "ray_worker_cpu_s": sampler.total(),
            "sample_run_s": round(sum(fixed.values()), 3), "outputs_compared": len(a),
            "outputs_differ": differ}


def print_executors(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ray = result["ray"]
    con = Console(highlight=False, width=170)
    t = Table(title=f"executor local vs ray ({ray['address']}), same corpus, same run")
    for col in ("stage", "local wall s", "local CPU s", "ray wall s", "ray driver CPU s", "ray wall on the sample s",
                "ray - local s"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for loc, r in zip(result["stages"], ray["stages"]):
        t.add_row(loc["stage"], f"{loc['wall_s']:.2f}", f"{loc['cpu_s']:.1f}", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.1f}",
                  f"{r['sample_run_s']:.2f}", f"{r['wall_s'] - loc['wall_s']:+.2f}")
    t.add_row("raw → shards", f"{result['total']['wall_s']:.2f}", f"{result['total']['cpu_s']:.1f}",
              f"{ray['wall_s']:.2f}", f"{ray['driver_cpu_s']:.1f}", f"{ray['sample_run_s']:.2f}",
              f"{ray['wall_s'] - result['total']['wall_s']:+.2f}")
    con.print(t)
    con.print(f"Ray workers' CPU (sampled): {ray['ray_worker_cpu_s']:.1f} s. Outputs (data, rejects, audits, quality "
              f"reports) compared: {ray['outputs_compared']}, differing: {len(ray['outputs_differ'])} "
              f"{ray['outputs_differ'][:5] or ''}")


def generate(corpus: Path, questions: int) -> None:
    if (corpus / "Questions.csv").exists() and (corpus / "Answers.csv").exists():
        print(f"using the corpus already in {corpus}", file=sys.stderr)
        return
    if not MAKE_CORPUS.exists():
        raise SystemExit(f"{MAKE_CORPUS} not found: pass --corpus with Kaggle CSVs instead")
    cmd = [sys.executable, str(MAKE_CORPUS), "--out", str(corpus)]
    if questions:
        cmd += ["--questions", str(questions)]
    print("generating:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


# ----------------------------------------------------------------------------- report
def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=170)    # a log file: no truncated columns
    startup = result.get("startup", {})
    t = Table(title=f"soqa curation benchmark: {result['corpus']['path']} "
                    f"({result['corpus']['posts']:,} posts, {result['corpus']['csv_mb']:,.0f} MB CSV)")
    for col in ("stage", "wall s", "rows in", "rows/s", "CPU s", "tree RSS MB", "tree PSS MB",
                "max proc RSS MB", "import s", "sample run s", "sample CPU s"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in result["stages"]:
        s = startup.get(r["stage"], {})
        t.add_row(r["stage"], f"{r['wall_s']:.2f}", f"{r['rows_in']:,}", f"{r['rows_per_s']:,}", f"{r['cpu_s']:.1f}",
                  f"{r['peak_tree_rss_mb']:,.0f}", f"{r['peak_tree_pss_mb']:,.0f}", f"{r['max_process_rss_mb']:,.0f}",
                  f"{s['import_s']:.2f}" if s else "-", f"{s['sample_run_s']:.2f}" if s else "-",
                  f"{s['sample_cpu_s']:.2f}" if s else "-")
    tot = result["total"]
    t.add_row("[bold]raw → shards[/]", f"[bold]{tot['wall_s']:.2f}[/]", f"{result['corpus']['posts']:,}",
              f"{tot['posts_per_s']:,}", f"{tot['cpu_s']:.1f}", f"{tot['peak_tree_rss_mb']:,.0f}",
              f"{tot['peak_tree_pss_mb']:,.0f}", f"{tot['max_process_rss_mb']:,.0f}",
              f"{tot['import_s']:.2f}" if startup else "-", f"{tot['sample_run_s']:.2f}" if startup else "-",
              f"{tot['sample_cpu_s']:.2f}" if startup else "-")
    seed = result.get("seed_style")
    if seed:
        rows_in = seed["rows"].get("rows_in", 0)
        t.add_row("[bold]seed-style[/] (this run)", f"{seed['wall_s']:.2f}", f"{rows_in:,}",
                  f"{round(rows_in / seed['wall_s']) if seed['wall_s'] else 0:,}", f"{seed['cpu_s']:.1f}",
                  f"{seed['peak_tree_rss_mb']:,.0f}", f"{seed['peak_tree_pss_mb']:,.0f}",
                  f"{seed['max_process_rss_mb']:,.0f}", "-", "-", "-")
    con.print(t)
    con.print(f"CPU s per stage excludes its validation, run by the GX server: {tot.get('gx_server_cpu_s', 0):.1f} CPU s "
              "in all (its GX import and every stage's checks), counted in the total.")
    if startup:
        py = startup["python"]
        gx_server = f", {py['gx_server_import_s']:.2f} s as the GX server imports it" if "gx_server_import_s" in py else ""
        con.print(f"start-up: bare interpreter {py['interpreter_s']:.2f} s, `import great_expectations` "
                  f"{py['gx_import_s']:.2f} s{gx_server} (paid once per run, by the GX server the first stage "
                  "starts; ingest's sample run waits for it); "
                  "'import s' is `python -c 'import stages.X'`, 'sample run s' the whole stage (imports, params, "
                  "GX checks, audit, atomic commit) on the embedded sample, i.e. the fixed cost per stage.")
    d = result.get("dvc")
    if d:
        con.print(f"dvc commit -f (hash + cache the outputs): {d['commit']['wall_s']:.2f} s")
        con.print(f"no-op dvc repro {TARGET}: {d['noop_repro']['wall_s']:.2f} s "
                  f"(stages run: {', '.join(d['noop_repro']['stages_run']) or 'none'})")
        ms = d["min_score_repro"]
        con.print(f"filter.min_score {d['min_score_change']['from']} → {d['min_score_change']['to']}: "
                  f"dvc repro {ms['wall_s']:.2f} s = {100 * d['min_score_share']:.1f}% of a full run "
                  f"({d['full_run_s']:.2f} s: stages + dvc commit); stages run: {', '.join(ms['stages_run'])}")
    for line in result.get("verdict", []):
        con.print(line)


def _fraction(x: float) -> str:
    return f"1/{round(1 / x)}" if x and abs(1 / x - round(1 / x)) < 1e-9 else f"{x:.2f}"


def verdict(result: dict[str, Any]) -> list[str]:
    lines = []
    tot = result["total"]
    seed, r = result.get("seed_style"), result.get("ratios")
    if seed and r:
        lines.append(f"seed-style curation (bench/seed_style.py), measured in this run on this machine on the same "
                     f"corpus: {seed['wall_s']:.1f} s wall, {seed['cpu_s']:.1f} CPU s, "
                     f"{seed['peak_tree_rss_mb'] / 1024:.2f} GB peak RSS; "
                     f"soqa raw → shards {tot['wall_s']:.1f} s wall, {tot['cpu_s']:.1f} CPU s, {tot['peak_tree_rss_mb'] / 1024:.2f} GB peak tree RSS")
        speed = f"{1 / r['wall']:.1f}x faster" if r["wall"] <= 1 else f"{r['wall']:.1f}x slower"
        lines.append(f"soqa / seed-style: wall {r['wall']:.3f} ({speed}), CPU {r['cpu']:.3f}, "
                     f"peak RSS {r['peak_tree_rss']:.3f}")
        target = SEED_TARGETS.get(result["corpus"]["questions"])
        if target:
            ok = r["wall"] <= target["max_wall_ratio"]
            lines.append(f"target on {target['name']}: raw → shards ≤ {_fraction(target['max_wall_ratio'])} of the "
                         f"seed-style wall time (ratio {r['wall']:.3f}): {'met' if ok else 'MISSED'}")
            if target["max_rss_gb"]:
                ok = tot["peak_tree_rss_mb"] / 1024 <= target["max_rss_gb"]
                lines.append(f"target peak tree RSS ≤ {target['max_rss_gb']} GB "
                             f"({tot['peak_tree_rss_mb'] / 1024:.2f} GB): {'met' if ok else 'MISSED'}")
        else:
            lines.append(f"no ratio target at {result['corpus']['questions']:,} questions (targets at "
                         f"{', '.join(f'{q:,}' for q in SEED_TARGETS)} questions): ratios only")
    elif "seed_style_error" in result:
        lines.append("seed-style run failed: no ratio targets checked")
    else:
        lines.append("seed-style peer not run (--no-seed-style): no ratio targets checked")
    d = result.get("dvc")
    if d:
        ok = d["noop_repro"]["wall_s"] <= TARGET_NOOP_S and not d["noop_repro"]["stages_run"]
        lines.append(f"target no-op dvc repro ≤ {TARGET_NOOP_S} s: {'met' if ok else 'MISSED'}")
        expected = STAGES[STAGES.index("filter_upvotes"):]
        ok = d["min_score_share"] <= TARGET_MIN_SCORE_SHARE and d["min_score_repro"]["stages_run"] == expected
        lines.append(f"target min_score re-run (only {expected[0]}..{expected[-1]}) ≤ "
                     f"{100 * TARGET_MIN_SCORE_SHARE:.0f}% of a full run: {'met' if ok else 'MISSED'}")
    return lines


def count_rows(proj: Path) -> tuple[int, int]:
    a = read_audit(proj, "ingest").get("tables", {})
    return a.get("questions", {}).get("rows_in", 0), a.get("answers", {}).get("rows_in", 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True,
                    help="folder with Kaggle-schema Questions.csv + Answers.csv (generated there with --questions)")
    ap.add_argument("--questions", type=int, default=None,
                    help="generate the corpus with make_corpus.py first (0: every real page once, ~150k posts)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param in the copy, e.g. runtime.workers=1 or strip_html.engine=bs4")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    ap.add_argument("--no-startup", action="store_true", help="skip measuring the fixed start-up cost per stage")
    ap.add_argument("--no-dvc", action="store_true", help="skip the dvc commit / no-op / min_score figures")
    ap.add_argument("--seed-style", action=argparse.BooleanOptionalAction, default=True,
                    help="also run bench/seed_style.py on the same corpus and report soqa / seed-style ratios "
                         "(default: on)")
    ap.add_argument("--min-score", type=int, default=None, help="the changed filter.min_score (default: current + 1)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per start-up figure (median)")
    ap.add_argument("--executors", default="local", help="local, or local,ray: the same stages again with "
                    "runtime.executor ray (per stage beside local, outputs compared)")
    ap.add_argument("--ray-address", default=None, help="the Ray cluster for --executors local,ray "
                    "(default: a two-node cluster started on this machine for the benchmark)")
    ap.add_argument("--keep", type=Path, help="build the project copy here and keep it (default: a temp dir)")
    args = ap.parse_args(argv)

    corpus = args.corpus.expanduser().resolve()
    if args.questions is not None:
        generate(corpus, args.questions)
    for name in ("Questions.csv", "Answers.csv"):
        if not (corpus / name).is_file():
            raise SystemExit(f"{corpus / name} not found (pass --questions N to generate a corpus there)")
    overrides = dict(parse_override(o) for o in args.overrides)

    work = Path(tempfile.mkdtemp(prefix="soqa-bench-"))
    proj = args.keep.resolve() if args.keep else work / "proj"
    if proj.exists() and any(proj.iterdir()):
        raise SystemExit(f"{proj} is not empty")
    proj.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir()
    try:
        copy_project(proj, corpus, overrides)
        params = yaml.safe_load((proj / "params.yaml").read_text(encoding="utf-8"))
        print(f"project copy {proj}, logs {logs}", file=sys.stderr)
        stages = run_stages(proj, logs)
        time.sleep(1.5)                 # the server reaps a finished validation within a second
        gx_cpu = gx_server_cpu(proj)
        stop_gx_servers(proj)
        questions, answers = count_rows(proj)
        csv_mb = sum((corpus / n).stat().st_size for n in ("Questions.csv", "Answers.csv")) / 1e6
        wall = sum(r["wall_s"] for r in stages)
        result: dict[str, Any] = {
            "corpus": {"path": str(corpus), "questions": questions, "answers": answers,
                       "posts": questions + answers, "csv_mb": round(csv_mb, 1)},
            "params": {k: v for k, v in params.items() if k in ("ingest", "strip_html", "filter", "runtime")},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_at_start": os.getloadavg()},
            "stages": stages,
            "total": {
                "wall_s": round(wall, 3),
                "posts_per_s": round((questions + answers) / wall) if wall else 0,
                # The stages' own CPU plus the GX server's (its import and every validation).
                "cpu_s": round(sum(r["cpu_s"] for r in stages) + gx_cpu, 2),
                "gx_server_cpu_s": round(gx_cpu, 2),
                # Stages run one after another, so the run's peak is the largest stage peak.
                "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in stages),
                "peak_tree_pss_mb": max(r["peak_tree_pss_mb"] for r in stages),
                "max_process_rss_mb": max(r["max_process_rss_mb"] for r in stages),
            },
        }
        if args.seed_style:
            try:
                result["seed_style"] = run_seed_style(corpus, work, logs)
                result["ratios"] = seed_ratios(result["total"], result["seed_style"])
            except RuntimeError as exc:     # reported; the stage figures still stand
                print(exc, file=sys.stderr)
                result["seed_style_error"] = str(exc)
        if not args.no_dvc:
            try:
                d = measure_dvc(proj, logs, args.min_score)
                d["full_run_s"] = round(wall + d["commit"]["wall_s"], 3)
                d["min_score_share"] = round(d["min_score_repro"]["wall_s"] / d["full_run_s"], 4)
                result["dvc"] = d
            except RuntimeError as exc:     # reported; the stage figures still stand
                print(exc, file=sys.stderr)
                result["dvc_error"] = str(exc)
        if not args.no_startup:
            sample = REPO / "data" / "sample"
            st = measure_startup(sample, overrides, logs, args.repeats)
            result["startup"] = st
            result["total"]["import_s"] = round(sum(st[s]["import_s"] for s in STAGES if s in st), 3)
            result["total"]["sample_run_s"] = round(sum(st[s]["sample_run_s"] for s in STAGES if s in st), 3)
            result["total"]["sample_cpu_s"] = round(sum(st[s]["sample_cpu_s"] for s in STAGES if s in st), 3)
        if "ray" in args.executors.split(","):
            result["ray"] = run_on_ray(corpus, overrides, work, logs, args.ray_address, proj)
        result["verdict"] = verdict(result)
        print_report(result)
        if "ray" in result:
            print_executors(result)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        else:
            print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(proj, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
