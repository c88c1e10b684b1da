"""runtime.executor: ray on a real two-node Ray cluster (ray.cluster_utils.Cluster on this machine,
one CPU and a 150 MB object store a node): the data stages give the same bytes as local (data,
rejects, audits, quality reports) on the sample and on a corpus with injected faults; a Ray worker
killed with kill -9 mid-stage is retried and counted once; a driver killed mid-stage leaves no
half-written output; a missing Ray is one line naming the extra; local runs never import Ray.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import SHARED, copy_project, curate_stages, env

pytestmark = pytest.mark.slow

NODE = {"num_cpus": 1, "object_store_memory": 150 << 20}
INSTALL = "pip install -c constraints.txt -e '.[ray]'"
TASK_TITLE = "ray::soqa_job"        # core.ray_executor names its tasks; a worker running one shows it


@pytest.fixture(scope="module")
def cluster():
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.fail(f"Ray is not installed: `make install` installs it ({INSTALL})")
    c = Cluster(initialize_head=True, head_node_args=NODE | {"include_dashboard": False})
    try:
        c.add_node(**NODE)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def fault_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    make_corpus = SHARED / "bench" / "make_corpus.py"
    if not make_corpus.exists():
        pytest.skip(f"needs {make_corpus}: put ../shared beside the repository")
    out = tmp_path_factory.mktemp("faults") / "corpus"
    subprocess.run([sys.executable, str(make_corpus), "--out", str(out), "--questions", "600", "--faults", "0.03",
                    "--seed", "7"], check=True, capture_output=True)
    return out


def _project(path: Path, source: Path | None, executor: str, address: str | None = None) -> Path:
    proj = copy_project(path)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    if source is not None:
        params["ingest"]["source"] = str(source)
    params["runtime"]["executor"] = executor
    if address:
        params["runtime"]["ray_address"] = address
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return proj


def _env(**extra: str) -> dict[str, str]:
    e = env()
    e.pop("RAY_ADDRESS", None)
    e.update(extra)
    return e


def _stage(proj: Path, stage: str, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", f"stages.curate.{stage}"], cwd=proj, env=_env(**extra),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{stage} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def _digests(proj: Path) -> dict[str, str]:
    """sha256 of every data output, reject file, audit and quality report."""
    out = {}
    for top in ("data", "metrics/audit", "metrics/quality"):
        for p in sorted((proj / top).rglob("*")):
            rel = p.relative_to(proj).as_posix()
            if p.is_file() and not rel.startswith("data/sample") and "/." not in "/" + rel:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _leftovers(proj: Path) -> list[str]:
    return [p.relative_to(proj).as_posix() for top in ("data", "metrics") for p in (proj / top).rglob("*")
            if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("corpus", ["sample", "faults"])
def test_ray_gives_the_same_bytes_as_local(cluster, tmp_path: Path, request: pytest.FixtureRequest,
                                           corpus: str) -> None:
    source = request.getfixturevalue("fault_corpus") if corpus == "faults" else None
    local = _project(tmp_path / "local", source, "local")
    on_ray = _project(tmp_path / "ray", source, "ray", address=cluster.address)
    for stage in curate_stages():
        _stage(local, stage)
        _stage(on_ray, stage)
    a, b = _digests(local), _digests(on_ray)
    assert len(a) >= 25 and any(k.startswith("metrics/quality/strip_html") for k in a)
    assert sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)) == []
    if corpus == "faults":
        assert yaml.safe_load((local / "metrics/audit/ingest.json").read_text())["rejected"] > 0


def _small_row_groups(proj: Path, rows: int = 40) -> None:
    """Rewrite data/raw in row groups of `rows`: strip_html then has dozens of jobs to run."""
    for name in ("questions", "answers"):
        path = proj / "data" / "raw" / f"{name}.parquet"
        pq.write_table(pq.read_table(path), path, row_group_size=rows, compression="zstd")


def _kill_a_worker_running_a_job(proc: subprocess.Popen, timeout: float = 300) -> int | None:
    """SIGKILL the first Ray worker seen running one of the stage's jobs; its pid."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if cmd and cmd[0].startswith(TASK_TITLE):
                os.kill(p.pid, signal.SIGKILL)
                return p.pid
        time.sleep(0.005)
    return None


