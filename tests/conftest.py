"""Shared fixtures: a throw-away copy of the project for real `dvc repro` runs."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def curate_stages() -> list[str]:
    """The data stages (python -m stages.curate.*) in dvc.yaml's order: the order they run in."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return [name for name, s in stages.items() if s["cmd"].startswith("python -m stages.curate.")]
SHARED = REPO.parent / "shared"
VENV_BIN = Path(sys.executable).parent

# Nothing in the test suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Every test project starts its own GX preloader (stages/core/gx_preload.py); let them go soon after.
os.environ.setdefault("SOQA_GX_SERVER_IDLE", "5")

# Generated pipeline outputs are not part of a fresh copy: each test rebuilds what it needs.
_SKIP_TOP = {".venv", ".git", ".pytest_cache", ".hypothesis", "reports", "build"}
_SKIP_DATA = {"raw", "stripped", "utf8", "dedup", "filtered", "top2", "split", "shards", "rejects", "eval", "tokenizer"}


def copy_project(dest: Path) -> Path:
    """Copy the working tree (code, params, dvc.yaml, sample data) into `dest` and make it a git+DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in REPO.iterdir():
        if item.name in _SKIP_TOP or item.name.endswith(".egg-info"):
            continue
        if item.name == "data":
            (dest / "data").mkdir(exist_ok=True)
            for sub in item.iterdir():
                if sub.name not in _SKIP_DATA and sub.name != ".gitignore":
                    (shutil.copytree if sub.is_dir() else shutil.copy2)(sub, dest / "data" / sub.name)
        elif item.name in ("models", "metrics"):
            continue
        elif item.name == ".dvc":
            # Only the committed config: the cache and run-cache would let DVC skip real runs.
            shutil.copytree(item, dest / item.name, ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
        elif item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=shutil.ignore_patterns("__pycache__", "*.tmp-*"))
        else:
            shutil.copy2(item, dest / item.name)
    (dest / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    return dest


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = ""
    e["CI"] = "1"
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the project in a temp dir (git-initialised, no pipeline outputs)."""
    return copy_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"needs the shared real data at {SHARED}: put that folder beside the repository to run this test")
    return SHARED


class Listener:
    """A TCP port on 127.0.0.1 that records whether anything connected to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.url = f"http://{self.host}"

    def connections(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1
