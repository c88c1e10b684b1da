"""Stage 1, ingest: Kaggle CSVs or a Stack Exchange Posts.xml -> typed data/raw/{questions,answers}.parquet.

Unreadable rows (bad id, missing or non-numeric score, duplicate id, empty body, orphan answer)
are rejected with a reason; invalid UTF-8 is repaired per row, never by decoding a whole file
as latin-1 (which turns every valid é into Ã©).
"""
from __future__ import annotations

import codecs
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.common import (BatchResult, DATA, Ledger, ParquetSink, QUESTION_SCHEMA, ANSWER_SCHEMA,
                           StageError, atomic_path, rejects, stage_main, _tmp_sibling)

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


def decode_column(col: pa.Array) -> tuple[list[str | None], int]:
    """Binary column -> Python strings; fast path when the whole batch is valid UTF-8."""
    try:
        return pc.cast(col, pa.string()).to_pylist(), 0
    except pa.ArrowInvalid:
        out, repaired = [], 0
        for raw in col.to_pylist():
            if raw is None:
                out.append(None)
                continue
            text, fixed = decode_row(raw)
            repaired += fixed
            out.append(text)
        return out, repaired


# ----------------------------------------------------------------------------- typing one batch
def _parse_int(values: list[str | None]) -> list[int | None]:
    # Plain ASCII digits (nearly every value) skip the regex; the result is the same.
    return [int(v) if v is not None and ((v.isascii() and v.isdigit() and len(v) <= 18) or _INT.match(v)) else None
            for v in values]


def _parse_dates(values: list[str | None]) -> list[pd.Timestamp | None]:
    arr = pa.array(values, pa.string())
    for fmt in _DATE_FORMATS:
        parsed = pc.strptime(arr, format=fmt, unit="s", error_is_null=True)
        if parsed.null_count == arr.null_count:
            return parsed.to_pylist()
    # Mixed formats: row by row.
    out = []
    for v in values:
        ts = pd.to_datetime(v, errors="coerce", utc=True) if v else pd.NaT
        out.append(None if pd.isna(ts) else ts.tz_localize(None).to_pydatetime())
    return out


def type_batch(table: str, raw: dict[str, list[str | None]]) -> BatchResult:
    """Pure transform: source strings (Kaggle column names) -> typed rows + rejected rows.

    Checks per row here are those that need no other row; duplicates and orphans need the
    whole stream and are decided by `Ingester`.
    """
    n = len(raw["Id"])
    ids = _parse_int(raw["Id"])
    scores = _parse_int(raw["Score"])
    owners = [None if o is None or o.strip() in ("", "NA") else o for o in raw["OwnerUserId"]]
    owner_ids = _parse_int(owners)
    dates = _parse_dates([d or None for d in raw["CreationDate"]])
    parents = _parse_int(raw["ParentId"]) if table == "answers" else None
    bodies = raw["Body"]
    titles = raw.get("Title")

    keep = []
    bad_ids, reasons, details, src_ids = [], [], [], []
    repaired = Counter()
    for i in range(n):
        reason = detail = None
        if ids[i] is None:
            reason, detail = "bad_id", raw["Id"][i]
        elif raw["Score"][i] is None or not raw["Score"][i].strip():
            reason, detail = "missing_score", ""
        elif scores[i] is None:
            reason, detail = "non_numeric_score", raw["Score"][i]
        elif parents is not None and parents[i] is None:
            reason, detail = "bad_parent_id", raw["ParentId"][i]
        elif raw["CreationDate"][i] and dates[i] is None:
            reason, detail = "bad_creation_date", raw["CreationDate"][i]
        elif bodies[i] is None or not bodies[i] or bodies[i].isspace():   # = not .strip(), without a copy
            reason, detail = "empty_body", ""
        elif titles is not None and (titles[i] is None or not titles[i] or titles[i].isspace()):
            reason, detail = "empty_title", ""
        if reason:
            bad_ids.append(ids[i])
            src_ids.append(raw["Id"][i])
            reasons.append(reason)
            details.append(detail or "")
        else:
            keep.append(i)
        if owners[i] is not None and owner_ids[i] is None and reason is None:
            repaired["owner_unreadable"] += 1   # kept; owner set to null

    def pick(values):
        return [values[i] for i in keep]

    cols: dict[str, Any] = {
        "id": pd.array(pick(ids), dtype="Int64"),
        "owner_user_id": pd.array(pick(owner_ids), dtype="Int64"),
        "creation_date": pd.to_datetime(pd.Series(pick(dates), dtype="object"), utc=True).astype("datetime64[s, UTC]"),
    }
    if table == "answers":
        cols["parent_id"] = pd.array(pick(parents), dtype="Int64")
    cols["score"] = pd.array(pick(scores), dtype="Int64")
    if table == "questions":
        cols["title"] = pick(titles)
    cols["body"] = pick(bodies)
    kept = pd.DataFrame(cols)
    return BatchResult(kept=kept, rejected=rejects(table, bad_ids, reasons, details, src_ids), repaired=repaired)


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
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            quotes += block.count(b'"')
    if quotes % 2:
        raise StageError(f"ingest: {path}: truncated CSV: the file ends inside a quoted field "
                         "(odd number of '\"' characters)")


