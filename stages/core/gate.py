"""The quality gate: a stage's Great Expectations suite over its still-temporary outputs.

A stage declares its suite (core.gate.Suite) beside its transform: its expectations as code, each
with the reason it exists (`why`), and the frames they read. The runner calls `validate` before
anything is committed. A failing expectation raises StageError with one message (stage,
expectation, failed rows, example ids, where the details are), so the stage exits non-zero and
nothing is committed. When all pass, `metrics/quality/<stage>.json` records the results (a DVC
metric: evaluated / successful expectations and each check's unexpected count; the full
per-expectation results sit in a list there, which DVC ignores and the `report` stage renders).

Memory: whole-table checks (uniqueness, membership, fractions) run on the few key columns they
need; row checks run per row group of the output, through the stage's executor, and their counts
are summed in file order, so the report is the same whatever the executor or worker count.
"""
from __future__ import annotations

import html
import importlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from stages.core.errors import StageError
from stages.core.executors import Executor, InProcess
from stages.core.gx_import import import_gx
from stages.core.outputs import QUALITY, write_json
from stages.core.schemas import to_frame

# A failed validation is written here (git-ignored): the stage's outputs are not, so the
# details have to live somewhere a person can open.
FAILURES = Path("gx") / "uncommitted" / "failures"
EXAMPLE_IDS = 5          # example ids named in the failure message
PARTIAL_ROWS = 20        # example rows kept per expectation (GX's SUMMARY format keeps 20 too)
# Row groups per row-check unit: each GX validate call costs about 30 ms whatever its size, so
# units of one 32k-row group spent about a sixth of the text checks' CPU there; two halve that, and
# a unit's frames stay small enough for two workers.
UNIT_GROUPS = 2

Frame = tuple[str, str, pd.DataFrame]     # (table, scope, frame)


@dataclass(frozen=True)
class Check:
    """One expectation of a suite: the frame it reads, how that frame is fed, and why it exists."""
    table: str                      # the frame the expectation runs on
    scope: str                      # schema | keys | rows  (rows: fed per row group, counts summed)
    kind: str                       # the GX expectation class name
    kwargs: dict[str, Any]
    why: str

    @property
    def name(self) -> str:
        col = self.kwargs.get("column") or "+".join(self.kwargs.get("column_list", [])) or \
            "|".join(filter(None, [self.kwargs.get("column_A"), self.kwargs.get("column_B")]))
        snake = _snake(self.kind)
        return f"{self.table}.{col}: {snake}" if col else f"{self.table}: {snake}"


def _no_frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    return iter(())


@dataclass(frozen=True)
class Suite:
    """A stage's expectations and the frames they read.

    checks: params -> the expectations, in the order they are reported.
    frames: (output folder, params) -> whole-output frames (schema and key checks).
    row_tables / row_frame: the "rows" checks read, per row group of each (table, columns) of the
        output, the frame row_frame derives from those columns.
    values: (params, the frames) -> values that expectations name as "$key" (split's tolerance
        depends on how many questions there are); the frames are then read before the suite runs.
    ids: which columns of each frame name a failing row (ids a person can look up).
    """
    checks: Callable[[dict[str, Any]], list[Check]]
    ids: dict[str, list[str]]
    frames: Callable[[Path, dict[str, Any]], Iterator[Frame]] = _no_frames
    row_tables: tuple[tuple[str, tuple[str, ...]], ...] = ()
    row_frame: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    values: Callable[[dict[str, Any], list[Frame]], dict[str, Any]] | None = None


