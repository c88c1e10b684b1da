"""Stage 1, ingest: Kaggle CSVs or a Stack Exchange Posts.xml -> typed data/raw/{questions,answers}.parquet.

A stream stage (core.runner.StreamStage): one pass over the source, where a row's fate may
depend on rows read earlier (duplicate ids) or later (an answer before its question in XML).

Unreadable rows (bad id, missing or non-numeric score, duplicate id, empty body, orphan answer)
are rejected with a reason; invalid UTF-8 is repaired per row, never by decoding a whole file
as latin-1 (which turns every valid é into Ã©).
"""
from __future__ import annotations

import codecs
import re
from collections import Counter
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

KAGGLE_COLUMNS = {
    "questions": ["Id", "OwnerUserId", "CreationDate", "Score", "Title", "Body"],
    "answers": ["Id", "OwnerUserId", "CreationDate", "ParentId", "Score", "Body"],
}
CSV_FILES = {"questions": "Questions.csv", "answers": "Answers.csv"}
_INT = re.compile(r"^\s*[+-]?\d{1,18}\s*$")
_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")


# ----------------------------------------------------------------------------- per-row UTF-8 repair
def _cp1252_fallback(err: UnicodeDecodeError) -> tuple[str, int]:
    # Invalid bytes in a mostly-UTF-8 row are almost always Windows-1252 text pasted in:
    # decode just those bytes that way and keep the row's valid UTF-8 as it is.
    bad = err.object[err.start:err.end]
    return bad.decode("cp1252", errors="replace").replace("\ufffd", ""), err.end


codecs.register_error("soqa_cp1252", _cp1252_fallback)


