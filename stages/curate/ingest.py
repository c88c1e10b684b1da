"""Stage 1, ingest: a source as users have it -> typed data/raw/{questions,answers}.parquet.

Sources (stages/curate/sources.py recognises them and reads each format): a Kaggle folder or zip,
a Stack Exchange Posts.xml (plain, .gz, .bz2), or one posts file (.csv, .jsonl, .parquet). Every
layout hands its values on as text under the Kaggle column names; `type_batch` reads them one
way for all: integral floats are integers (pandas re-saves ids as 123.0), NA/nan/null/empty are
missing, the date forms tools write, surrounding whitespace.

A stream stage (core.runner.StreamStage): one pass over the source, where a row's fate may
depend on rows read earlier (duplicate ids) or later (an answer before its question in XML).

Unreadable rows (bad id, missing or non-numeric score, duplicate id, empty body, orphan answer)
are rejected with a reason; invalid UTF-8 is repaired per row, never by decoding a whole file
as latin-1 (which turns every valid é into Ã©). With ingest.tags, questions without a listed tag
and their answers are rejected tag_not_selected.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.errors import StageError
from stages.core.gate import Check, Frame, Suite
from stages.core.ledger import Result
from stages.core.params import Runtime
from stages.core.runner import Raw, StreamStage, run
from stages.core.schemas import ANSWER_SCHEMA, QUESTION_SCHEMA, empty_rejects, rejects, to_frame
from stages.curate import posts_ranges
from stages.curate.sources import (CSV_FILES, KAGGLE_COLUMNS, KNOWN, NULL_TOKENS, Source, decode_column, decode_row,
                                   detect, kaggle_tables, posts_tables, read_kaggle_csv, read_posts_xml,
                                   tagged_question_ids)

__all__ = ["CSV_FILES", "KAGGLE_COLUMNS", "decode_column", "decode_row", "read_kaggle_csv", "read_posts_xml",
           "type_batch", "Ingester", "STAGE"]

_INT = re.compile(r"^\s*[+-]?\d{1,18}(\.0*)?\s*$")     # an integer, or a float that is one (123.0)
_NULLS = frozenset(NULL_TOKENS)


# ----------------------------------------------------------------------------- typing one batch
# The batch stays in Arrow: a regex (RE2, vectorised) finds the values that are plainly fine, and
# only the rest (bad ids, "+5", "NA" owners, blank bodies: a few rows) is judged one by one in
# Python, with the same rules as before. Turning 2 GB of bodies into Python strings and back cost
# a third of the stage.
_PLAIN_INT = r"^[0-9]{1,18}$"
_HAS_VISIBLE_ASCII = "[!-~]"      # a printable ASCII character is never whitespace: the text is not blank


def as_strings(values: pa.Array | list[str | None]) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(values, pa.string())


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.fill_null(False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _parse_int_one(v: str | None) -> int | None:
    if v is None or not (_INT.match(v) or (v.isascii() and v.isdigit() and len(v) <= 18)):
        return None
    return int(v.strip().split(".", 1)[0])


def _parse_int(values: pa.Array | list[str | None]) -> pa.Array:
    """Strings -> int64, null where a value is not an integer (surrounding spaces, a sign and an
    integral float's .0 allowed)."""
    arr = as_strings(values)
    plain = _mask(pc.match_substring_regex(arr, _PLAIN_INT))
    out = pc.cast(pc.if_else(pa.array(plain), arr, pa.scalar(None, pa.string())), pa.int64())
    odd = np.flatnonzero(~plain & _mask(arr.is_valid()))
    if not len(odd):
        return out
    ints = out.to_pylist()
    for i, v in zip(odd.tolist(), arr.take(pa.array(odd)).to_pylist()):
        ints[i] = _parse_int_one(v)
    return pa.array(ints, pa.int64())


def _confirm(values: pa.Array, candidates: np.ndarray, rule: Callable[[str | None], bool]) -> np.ndarray:
    """The candidate rows (a mask the vectorised regex could not settle) for which `rule` holds:
    the Python rule runs on those rows only."""
    rows = np.flatnonzero(candidates)
    if len(rows):
        candidates[rows] = [rule(v) for v in values.take(pa.array(rows)).to_pylist()]
    return candidates


def _blank(values: pa.Array) -> np.ndarray:
    """Rows that are null, empty or only whitespace (str.isspace)."""
    return _confirm(values, ~_mask(pc.match_substring_regex(values, _HAS_VISIBLE_ASCII)),
                    lambda t: t is None or not t or t.isspace())


def is_missing(v: str | None) -> bool:
    """A value as tools write a missing one: null, empty, NA, nan, null, None (any case, spaces around)."""
    return v is None or v.strip().lower() in _NULLS


def _missing(values: pa.Array) -> np.ndarray:
    """Rows holding a missing value (`is_missing`); a value with a digit never is."""
    return _confirm(values, ~_mask(pc.match_substring_regex(values, "[0-9]")), is_missing)


# Every date form tools write: the usual ones parsed as they are, the rest first brought to one
# form (2008-08-01T13:57:07Z, ...07.123, 2008-08-01 13:57:07, ... UTC, +00:00). Fractions of a
# second are dropped (outputs hold seconds).
_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
_DATE_FORM = (r"^\s*([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]*)?"
              r"(Z| ?UTC|[+-]00:?00)?\s*$")


def _parse_date_one(v: str) -> Any:
    ts = pd.to_datetime(v.strip(), errors="coerce", utc=True)
    return None if pd.isna(ts) else int(ts.value // 1_000_000_000)


def _strptime(text: pa.Array) -> pa.Array:
    """Timestamps for the usual forms (one for the whole batch, else the normalised text), null
    elsewhere. strptime rolls 2008-02-30 over into March: a date whose day differs is null too."""
    for fmt in _DATE_FORMATS:
        parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        if parsed.null_count == text.null_count:
            break
    else:
        text = pc.replace_substring_regex(text, _DATE_FORM, r"\1 \2")
        parsed = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    day = pc.utf8_slice_codeunits(text, 8, 10)
    day = pc.if_else(pc.match_substring_regex(day, "^[0-9]{2}$"), day, pa.scalar(None, pa.string()))
    same_day = pc.equal(pc.day(parsed), pc.cast(day, pa.int64()))
    return pc.if_else(pc.fill_null(same_day, False), parsed, pa.scalar(None, parsed.type))


def _parse_dates(values: pa.Array | list[str | None]) -> tuple[pa.Array, np.ndarray]:
    """Text -> UTC timestamps in seconds, and the rows whose date is present but unreadable.
    The usual forms are parsed vectorised; anything else (another offset, a date alone) by pandas,
    row by row."""
    arr = as_strings(values)
    missing = _missing(arr)
    present = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), arr) if missing.any() else arr
    secs = pc.cast(_strptime(present), pa.int64())
    odd = np.flatnonzero(_mask(secs.is_null()) & ~missing)
    if len(odd):
        fixed = secs.to_pylist()
        for i, v in zip(odd.tolist(), arr.take(pa.array(odd)).to_pylist()):
            fixed[i] = _parse_date_one(v)
        secs = pa.array(fixed, pa.int64())
    bad = _mask(secs.is_null()) & ~missing
    return secs.cast(pa.timestamp("s")).cast(pa.timestamp("s", tz="UTC")), bad