def test_a_worker_killed_mid_stage_is_retried_and_counted_once(cluster, tmp_path: Path, fault_corpus: Path) -> None:
    local = _project(tmp_path / "local", fault_corpus, "local")
    on_ray = _project(tmp_path / "ray", fault_corpus, "ray")        # the address from RAY_ADDRESS
    for proj in (local, on_ray):
        _stage(proj, "ingest")
        _small_row_groups(proj)
    _stage(local, "strip_html")
    proc = subprocess.Popen([sys.executable, "-m", "stages.curate.strip_html"], cwd=on_ray,
                            env=_env(RAY_ADDRESS=cluster.address), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        killed = _kill_a_worker_running_a_job(proc)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, f"no worker was seen running a job (exit {proc.returncode}): {err[-2000:]}"
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert proc.returncode == 0, err[-3000:]
    a, b = _digests(local), _digests(on_ray)
    assert "metrics/audit/strip_html.json" in a and "data/rejects/strip_html.parquet" in a
    assert {k: v for k, v in a.items() if "strip_html" in k or "stripped" in k} == \
        {k: v for k, v in b.items() if "strip_html" in k or "stripped" in k}


def test_a_driver_killed_mid_stage_leaves_no_output(cluster, tmp_path: Path, fault_corpus: Path) -> None:
    local = _project(tmp_path / "local", fault_corpus, "local")
    on_ray = _project(tmp_path / "ray", fault_corpus, "ray", address=cluster.address)
    for proj in (local, on_ray):
        _stage(proj, "ingest")
        _small_row_groups(proj)
    _stage(local, "strip_html")
    proc = subprocess.Popen([sys.executable, "-m", "stages.curate.strip_html"], cwd=on_ray, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(t.is_dir() and any(t.iterdir()) for t in (on_ray / "data").glob(".stripped.tmp-*")):
            assert proc.poll() is None, f"strip_html ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (on_ray / "data" / "stripped").exists()
    assert not (on_ray / "data" / "rejects" / "strip_html.parquet").exists()
    assert not (on_ray / "metrics" / "audit" / "strip_html.json").exists()
    _stage(on_ray, "strip_html")          # the rerun cleans the killed run's temporaries
    assert _leftovers(on_ray) == []
    assert _digests(on_ray) == _digests(local)


def test_ray_missing_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", None, "ray")
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    proc = subprocess.run([sys.executable, "-m", "stages.curate.ingest"], cwd=proj,
                          env=_env(PYTHONPATH=str(fake.parent)), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL in lines[0], proc.stderr
    assert not (proj / "data" / "raw").exists()


def test_a_local_run_never_imports_ray(tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", None, "local")
    for stage in ("ingest", "strip_html"):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"stages.curate.{stage}"], cwd=proj,
                              env=_env(SOQA_GX_SERVER="0"), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        assert "pyarrow" in imported and not {m for m in imported if m == "ray" or m.startswith("ray.")}


def test_unknown_executor_and_bad_address_are_one_line(tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", None, "dask")
    proc = subprocess.run([sys.executable, "-m", "stages.curate.ingest"], cwd=proj, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "runtime.executor must be one of ['local', 'ray']" in proc.stderr
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["runtime"].update(executor="ray", ray_address="127.0.0.1:1")      # nothing listens there
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _stage(proj, "ingest")              # reads a CSV in the driver: no cluster needed
    proc = subprocess.run([sys.executable, "-m", "stages.curate.strip_html"], cwd=proj, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no Ray cluster answers at '127.0.0.1:1'" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not (proj / "data" / "stripped").exists()


def test_posts_xml_ranges_parsed_on_the_cluster(cluster, shared: Path) -> None:
    """ingest's byte-range parse of a real Stack Exchange dump as Ray tasks: the serial batches."""
    import ray

    from stages.core.params import Runtime
    from stages.curate import posts_ranges
    from stages.curate.ingest import KAGGLE_COLUMNS, read_posts_xml

    path = shared / "data" / "se-dump" / "matheducators.stackexchange.com-Posts.xml"
    rt = Runtime(workers=2, batch_rows=300, executor="ray", ray_address=cluster.address)
    plan = posts_ranges.plan(path, rt, 100_000)
    assert plan is not None and len(plan.cuts) > 20

    def plain(batches):
        return [(t, {c: (v.to_pylist() if hasattr(v, "to_pylist") else list(v)) for c, v in cols.items()})
                for t, cols in batches]
    try:
        ranged = plain(posts_ranges.read(plan, rt, KAGGLE_COLUMNS, lambda: read_posts_xml(path, 300)))
    finally:
        ray.shutdown()
    assert ranged == plain(read_posts_xml(path, 300))