def decode_row(raw: bytes) -> tuple[str, bool]:
    """Decode one field as UTF-8; on invalid bytes decode only those as cp1252. Returns (text, repaired)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="soqa_cp1252"), True


def decode_column(col: pa.Array) -> tuple[pa.Array, int]:
    """Binary column -> an Arrow string column; fast path when the whole batch is valid UTF-8."""
    try:
        return pc.cast(col, pa.string()), 0
    except pa.ArrowInvalid:
        out, repaired = [], 0
        for raw in col.to_pylist():
            if raw is None:
                out.append(None)
                continue
            text, fixed = decode_row(raw)
            repaired += fixed
            out.append(text)
        return pa.array(out, pa.string()), repaired


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
    return int(v) if v is not None and ((v.isascii() and v.isdigit() and len(v) <= 18) or _INT.match(v)) else None


def _parse_int(values: pa.Array | list[str | None]) -> pa.Array:
    """Strings -> int64, null where a value is not an integer (surrounding spaces and a sign allowed)."""
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


def _parse_dates(values: pa.Array | list[str | None]) -> pa.Array | list[Any]:
    """Arrow timestamps (one format for the whole batch), or Python datetimes row by row (mixed formats)."""
    arr = as_strings(values)
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)    # "" is a missing date
    for fmt in _DATE_FORMATS:
        parsed = pc.strptime(arr, format=fmt, unit="s", error_is_null=True)
        if parsed.null_count == arr.null_count:
            return parsed
    # Mixed formats: row by row.
    out = []
    for v in arr.to_pylist():
        ts = pd.to_datetime(v, errors="coerce", utc=True) if v else pd.NaT
        out.append(None if pd.isna(ts) else ts.tz_localize(None).to_pydatetime())
    return out


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
    # An owner is absent when null, empty or "NA"; a present one that is no integer is unreadable.
    owner_raw = cols["OwnerUserId"]
    absent = _confirm(owner_raw, ~_mask(pc.match_substring_regex(owner_raw, _PLAIN_INT)),
                      lambda o: o is None or o.strip() in ("", "NA"))
    owner_ids = _parse_int(pc.if_else(pa.array(absent), pa.scalar(None, pa.string()), owner_raw))
    parents = _parse_int(cols["ParentId"]) if table == "answers" else None
    dates = _parse_dates(cols["CreationDate"])
    date_null = _mask(dates.is_null()) if isinstance(dates, pa.Array) else np.array([d is None for d in dates], bool)

    is_reason = {
        "bad_id": _mask(ids.is_null()),
        "missing_score": _blank(cols["Score"]),
        "non_numeric_score": _mask(scores.is_null()),
        "bad_parent_id": _mask(parents.is_null()) if parents is not None else None,
        "bad_creation_date": date_null & _mask(pc.not_equal(cols["CreationDate"], "")),
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
    out["creation_date"] = (pc.cast(dates.take(keep), pa.timestamp("s", tz="UTC")) if isinstance(dates, pa.Array)
                            else pa.array([None] * len(keep), pa.timestamp("s", tz="UTC")))
    if table == "answers":
        out["parent_id"] = parents.take(keep)
    out["score"] = scores.take(keep)
    if table == "questions":
        out["title"] = cols["Title"].take(keep)
    out["body"] = cols["Body"].take(keep)
    kept = to_frame(pa.table(out))
    if not isinstance(dates, pa.Array):      # mixed formats: converted by pandas as before
        kept["creation_date"] = pd.to_datetime(pd.Series([dates[i] for i in keep.to_pylist()], dtype="object"),
                                               utc=True).astype("datetime64[s, UTC]")
    bad_ids = ids.take(pos).to_pylist()
    return Result(kept=kept, rejected=rejects(table, bad_ids, bad_reasons, details, source["Id"]),
                  repaired=repaired)


# ----------------------------------------------------------------------------- readers
def _check_readable(path: Path) -> None:
    if not path.exists():
        raise StageError(f"ingest: {path}: file not found")
    if path.is_dir():
        raise StageError(f"ingest: {path}: is a folder, expected a file")
    if path.stat().st_size == 0:
        raise StageError(f"ingest: {path}: file is empty")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    # A few NULs inside a row's body are a repairable defect of that row; NULs in the header line,
    # or bytes that are mostly NUL / not UTF-8, mean the file is not text (zip, image, UTF-16).
    junk = head.count(b"\x00") + head.decode("utf-8", errors="replace").count("\ufffd")
    if b"\x00" in head.split(b"\n", 1)[0] or junk > len(head) // 10:
        raise StageError(f"ingest: {path}: looks like a binary file (NUL or non-UTF-8 bytes in its first 4 KB), "
                         "not CSV/XML text")


def _check_quotes_closed(path: Path, block_bytes: int = 16 << 20) -> None:
    """A file cut inside a quoted field is truncated: pyarrow would silently keep the cut row as the last one.

    Quoted fields hold their quotes in pairs ("" escapes one), so a whole file holds an even number.
    """
    quotes = 0
    buf = bytearray(block_bytes)     # one buffer, refilled: a fresh bytes object per block costs more than the count
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            quotes += int(np.count_nonzero(np.frombuffer(buf, np.uint8, n) == ord('"')))
    if quotes % 2:
        raise StageError(f"ingest: {path}: truncated CSV: the file ends inside a quoted field "
                         "(odd number of '\"' characters)")


def read_kaggle_csv(path: Path, table: str, block_bytes: int = 16 << 20) -> Iterator[dict[str, Any]]:
    """Stream a Kaggle CSV as batches of decoded Arrow string columns (multi-line quoted HTML, CRLF, NA owners)."""
    import pyarrow.csv as pacsv

    _check_readable(path)
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8-sig", errors="replace").strip()
    header = [h.strip().strip('"') for h in first.split(",")]
    expected = KAGGLE_COLUMNS[table]
    missing = [c for c in expected if c not in header]
    if missing:
        raise StageError(f"ingest: {path}: missing columns {missing} (found {header[:10]}); "
                         f"expected the Kaggle schema {expected}")
    _check_quotes_closed(path)
    bad_rows: list[str] = []

    def on_invalid(row: Any) -> str:
        bad_rows.append(f"line {row.number}: {row.actual_columns} fields, expected {row.expected_columns}")
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=True),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in header}, include_columns=expected,
                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]),
        )
        for batch in reader:
            out: dict[str, Any] = {}
            repaired = 0
            for c in expected:
                out[c], r = decode_column(batch.column(c))
                repaired += r if c in ("Title", "Body") else 0
            out["_repaired_utf8"] = [repaired]  # type: ignore[list-item]
            out["_bad_rows"] = list(bad_rows)   # type: ignore[assignment]
            bad_rows.clear()
            yield out
    except pa.ArrowInvalid as exc:
        msg = str(exc).splitlines()[0]
        if "quote" in msg.lower() or "end of file" in msg.lower() or "truncat" in msg.lower():
            msg = f"truncated or malformed CSV ({msg})"
        raise StageError(f"ingest: {path}: {msg}") from None
    if bad_rows:
        yield {c: [] for c in expected} | {"_repaired_utf8": [0], "_bad_rows": list(bad_rows)}  # type: ignore[dict-item]


def read_posts_xml(path: Path, batch_rows: int) -> Iterator[tuple[str, dict[str, list[str | None]]]]:
    """Stream a Stack Exchange Posts.xml (row elements) without building the tree.

    defusedxml refuses DTD entity declarations and external references outright: a dump
    never needs them, and they are the billion-laughs and XXE attacks.
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse
    import xml.etree.ElementTree as ET

    _check_readable(path)
    cols = {"questions": KAGGLE_COLUMNS["questions"], "answers": KAGGLE_COLUMNS["answers"]}
    buf: dict[str, dict[str, list]] = {t: {c: [] for c in cs} for t, cs in cols.items()}
    other = {"Id": [], "PostTypeId": []}
    try:
        it = iterparse(str(path), events=("end",), forbid_dtd=False, forbid_entities=True, forbid_external=True)
        for _, el in it:
            if el.tag != "row":
                continue
            a = el.attrib
            kind = a.get("PostTypeId")
            table = "questions" if kind == "1" else "answers" if kind == "2" else None
            if table is None:
                other["Id"].append(a.get("Id"))
                other["PostTypeId"].append(kind)
            else:
                b = buf[table]
                for c in cols[table]:
                    b[c].append(a.get(c, ""))
                if len(b["Id"]) >= batch_rows:
                    yield table, b
                    buf[table] = {c: [] for c in cols[table]}
            el.clear()
            if len(other["Id"]) >= batch_rows:
                yield "other", other
                other = {"Id": [], "PostTypeId": []}
    except DefusedXmlException as exc:
        raise StageError(f"ingest: {path}: refused unsafe XML ({type(exc).__name__}: {exc})") from None
    except ET.ParseError as exc:
        raise StageError(f"ingest: {path}: malformed or truncated XML ({exc})") from None
    for table, b in buf.items():
        if b["Id"]:
            yield table, b
    if other["Id"]:
        yield "other", other