# ----------------------------------------------------------------------------- summing GX's verdicts
@dataclass
class _Tally:
    """One expectation's result summed over the frames it was fed."""
    check: Check
    kwargs: dict[str, Any]
    id_columns: list[str]
    success: bool = True
    element_count: int = 0
    unexpected_count: int = 0
    missing_count: int = 0
    observed_value: Any = None
    examples: list[Any] = field(default_factory=list)          # ids of failing rows
    unexpected_values: list[Any] = field(default_factory=list)
    exception: str | None = None

    def add(self, res: dict[str, Any], success: bool, exception: str | None) -> None:
        self.success = self.success and success
        if exception:
            self.exception = exception
        r = res or {}
        self.element_count += int(r.get("element_count") or 0)
        self.unexpected_count += int(r.get("unexpected_count") or 0)
        self.missing_count += int(r.get("missing_count") or 0)
        if "observed_value" in r:
            self.observed_value = _plain(r["observed_value"])
        for row in r.get("partial_unexpected_index_list") or []:
            if len(self.examples) < PARTIAL_ROWS:
                ids = [row.get(c) for c in self.id_columns]
                self.examples.append(_plain(ids[0] if len(ids) == 1 else ids))
        for v in r.get("partial_unexpected_list") or []:
            if len(self.unexpected_values) < PARTIAL_ROWS:
                self.unexpected_values.append(_short(_plain(v)))

    def finish(self) -> dict[str, Any]:
        mostly = self.kwargs.get("mostly")
        if mostly is not None and self.exception is None:
            # Frames each pass `mostly` on their own share; the whole table must pass it too.
            counted = self.element_count - self.missing_count
            self.success = counted == 0 or (counted - self.unexpected_count) / counted >= mostly
        out = {"name": self.check.name, "table": self.check.table, "expectation": _snake(self.check.kind),
               "kwargs": _plain(self.kwargs), "why": self.check.why, "success": bool(self.success),
               "element_count": self.element_count, "unexpected_count": self.unexpected_count,
               "missing_count": self.missing_count, "examples": self.examples,
               "unexpected_values": self.unexpected_values}
        if self.observed_value is not None:
            out["observed_value"] = self.observed_value
        if self.exception:
            out["exception"] = self.exception
        return out


def _row_wise(r: dict[str, Any]) -> bool:
    """Expectations judged row by row (they count failing rows), unlike aggregates such as a mean."""
    return "observed_value" not in r or bool(r["element_count"])


def _numeric_observed(r: dict[str, Any]) -> bool:
    v = r.get("observed_value")
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def _short(v: Any) -> Any:
    return v[:160] + "…" if isinstance(v, str) and len(v) > 160 else v


def _plain(v: Any) -> Any:
    """numpy / pandas scalars -> JSON-able Python values."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item"):
        try:
            return v.item()
        except (ValueError, AttributeError):
            pass
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _resolve(kwargs: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {k: (values[v[1:]] if isinstance(v, str) and v.startswith("$") and v[1:] in values else v)
            for k, v in kwargs.items()}


# One frame's GX verdicts: (index of the check in the suite, GX's result dict, success, exception).
Outcome = list[tuple[int, dict[str, Any], bool, "str | None"]]


class _FrameValidator:
    """Validates frames against a stage's suite with GX (one expectation suite per table+scope)."""

    def __init__(self, stage: str, suite: Suite, tallies: list[_Tally]):
        self.stage = stage
        self.ids = suite.ids
        self.tallies = tallies
        self.gx, self.gxe, ctx = import_gx()
        self.source = ctx.data_sources.add_pandas(f"soqa_{stage}")
        self.groups: dict[tuple[str, str], tuple[Any, Any, list[int]]] = {}

    def _suite_for(self, table: str, scope: str) -> tuple[Any, Any, list[int]]:
        key = (table, scope)
        if key not in self.groups:
            mine = [i for i, t in enumerate(self.tallies) if (t.check.table, t.check.scope) == key]
            suite = self.gx.ExpectationSuite(name=f"{self.stage}.{table}.{scope}")
            for i in mine:
                t = self.tallies[i]
                suite.add_expectation(getattr(self.gxe, t.check.kind)(**t.kwargs, meta={"why": t.check.why,
                                                                                         "soqa_check": i}))
            asset = self.source.add_dataframe_asset(f"{self.stage}.{table}.{scope}")
            self.groups[key] = (asset.add_batch_definition_whole_dataframe("frame"), suite, mine)
        return self.groups[key]

    def validate(self, table: str, scope: str, df: pd.DataFrame) -> Outcome:
        batch_def, suite, mine = self._suite_for(table, scope)
        if not mine:
            return []
        id_cols = [c for c in self.ids.get(table, []) if c in df.columns]
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_ROWS}
        if id_cols:
            fmt["unexpected_index_column_names"] = id_cols
        result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format=fmt)
        out: Outcome = []
        for r in result.results:
            info = r.exception_info or {}
            exc = info.get("exception_message") if info.get("raised_exception") else None
            out.append((int(r.expectation_config.meta["soqa_check"]), r.result, bool(r.success), exc))
        return out