# First reason wins, in this order; the detail is the offending source value.
_REASONS = ("bad_id", "missing_score", "non_numeric_score", "bad_parent_id", "bad_creation_date", "empty_body",
            "empty_title")
_DETAIL_COLUMN = {"bad_id": "Id", "non_numeric_score": "Score", "bad_parent_id": "ParentId",
                  "bad_creation_date": "CreationDate"}


def type_batch(table: str, raw: dict[str, pa.Array | list[str | None]]) -> Result:
    """Pure transform: source strings (Kaggle column names) -> typed rows + rejected rows.

    Checks per row here are those that need no other row; duplicates and orphans need the
    whole stream and are decided by `Ingester`.
    """
    cols = {c: as_strings(raw[c]) for c in KAGGLE_COLUMNS[table]}
    n = len(cols["Id"])
    ids = _parse_int(cols["Id"])
    scores = _parse_int(cols["Score"])
    # An owner is absent when missing (NA, nan, ...); a present one that is no integer is unreadable.
    owner_raw = cols["OwnerUserId"]
    absent = _missing(owner_raw)
    owner_ids = _parse_int(pc.if_else(pa.array(absent), pa.scalar(None, pa.string()), owner_raw))
    parents = _parse_int(cols["ParentId"]) if table == "answers" else None
    dates, bad_date = _parse_dates(cols["CreationDate"])

    is_reason = {
        "bad_id": _mask(ids.is_null()),
        "missing_score": _missing(cols["Score"]),
        "non_numeric_score": _mask(scores.is_null()),
        "bad_parent_id": _mask(parents.is_null()) if parents is not None else None,
        "bad_creation_date": bad_date,
        "empty_body": _blank(cols["Body"]),
        "empty_title": _blank(cols["Title"]) if table == "questions" else None,
    }
    code = np.zeros(n, np.int8)          # 0: kept, k: _REASONS[k - 1]
    for k in range(len(_REASONS), 0, -1):   # higher-priority reasons are written last and win
        hit = is_reason[_REASONS[k - 1]]
        if hit is not None:
            code[hit] = k
    rejected = code > 0
    bad = np.flatnonzero(rejected)
    keep = pa.array(np.flatnonzero(~rejected))

    bad_reasons = [_REASONS[k - 1] for k in code[bad].tolist()]
    pos = pa.array(bad)
    source = {c: cols[c].take(pos).to_pylist() for c in {*_DETAIL_COLUMN.values(), "Id"} if c in cols}
    details = [(source[_DETAIL_COLUMN[r]][k] or "") if r in _DETAIL_COLUMN else "" for k, r in enumerate(bad_reasons)]
    repaired = Counter()
    unreadable = int(np.count_nonzero(~absent & _mask(owner_ids.is_null()) & ~rejected))
    if unreadable:
        repaired["owner_unreadable"] = unreadable   # kept; owner set to null

    out = {"id": ids.take(keep), "owner_user_id": owner_ids.take(keep)}
    out["creation_date"] = dates.take(keep)
    if table == "answers":
        out["parent_id"] = parents.take(keep)
    out["score"] = scores.take(keep)
    if table == "questions":
        out["title"] = cols["Title"].take(keep)
    out["body"] = cols["Body"].take(keep)
    kept = to_frame(pa.table(out))
    bad_ids = ids.take(pos).to_pylist()
    return Result(kept=kept, rejected=rejects(table, bad_ids, bad_reasons, details, source["Id"]),
                  repaired=repaired)