# ----------------------------------------------------------------------------- stream-level checks
def _member(values: pd.Series, ids: set[int]) -> pd.Series:
    """values.isin(ids) for a set that grows over the stream: Series.isin turns the whole set into
    an array on every call (a 600k-id set for each batch of answers at Kaggle size); lookups do not."""
    return pd.Series([v in ids for v in values.tolist()], index=values.index, dtype=bool)


class Ingester:
    """Decides each batch of source rows, with what it needs of the rows before: duplicate ids
    and answers whose question is not (or not yet) kept."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {"questions": set(), "answers": set()}
        self.kept_questions: set[int] = set()
        self.rejected_questions: set[int] = set()   # their answers are question_rejected, not orphans
        self.questions_complete = False    # CSV: all questions are read before any answer
        self.pending: list[pd.DataFrame] = []     # XML: answers read before their question

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
        res = type_batch(table, cols)
        if repaired_utf8:
            res.repaired["invalid_utf8"] += repaired_utf8
        kept = res.kept
        later: list[pd.DataFrame] = []
        if dup_ids:
            later.append(rejects(table, dup_ids, ["duplicate_id"] * len(dup_ids),
                                 ["id seen earlier in the source"] * len(dup_ids)))
        if table == "questions":
            self.kept_questions.update(kept["id"].tolist())
            self.rejected_questions.update(i for i in res.rejected["id"].tolist() if not pd.isna(i))
        else:
            has_parent = _member(kept["parent_id"], self.kept_questions)
            if self.questions_complete:
                later.append(self._orphan_rejects(kept[~has_parent]))
            elif (~has_parent).any():
                self.pending.append(kept[~has_parent])   # its question may still come (XML order)
            kept = kept[has_parent]
        out.append((table, Result(kept=kept.reset_index(drop=True), rejected=res.rejected, repaired=res.repaired)))
        out += [(table, Result.rejected_only(r)) for r in later]
        return out

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
        parents = orphans["parent_id"]
        known = _member(parents, self.seen["questions"]) | _member(parents, self.rejected_questions)
        reasons = ["question_rejected" if k else "orphan_answer" for k in known.tolist()]
        details = [f"ParentId={p}" for p in orphans["parent_id"].tolist()]
        return rejects("answers", orphans["id"].tolist(), reasons, details)

    def finish(self) -> list[tuple[str, Result]]:
        if not self.pending:
            return []
        pend = pd.concat(self.pending, ignore_index=True)
        has_parent = _member(pend["parent_id"], self.kept_questions)
        return [("answers", Result(kept=pend[has_parent].reset_index(drop=True),
                                   rejected=self._orphan_rejects(pend[~has_parent])))]


def read(source: Path, runtime: Runtime) -> Iterator[Raw]:
    """The source's rows in batches: a Kaggle folder (every question, then every answer) or a Posts.xml."""
    if source.is_dir():
        for table in ("questions", "answers"):
            complete = table == "answers"
            for raw in read_kaggle_csv(source / CSV_FILES[table], table):
                n = len(raw["Id"]) + len(raw["_bad_rows"])
                yield Raw(table, n, raw | {"_questions_complete": complete})
    else:
        _check_readable(source)
        ranged = posts_ranges.plan(source, runtime)     # a one-row-a-line dump, parsed in byte ranges
        batches = (posts_ranges.read(ranged, runtime, KAGGLE_COLUMNS, lambda: read_posts_xml(source, runtime.batch_rows))
                   if ranged else read_posts_xml(source, runtime.batch_rows))
        for table, raw in batches:
            yield Raw("other_posts" if table == "other" else table, len(raw["Id"]), raw)


def options(params: dict[str, Any]) -> Path:
    source = Path(params["ingest"]["source"])
    if not source.exists():
        raise StageError(f"ingest: {source}: no such file or folder (ingest.source in params.yaml)")
    return source


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
    params=("ingest.source",), options=options, audit=("ingest.source",),
    read=read,
    decider=lambda source: Ingester(),
    suite=Suite(checks=checks, frames=frames, ids={"questions": ["id"], "answers": ["id"]}),
)

if __name__ == "__main__":
    run(STAGE)