def _tallies(suite: Suite, params: dict[str, Any], values: dict[str, Any]) -> list[_Tally]:
    return [_Tally(c, _resolve(c.kwargs, values), suite.ids.get(c.table, [])) for c in suite.checks(params)]


def _report(stage: str, tallies: list[_Tally], verdicts: Iterable[tuple[str, str, int, Outcome]]) -> dict[str, Any]:
    """Sum the frames' verdicts, in frame order, into the stage's quality metrics."""
    rows_checked: dict[str, int] = {}
    for table, scope, rows, outcome in verdicts:
        if scope != "schema":
            rows_checked[table] = rows_checked.get(table, 0) + rows
        for i, result, success, exc in outcome:
            tallies[i].add(result, success, exc)
    results = [t.finish() for t in tallies]
    ok = sum(r["success"] for r in results)
    return {
        "stage": stage,
        "success": ok == len(results),
        "evaluated": len(results),
        "successful": ok,
        "unsuccessful": len(results) - ok,
        "rows_checked": rows_checked,
        # DVC metrics keep these numbers (a diff shows which check changed); lists are ignored.
        "failed_rows": {r["name"]: r["unexpected_count"] for r in results if _row_wise(r)},
        "observed": {r["name"]: round(float(r["observed_value"]), 6) for r in results if _numeric_observed(r)},
        "results": results,
    }


def run_frames(stage: str, suite: Suite, params: dict[str, Any], frames: Iterable[Frame]) -> dict[str, Any]:
    """The suite over given frames, all in this process: the report (quality metrics dict)."""
    frames = iter(frames)
    held: list[Frame] = list(frames) if suite.values else []
    tallies = _tallies(suite, params, suite.values(params, held) if suite.values else {})
    validator = _FrameValidator(stage, suite, tallies)
    return _report(stage, tallies, ((table, scope, len(df), validator.validate(table, scope, df))
                                    for table, scope, df in (held or frames)))


# ----------------------------------------------------------------------------- row checks, unit by unit
@dataclass(frozen=True)
class RowUnit:
    """Some consecutive row groups of one output table (none: the table's empty frame)."""
    module: str          # the stage module, whose STAGE.suite holds the checks
    run: str             # one validation run: a worker builds its GX suite once per run
    params: dict[str, Any]
    path: str
    table: str
    columns: tuple[str, ...]
    groups: tuple[int, ...]


_unit_validators: dict[str, tuple[Suite, _FrameValidator]] = {}


def validate_unit(unit: RowUnit) -> tuple[str, str, int, Outcome]:
    """Validate one unit's frame (in whichever process the executor runs it)."""
    if unit.run not in _unit_validators:
        _unit_validators.clear()     # one run at a time per process
        stage_def = importlib.import_module(unit.module).STAGE
        tallies = _tallies(stage_def.suite, unit.params, {})
        _unit_validators[unit.run] = (stage_def.suite, _FrameValidator(stage_def.name, stage_def.suite, tallies))
    suite, validator = _unit_validators[unit.run]
    pf = pq.ParquetFile(unit.path)
    cols = list(unit.columns)
    if unit.groups:
        df = to_frame(pf.read_row_groups(list(unit.groups), columns=cols))
    else:
        df = to_frame(pf.schema_arrow.empty_table().select(cols))
    df = suite.row_frame(df)
    return unit.table, "rows", len(df), validator.validate(unit.table, "rows", df)


def row_units(module: str, suite: Suite, params: dict[str, Any], out: Path) -> list[RowUnit]:
    """The units of a stage's row checks, in file order; a table without rows is one unit of none."""
    run = uuid.uuid4().hex
    units: list[RowUnit] = []
    for table, cols in suite.row_tables:
        path = out / f"{table}.parquet"
        n = pq.ParquetFile(path).num_row_groups
        groups = [tuple(range(g, min(g + UNIT_GROUPS, n))) for g in range(0, n, UNIT_GROUPS)] or [()]
        units += [RowUnit(module, run, params, str(path), table, cols, g) for g in groups]
    return units