def read_kaggle_csv(path: Path, table: str, block_bytes: int = 16 << 20) -> Iterator[dict[str, list[str | None]]]:
    """Stream a Kaggle CSV as batches of decoded strings (multi-line quoted HTML, CRLF, NA owners)."""
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
            out: dict[str, list[str | None]] = {}
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
class Ingester:
    """Adds the checks that need the whole stream: duplicate ids and answers without a question."""

    def __init__(self, ledger: Ledger, q_sink: ParquetSink, a_sink: ParquetSink):
        self.ledger, self.q_sink, self.a_sink = ledger, q_sink, a_sink
        self.seen = {"questions": set(), "answers": set()}
        self.kept_questions: set[int] = set()
        self.rejected_questions: set[int] = set()   # their answers are question_rejected, not orphans
        self.questions_complete = False    # CSV: all questions are read before any answer
        self.pending: list[pd.DataFrame] = []

    def feed(self, table: str, raw: dict[str, list]) -> None:
        bad_rows = raw.pop("_bad_rows", [])
        repaired_utf8 = raw.pop("_repaired_utf8", [0])[0]
        if bad_rows:
            self.ledger.count_in(table, len(bad_rows))
            self.ledger.reject(rejects(table, [None] * len(bad_rows), ["malformed_csv_row"] * len(bad_rows),
                                       bad_rows, [None] * len(bad_rows)))
        if table == "other":
            n = len(raw["Id"])
            self.ledger.count_in("other_posts", n)
            self.ledger.reject(rejects("other_posts", _parse_int(raw["Id"]), ["not_question_or_answer"] * n,
                                       [f"PostTypeId={t}" for t in raw["PostTypeId"]], raw["Id"]))
            return
        n_in = len(raw["Id"])
        if n_in == 0:
            return
        # Duplicates: the first occurrence in the source wins, later rows with its id are rejected (ids
        # are the join keys). Decided before typing, so a row rejected for another defect still owns
        # its id: a later row cannot bring that id back with other content.
        seen = self.seen[table]
        dup_pos, dup_ids = [], []
        for pos, i in enumerate(_parse_int(raw["Id"])):
            if i is not None and i in seen:
                dup_pos.append(pos)
                dup_ids.append(i)
            elif i is not None:
                seen.add(i)
        if dup_pos:
            drop = set(dup_pos)
            raw = {c: [v for pos, v in enumerate(vals) if pos not in drop] for c, vals in raw.items()}
        res = type_batch(table, raw)
        if repaired_utf8:
            res.repaired["invalid_utf8"] += repaired_utf8
        kept = res.kept
        rej = [res.rejected]
        if dup_ids:
            rej.append(rejects(table, dup_ids, ["duplicate_id"] * len(dup_ids), ["id seen earlier in the source"] * len(dup_ids)))
        if table == "questions":
            self.kept_questions.update(kept["id"].tolist())
            self.rejected_questions.update(i for i in res.rejected["id"].tolist() if not pd.isna(i))
        else:
            has_parent = kept["parent_id"].isin(self.kept_questions)
            if self.questions_complete:
                orphans = kept[~has_parent]
                rej.append(self._orphan_rejects(orphans))
            elif (~has_parent).any():
                self.pending.append(kept[~has_parent])   # its question may still come (XML order)
                self.ledger.count_in(table, int((~has_parent).sum()))
                n_in -= int((~has_parent).sum())
            kept = kept[has_parent]
        self.ledger.count_in(table, n_in)
        self.ledger.count_out(table, len(kept))
        for r in rej:
            self.ledger.reject(r)
        self.ledger.repaired.update(res.repaired)
        (self.q_sink if table == "questions" else self.a_sink).write(kept.reset_index(drop=True))

    def _orphan_rejects(self, orphans: pd.DataFrame) -> pd.DataFrame:
        known = orphans["parent_id"].isin(self.seen["questions"]) | orphans["parent_id"].isin(self.rejected_questions)
        reasons = ["question_rejected" if k else "orphan_answer" for k in known.tolist()]
        details = [f"ParentId={p}" for p in orphans["parent_id"].tolist()]
        return rejects("answers", orphans["id"].tolist(), reasons, details)

    def finish(self) -> None:
        if not self.pending:
            return
        pend = pd.concat(self.pending, ignore_index=True)
        has_parent = pend["parent_id"].isin(self.kept_questions)
        self.ledger.reject(self._orphan_rejects(pend[~has_parent]))
        self.ledger.count_out("answers", int(has_parent.sum()))
        self.a_sink.write(pend[has_parent].reset_index(drop=True))