# ----------------------------------------------------------------------------- stream-level checks
def _member(values: pd.Series, ids: set[int]) -> pd.Series:
    """values.isin(ids) for a set that grows over the stream: Series.isin turns the whole set into
    an array on every call (a 600k-id set for each batch of answers at Kaggle size); lookups do not."""
    return pd.Series([v in ids for v in values.tolist()], index=values.index, dtype=bool)


def tag_list(text: str | None) -> list[str]:
    """A post's tags, lower-cased, from the dump's <python><list> form or a list separated by
    '|', ',', ';' or spaces (BigQuery writes python|list)."""
    if not text:
        return []
    text = text.lower()
    return re.findall(r"<([^<>]+)>", text) if "<" in text else [t for t in re.split(r"[\s|,;]+", text) if t]


@dataclass(frozen=True)
class IngestOptions:
    source: Source
    tags: frozenset[str]                 # keep questions carrying any of these (empty: keep all)
    ignored: set[str]                    # source columns no stage reads, filled as they are met

    @property
    def tags_per_row(self) -> bool:
        """The tags come with each question (a column or attribute), not from Kaggle's Tags.csv."""
        return bool(self.tags) and self.source.layout not in ("kaggle_folder", "kaggle_zip")


class Ingester:
    """Decides each batch of source rows, with what it needs of the rows before: duplicate ids,
    answers whose question is not (or not yet) kept, questions outside ingest.tags."""

    def __init__(self, opts: IngestOptions | None = None) -> None:
        self.opts = opts
        self.seen: dict[str, set[int]] = {"questions": set(), "answers": set()}
        self.kept_questions: set[int] = set()
        self.rejected_questions: set[int] = set()   # their answers are question_rejected, not orphans
        self.unselected: set[int] = set()           # questions outside ingest.tags: their answers follow them
        self.questions_complete = False    # CSV: all questions are read before any answer
        self.pending: list[pd.DataFrame] = []     # XML: answers read before their question
        self.tagged_ids: set[int] | None = None   # Kaggle: questions with a wanted tag, from Tags.csv
        if opts is not None and opts.tags and not opts.tags_per_row:
            self.tagged_ids = tagged_question_ids(opts.source, opts.tags, _parse_int)

    @property
    def extra(self) -> dict[str, Any]:
        """Audit facts: the layout read and the source columns no stage reads."""
        if self.opts is None:
            return {}
        return {"layout": self.opts.source.layout, "ignored_columns": sorted(self.opts.ignored)}

    def feed(self, raw: Raw) -> list[tuple[str, Result]]:
        table, cols = raw.table, dict(raw.data)
        if cols.pop("_questions_complete", False):
            self.questions_complete = True
        bad_rows = cols.pop("_bad_rows", [])
        repaired_utf8 = cols.pop("_repaired_utf8", [0])[0]
        cols = {c: as_strings(v) for c, v in cols.items()}
        out: list[tuple[str, Result]] = []
        if bad_rows:
            out.append((table, Result.rejected_only(rejects(table, [None] * len(bad_rows), ["malformed_csv_row"] * len(bad_rows),
                                                     bad_rows, [None] * len(bad_rows)))))
        if table == "other_posts":
            n = len(cols["Id"])
            out.append((table, Result.rejected_only(rejects(table, _parse_int(cols["Id"]).to_pylist(),
                                                     ["not_question_or_answer"] * n,
                                                     [f"PostTypeId={t}" for t in cols["PostTypeId"].to_pylist()],
                                                     cols["Id"].to_pylist()))))
            return out
        if len(cols["Id"]) == 0:
            return out
        cols, dup_ids = self._first_occurrences(table, cols)
        later: list[pd.DataFrame] = []
        if dup_ids:
            later.append(rejects(table, dup_ids, ["duplicate_id"] * len(dup_ids),
                                 ["id seen earlier in the source"] * len(dup_ids)))
        if table == "questions" and self.opts is not None and self.opts.tags:
            cols, unselected = self._select_tags(cols)
            out.append((table, Result.rejected_only(unselected)))
        cols.pop("Tags", None)
        res = type_batch(table, cols)
        if repaired_utf8:
            res.repaired["invalid_utf8"] += repaired_utf8
        kept = res.kept
        if table == "questions":
            self.kept_questions.update(kept["id"].tolist())
            self.rejected_questions.update(i for i in res.rejected["id"].tolist() if not pd.isna(i))
        else:
            has_parent = _member(kept["parent_id"], self.kept_questions)
            # An answer whose question was seen and not kept is decided now (the first occurrence of
            # an id wins, so it never will be): only answers before their question wait.
            decided = has_parent | _member(kept["parent_id"], self.seen["questions"])
            if self.questions_complete:
                decided[:] = True
            later.append(self._orphan_rejects(kept[decided & ~has_parent]))
            if (~decided).any():
                self.pending.append(kept[~decided])   # its question may still come (XML order)
            kept = kept[has_parent]
        out.append((table, Result(kept=kept.reset_index(drop=True), rejected=res.rejected, repaired=res.repaired)))
        out += [(table, Result.rejected_only(r)) for r in later]
        return out

    def _select_tags(self, cols: dict[str, pa.Array]) -> tuple[dict[str, pa.Array], pd.DataFrame]:
        """Questions carrying a wanted tag go on; the rest are rejected tag_not_selected (their ids
        kept, for their answers)."""
        ids = _parse_int(cols["Id"]).to_pylist()
        if self.tagged_ids is not None:
            keep = np.array([i in self.tagged_ids for i in ids], bool)
            texts = [""] * len(ids)
        else:
            texts = cols["Tags"].to_pylist()
            keep = np.array([not self.opts.tags.isdisjoint(tag_list(t)) for t in texts], bool)
        drop = np.flatnonzero(~keep)
        self.unselected.update(ids[k] for k in drop.tolist() if ids[k] is not None)
        wanted = ",".join(sorted(self.opts.tags))
        rej = rejects("questions", [ids[k] for k in drop.tolist()], ["tag_not_selected"] * len(drop),
                      [f"tags {texts[k] or '(none)'} not in [{wanted}]"[:300] for k in drop.tolist()],
                      cols["Id"].take(pa.array(drop)).to_pylist())
        if len(drop):
            cols = {c: v.filter(pa.array(keep)) for c, v in cols.items()}
        return cols, rej

    def _first_occurrences(self, table: str, cols: dict[str, pa.Array]) -> tuple[dict[str, pa.Array], list[int]]:
        """Duplicates: the first occurrence in the source wins, later rows with its id are rejected (ids
        are the join keys). Decided before typing, so a row rejected for another defect still owns
        its id: a later row cannot bring that id back with other content."""
        seen = self.seen[table]
        dup_pos, dup_ids = [], []
        for pos, i in enumerate(_parse_int(cols["Id"]).to_pylist()):
            if i is not None and i in seen:
                dup_pos.append(pos)
                dup_ids.append(i)
            elif i is not None:
                seen.add(i)
        if dup_pos:
            first = np.ones(len(cols["Id"]), bool)
            first[dup_pos] = False
            cols = {c: vals.filter(pa.array(first)) for c, vals in cols.items()}
        return cols, dup_ids

    def _orphan_rejects(self, orphans: pd.DataFrame) -> pd.DataFrame:
        if orphans.empty:
            return empty_rejects()
        parents = orphans["parent_id"].tolist()
        reasons = ["tag_not_selected" if p in self.unselected
                   else "question_rejected" if p in self.seen["questions"] or p in self.rejected_questions
                   else "orphan_answer" for p in parents]
        details = [f"ParentId={p}" for p in parents]
        return rejects("answers", orphans["id"].tolist(), reasons, details)

    def finish(self) -> list[tuple[str, Result]]:
        if not self.pending:
            return []
        pend = pd.concat(self.pending, ignore_index=True)
        has_parent = _member(pend["parent_id"], self.kept_questions)
        return [("answers", Result(kept=pend[has_parent].reset_index(drop=True),
                                   rejected=self._orphan_rejects(pend[~has_parent])))]


