"""The curation funnel: rows kept and rejected per data stage, read from their audits.

Rows are posts (questions and answers) up to top_answers, which joins each kept answer with its
question: from split on a row is one question-answer pair. The table says which, row by row. A
stage whose audit is missing (it failed, e.g. a bad `-S ingest.source=...`, or never ran) is shown
as missing, never left out.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from stages.core.console import console, console_err

# Data stages in pipeline order: the funnel reads their audits in this order.
DATA_STAGES = ["ingest", "strip_html", "validate_utf", "filter_upvotes", "top_answers", "split", "shard"]
RECOVER = ("rerun `dvc repro`; after a failed `dvc exp run`, `git checkout params.yaml && dvc repro` "
           "restores the last committed run (from the DVC cache, in seconds)")


def load_audits(metrics_dir: Path = Path("metrics/audit")) -> list[dict[str, Any]]:
    """Every data stage's audit in pipeline order; a missing one is {"stage": name, "missing": path}."""
    out = []
    for stage in DATA_STAGES:
        p = metrics_dir / f"{stage}.json"
        out.append(json.loads(p.read_text(encoding="utf-8")) if p.exists() else {"stage": stage, "missing": str(p)})
    return out


def unit(audit: dict[str, Any]) -> str:
    """What a row of this stage is: question-answer pairs (a `pairs` table), else posts."""
    return "pairs" if "pairs" in audit.get("tables", {}) else "posts"


def units_note(audits: list[dict[str, Any]]) -> str:
    joined = next((a for a in audits if "pairs" in a and unit(a) == "posts"), None)
    pairs = f" into {joined['pairs']:,} question-answer pairs" if joined else ""
    return (f"rows: posts (questions + answers) up to top_answers, which joins them{pairs}; "
            "from split on, one row is one question-answer pair")


def funnel_table(audits: list[dict[str, Any]]) -> Table:
    t = Table(title="soqa curation funnel", caption=units_note(audits), show_lines=False)
    t.add_column("stage", no_wrap=True)
    t.add_column("unit", no_wrap=True)
    t.add_column("rows in", justify="right")
    t.add_column("rows out", justify="right")
    t.add_column("rejected", justify="right")
    t.add_column("kept %", justify="right")
    t.add_column("rejected by reason")
    t.add_column("repaired")
    for a in audits:
        if "missing" in a:
            t.add_row(a["stage"], "", "[bold red]audit missing[/]", "", "", "", f"[red]no {a['missing']}[/]", "")
            continue
        share = f"{100 * a['rows_out'] / a['rows_in']:.1f}" if a["rows_in"] else "-"
        reasons = "\n".join(f"{k}: {v}" for k, v in a.get("rejected_by_reason", {}).items())
        repaired = "\n".join(f"{k}: {v}" for k, v in a.get("repaired_by_kind", {}).items())
        out = str(a["rows_out"]) + (f" ({a['pairs']} pairs)" if "pairs" in a and unit(a) == "posts" else "")
        t.add_row(a["stage"], unit(a), str(a["rows_in"]), out, str(a["rejected"]), share, reasons, repaired)
    return t


def print_funnel(metrics_dir: Path = Path("metrics/audit")) -> int:
    """The funnel table; 1 when an audit is missing (said in one line, with how to recover)."""
    audits = load_audits(metrics_dir)
    missing = [a["stage"] for a in audits if "missing" in a]
    if len(missing) == len(audits):
        console_err().print(f"no audits under {metrics_dir}: run `dvc repro` first")
        return 1
    console().print(funnel_table(audits))
    if missing:
        console_err().print(f"[bold red]audit missing[/] for {', '.join(missing)} (its stage failed or never ran, "
                            f"so the funnel above is incomplete): {RECOVER}", soft_wrap=True)
        return 1
    return 0