def run_suite(stage_def: Any, params: dict[str, Any], out: Path, executor: Executor | None = None) -> dict[str, Any]:
    """A stage's (core.runner.Stage: its name, module and suite) whole suite over its output
    folder `out`: whole-output frames here, row checks unit by unit through `executor` (default:
    in this process, the reference)."""
    suite = stage_def.suite
    if not suite.row_tables:
        return run_frames(stage_def.name, suite, params, suite.frames(out, params))
    tallies = _tallies(suite, params, {})
    units = row_units(stage_def.module, suite, params, out)
    verdicts = (executor or InProcess()).map(validate_unit, units)
    return _report(stage_def.name, tallies, verdicts)


# ----------------------------------------------------------------------------- the gate
def failure_message(report: dict[str, Any], ids: dict[str, list[str]], where: Path) -> str:
    failed = [r for r in report["results"] if not r["success"]]
    first = failed[0]
    if first.get("exception"):
        what = f"raised {first['exception']}"
    elif first["element_count"] or first["unexpected_count"]:
        what = f"{first['unexpected_count']} of {first['element_count']} rows failed"
        if first["examples"]:
            cols = "/".join(ids.get(first["table"], ["id"]))
            what += f", e.g. {cols} " + ", ".join(str(x) for x in first["examples"][:EXAMPLE_IDS])
    else:
        what = f"observed {first.get('observed_value')!r}"
    more = f" (+{len(failed) - 1} more failed expectation{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    return (f"quality gate failed in stage {report['stage']}: {first['expectation']} on {first['name'].split(':')[0]} "
            f"— {first['why']}: {what}{more}. Outputs not written. Report: {where}")


def write_failure(report: dict[str, Any]) -> Path:
    """The failed results as JSON and a small static HTML page; returns the page's path."""
    FAILURES.mkdir(parents=True, exist_ok=True)
    stage = report["stage"]
    (FAILURES / f"{stage}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    page = FAILURES / f"{stage}.html"
    page.write_text(render_results_page(report), encoding="utf-8")
    return page


def render_results_page(report: dict[str, Any]) -> str:
    rows = []
    for r in report["results"]:
        mark = "pass" if r["success"] else "FAIL"
        detail = r.get("exception") or (f"{r['unexpected_count']} of {r['element_count']} rows"
                                        if r["element_count"] else f"observed {r.get('observed_value')!r}")
        ex = ", ".join(str(x) for x in r["examples"][:10])
        vals = "<br>".join(html.escape(repr(v)) for v in r["unexpected_values"][:5])
        rows.append(f"<tr class='{mark.lower()}'><td>{mark}</td><td>{html.escape(r['name'])}</td>"
                    f"<td>{html.escape(r['why'])}</td><td>{html.escape(detail)}</td><td>{html.escape(ex)}</td>"
                    f"<td><code>{vals}</code></td></tr>")
    return ("<!doctype html><meta charset='utf-8'><title>soqa quality: " + html.escape(report["stage"]) + "</title>"
            "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;vertical-align:top}.fail td:first-child{color:#b00;font-weight:bold}"
            ".pass td:first-child{color:#070}</style>"
            f"<h1>Quality gate, stage {html.escape(report['stage'])}: "
            f"{report['successful']}/{report['evaluated']} expectations passed</h1>"
            "<table><tr><th></th><th>expectation</th><th>why</th><th>result</th><th>example ids</th>"
            "<th>example values</th></tr>" + "".join(rows) + "</table>")


def validate(stage_def: Any, params: dict[str, Any], out: Path, executor: Executor | None = None) -> dict[str, Any]:
    """The gate for a stage (core.runner.Stage: its name, module and suite) over its temporary
    output folder `out`: StageError on any failure (details in gx/uncommitted/failures), else
    metrics/quality/<stage>.json is written."""
    report = run_suite(stage_def, params, out, executor)
    if not report["success"]:
        raise StageError(failure_message(report, stage_def.suite.ids, write_failure(report)))
    write_json(QUALITY / f"{stage_def.name}.json", report)
    return report
