"""The curation funnel: rows kept and rejected per data stage, read from their audits."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from stages.core.console import console, console_err

# Data stages in pipeline order: the funnel reads their audits in this order.
DATA_STAGES = ["ingest", "strip_html", "validate_utf", "filter_upvotes", "top_answers", "split", "shard"]


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
