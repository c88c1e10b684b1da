"""Terminal output of a running stage (rich): its progress bar, its one-line summary, its error."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

from rich.console import Console


PIPED_WIDTH = 132    # tables written to a pipe or file: wide enough for the funnel's columns


def console() -> Console:
    return _console(stderr=False)


def console_err() -> Console:
    return _console(stderr=True)


def _console(stderr: bool) -> Console:
    # Piped output (make, CI logs, `dvc repro > log`): rich would wrap every line at 80 columns
    # ("[0.5\ns]"); soft wrap leaves lines whole, and tables get a fixed width.
    con = Console(stderr=stderr, highlight=False)
    return con if con.is_terminal else Console(stderr=stderr, highlight=False, width=PIPED_WIDTH, soft_wrap=True)


def print_error(message: str) -> None:
    """One red line on stderr; the message is shown as written (paths and contents are not markup)."""
    from rich.markup import escape

    console_err().print(f"[bold red]error[/] {escape(message)}", soft_wrap=True)


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


def exit_on_stage_error(body: Callable[[], None]) -> None:
    """Run a stage entry point: a StageError is printed as one clear line and the stage exits 1;
    anything else propagates with its traceback."""
    import sys

    from stages.core.errors import StageError

    try:
        body()
    except StageError as exc:
        print_error(str(exc))
        sys.exit(1)
