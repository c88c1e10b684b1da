"""Terminal output with rich: stage progress bars, a stage's summary, the whole funnel."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.table import Table

# Data stages in pipeline order: the funnel reads their audits in this order.
DATA_STAGES = ["ingest", "strip_html", "validate_utf", "filter_upvotes", "top_answers", "split", "shard"]


def console() -> Console:
    # Piped output (make, CI logs) gets a fixed width wide enough for the funnel's columns.
    con = Console(highlight=False)
    return con if con.is_terminal else Console(highlight=False, width=132)


def console_err() -> Console:
    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def row_progress(stage: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar counting rows; silent when not attached to a terminal or in CI."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    con = console_err()
    if not con.is_terminal or os.environ.get("CI"):
        yield lambda n: None
        return
    with Progress(TextColumn(f"[bold]{stage}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                  TimeElapsedColumn(), console=con, transient=True) as prog:
        task = prog.add_task(stage, total=total)
        yield lambda n: prog.advance(task, n)


def print_stage_summary(summary: dict[str, Any]) -> None:
    rej = ", ".join(f"{k} {v}" for k, v in summary.get("rejected_by_reason", {}).items()) or "none"
    rep = ", ".join(f"{k} {v}" for k, v in summary.get("repaired_by_kind", {}).items())
    line = (f"[bold]{summary['stage']}[/]: {summary['rows_in']} in → {summary['rows_out']} out, "
            f"{summary['rejected']} rejected ({rej})")
    if rep:
        line += f", repaired: {rep}"
    if "seconds" in summary:
        line += f" [{summary['seconds']:.1f} s]"
    console_err().print(line)


def load_audits(metrics_dir: Path = Path("metrics/audit")) -> list[dict[str, Any]]:
    out = []
    for stage in DATA_STAGES:
        p = metrics_dir / f"{stage}.json"
        if p.exists():
            out.append(json.loads(p.read_text(encoding="utf-8")))
    return out


def funnel_table(audits: list[dict[str, Any]]) -> Table:
    t = Table(title="soqa curation funnel", show_lines=False)
    t.add_column("stage", no_wrap=True)
    t.add_column("rows in", justify="right")
    t.add_column("rows out", justify="right")
    t.add_column("rejected", justify="right")
    t.add_column("kept %", justify="right")
    t.add_column("rejected by reason")
    t.add_column("repaired")
    for a in audits:
        share = f"{100 * a['rows_out'] / a['rows_in']:.1f}" if a["rows_in"] else "-"
        reasons = "\n".join(f"{k}: {v}" for k, v in a.get("rejected_by_reason", {}).items())
        repaired = "\n".join(f"{k}: {v}" for k, v in a.get("repaired_by_kind", {}).items())
        t.add_row(a["stage"], str(a["rows_in"]), str(a["rows_out"]), str(a["rejected"]), share, reasons, repaired)
    return t


def print_funnel(metrics_dir: Path = Path("metrics/audit")) -> int:
    audits = load_audits(metrics_dir)
    if not audits:
        console_err().print(f"no audits under {metrics_dir}: run `dvc repro` first")
        return 1
    console().print(funnel_table(audits))
    return 0
