"""Output written to a pipe or a file (CI logs, `dvc repro > log`) is not wrapped at 80 columns."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO

LONG = {"stage": "ingest", "rows_in": 2_030_000, "rows_out": 2_010_000, "rejected": 20_000,
        "rejected_by_reason": {f"reason_number_{i}": 1000 + i for i in range(12)},
        "repaired_by_kind": {"cp1252_bytes": 7}, "seconds": 0.5}


def test_a_piped_stage_summary_is_one_line():
    code = f"from stages.core.console import print_stage_summary; print_stage_summary({LONG!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "80", "TERM": "xterm"})
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 200, proc.stderr
    assert lines[0].startswith("ingest: 2030000 in") and lines[0].endswith("[0.5 s]")


def test_a_piped_error_is_one_line_and_tables_keep_their_width():
    code = ("from stages.core.console import console, print_error; from rich.table import Table\n"
            "print_error('x ' * 100)\n"
            "t = Table(); t.add_column('a'); t.add_column('b'); t.add_row('w ' * 100, 'y'); console().print(t)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert len(proc.stderr.splitlines()) == 1
    widths = {len(line) for line in proc.stdout.splitlines()}
    assert widths == {132}, widths