def ingest(source: Path, out_dir: Path, ledger: Ledger, batch_rows: int, progress: Any = None) -> None:
    """Read `source` (Kaggle folder or Posts.xml) into typed parquet files under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Ingest never forks: its sinks compress in a thread while the next batch is typed.
    q_sink = ParquetSink(out_dir / "questions.parquet", QUESTION_SCHEMA, background=True)
    a_sink = ParquetSink(out_dir / "answers.parquet", ANSWER_SCHEMA, background=True)
    ing = Ingester(ledger, q_sink, a_sink)
    try:
        if source.is_dir():
            for table in ("questions", "answers"):
                path = source / CSV_FILES[table]
                for raw in read_kaggle_csv(path, table):
                    ing.feed(table, raw)
                    if progress:
                        progress(len(raw["Id"]))
                ing.questions_complete = True
        elif source.suffix.lower() == ".xml" or source.exists():
            for table, raw in read_posts_xml(source, batch_rows):
                ing.feed(table, raw)
                if progress:
                    progress(len(raw["Id"]))
            ing.finish()
        else:
            raise StageError(f"ingest: {source}: no such file or folder (ingest.source in params.yaml)")
    finally:
        q_sink.close()
        a_sink.close()
    ledger.extra["source"] = str(source)


def main() -> None:
    from stages.report_cli import row_progress

    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        source = Path(params["ingest"]["source"])
        if not source.exists():
            raise StageError(f"ingest: {source}: no such file or folder (ingest.source in params.yaml)")
        final = DATA / "raw"
        tmp = _tmp_sibling(final)
        with row_progress("ingest", total=None) as advance:
            ingest(source, tmp, ledger, int(params["ingest"].get("batch_rows", 20000)), advance)
        return {final: tmp}

    stage_main("ingest", body)


if __name__ == "__main__":
    main()