def read(opts: IngestOptions, runtime: Runtime) -> Iterator[Raw]:
    """The source's rows in batches: a Kaggle folder or zip (every question, then every answer),
    a Posts.xml or one posts file (questions and answers as they come)."""
    src = opts.source
    if src.layout in ("kaggle_folder", "kaggle_zip"):
        tables = ((t, raw | {"_questions_complete": t == "answers"}) for t, raw in kaggle_tables(src, opts.ignored))
    elif src.layout == "posts_xml":
        attributes: set[str] = set()
        tables = _posts_xml(src, opts, runtime, attributes)
    else:
        opts.ignored.update(src.ignored)
        tables = posts_tables(src, runtime.batch_rows, opts.tags_per_row)
    for table, raw in tables:
        yield Raw("other_posts" if table == "other" else table, len(raw["Id"]) + len(raw.get("_bad_rows", [])), raw)
    if src.layout == "posts_xml":
        opts.ignored.update(attributes - set(KNOWN))


def _posts_xml(src: Source, opts: IngestOptions, runtime: Runtime, attributes: set[str]) -> Iterator[tuple[str, Any]]:
    """A Posts.xml's batches: a plain one-row-a-line dump parsed in byte ranges where the executor
    runs them (core ray, or the local pool when posts_ranges.LOCAL_POOL), else the serial parse."""
    def serial() -> Iterator[tuple[str, Any]]:
        return read_posts_xml(src.path, runtime.batch_rows, opts.tags_per_row, src.compression, attributes)

    ranged = posts_ranges.plan(src.path, runtime) if src.compression is None else None
    if not ranged:
        return serial()
    columns = {"questions": KAGGLE_COLUMNS["questions"] + (["Tags"] if opts.tags_per_row else []),
               "answers": KAGGLE_COLUMNS["answers"]}
    return posts_ranges.read(ranged, runtime, columns, serial, attributes)


