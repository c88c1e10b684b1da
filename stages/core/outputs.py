"""Where outputs live and how they are written: to a temporary sibling, then moved into place."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

DATA = Path("data")
METRICS = Path("metrics")
REJECTS = DATA / "rejects"
AUDIT = METRICS / "audit"
QUALITY = METRICS / "quality"


def tmp_sibling(path: Path) -> Path:
    """The temporary name a stage writes `path` under until it commits (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (file or folder) and move it into place on success.

    A killed or failing stage leaves the old output (or none), never a half-written one: the
    rename is atomic on one file system. Folders are swapped through a second rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    remove_path(tmp)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    commit_path(tmp, path)


def commit_path(tmp: Path, path: Path) -> None:
    """Move a finished temporary output over its final path (atomically for files)."""
    if tmp.is_dir():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        remove_path(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        remove_path(old)
    else:
        os.replace(tmp, path)


def remove_path(path: Path) -> None:
    """Remove a file, link or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_stale_tmp(*dirs: str | Path) -> None:
    """Remove temporaries left by a killed earlier run (their names start with '.' and hold .tmp-)."""
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                    remove_path(p)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