def _tags(value: Any) -> frozenset[str]:
    """ingest.tags: a list of tag names (empty or null: every question)."""
    if value is None:
        return frozenset()
    ok = isinstance(value, list) and all(isinstance(t, str) and re.fullmatch(r"[^\s<>|,;]+", t) for t in value)
    if not ok:
        raise StageError(f"params.yaml: ingest.tags must be a list of tag names such as [python, pandas] "
                         f"(empty: keep every question), got {value!r}")
    return frozenset(t.lower() for t in value)


def options(params: dict[str, Any]) -> IngestOptions:
    """The source's layout, recognised before any work (an unknown one is refused in one line)."""
    value = params["ingest"]["source"]
    if not isinstance(value, str) or not value.strip():
        raise StageError(f"params.yaml: ingest.source must be a path to a folder or file, got {value!r}")
    tags = _tags(params["ingest"].get("tags"))
    path = Path(value)
    if not path.exists():
        raise StageError(f"ingest: {path}: no such file or folder (ingest.source in params.yaml)")
    source = detect(path)
    if tags and not source.has_tags:
        where = "no Tags.csv beside Questions.csv" if source.layout.startswith("kaggle") else "no Tags column"
        raise StageError(f"ingest: {path}: ingest.tags is {sorted(tags)} but the source has {where}")
    return IngestOptions(source, tags, set())


# ----------------------------------------------------------------------------- expectations
_COLUMNS = {"questions": [c.name for c in QUESTION_SCHEMA], "answers": [c.name for c in ANSWER_SCHEMA]}


def checks(params: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    for table, cols in _COLUMNS.items():
        out.append(Check(table, "schema", "ExpectTableColumnsToMatchOrderedList", {"column_list": cols},
                         "later stages and the Kaggle schema rely on exactly these columns"))
        for c in cols:
            # GX reports pandas' Arrow-backed strings as "str" and UTC timestamps as "Timestamp".
            typ = "str" if c in ("title", "body") else ("Timestamp" if c == "creation_date" else "int64")
            out.append(Check(table, "schema", "ExpectColumnValuesToBeOfType", {"column": c, "type_": typ},
                             "typed columns: ids and scores integers, dates timestamps, texts strings"))
        out.append(Check(table, "keys", "ExpectColumnValuesToBeUnique", {"column": "id"},
                         "a post id names one post: duplicates would double-count and leak across splits"))
        out.append(Check(table, "keys", "ExpectColumnValuesToNotBeNull", {"column": "id"},
                         "rows with unreadable ids are rejected at ingest, never kept"))
        out.append(Check(table, "keys", "ExpectColumnValuesToNotBeNull", {"column": "score"},
                         "scores are integers for every kept row: filtering and ranking read them"))
    out.append(Check("answers", "keys", "ExpectColumnValuesToNotBeNull", {"column": "parent_id"},
                     "an answer without a question cannot become a training pair"))
    return out


def frames(out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    for table, extra in (("questions", []), ("answers", ["parent_id"])):
        path = out / f"{table}.parquet"
        yield table, "schema", to_frame(pq.read_schema(path).empty_table())    # types without reading data
        yield table, "keys", to_frame(pq.read_table(path, columns=["id", "score", *extra]))


STAGE = StreamStage(
    name="ingest", module="stages.curate.ingest", reads=("${ingest.source}",), writes="data/raw",
    params=("ingest.source", "ingest.tags"), options=options, audit=("ingest.source", "ingest.tags"),
    read=read,
    decider=Ingester,
    suite=Suite(checks=checks, frames=frames, ids={"questions": ["id"], "answers": ["id"]}),
)

if __name__ == "__main__":
    run(STAGE)
