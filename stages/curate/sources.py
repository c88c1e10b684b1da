"""Where ingest's rows come from: a source's layout, recognised from its files and columns, and a
streaming reader per format that yields batches of source text under the Kaggle column names.

Layouts (README, "Sources"):
- kaggle_folder: a folder holding Questions.csv and Answers.csv (Tags.csv optional), the Kaggle schema.
- kaggle_zip: the zip Kaggle serves, holding the same files.
- posts_xml: a Stack Exchange Posts.xml, plain, .gz or .bz2.
- posts_csv / posts_jsonl / posts_parquet: one file of posts (csv and jsonl optionally .gz or .bz2),
  questions and answers told apart by PostTypeId or by an empty ParentId, or questions only.

Every layout goes through one normalisation of column names (`canonical`: ParentId = parent_id =
PARENTID) and hands its values on as text, as the source wrote them, for ingest.type_batch to
read (one reading of values for every layout). Compressed input is decompressed while streaming,
and refused as a bomb when it expands more than MAX_RATIO times.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.errors import StageError

KAGGLE_COLUMNS = {
    "questions": ["Id", "OwnerUserId", "CreationDate", "Score", "Title", "Body"],
    "answers": ["Id", "OwnerUserId", "CreationDate", "ParentId", "Score", "Body"],
}
CSV_FILES = {"questions": "Questions.csv", "answers": "Answers.csv"}
TAGS_FILE = "Tags.csv"
KNOWN = ["Id", "PostTypeId", "ParentId", "OwnerUserId", "CreationDate", "Score", "Title", "Body", "Tags"]
OPTIONAL = {"OwnerUserId", "CreationDate"}     # a posts file without them: owners and dates are null
LAYOUTS = ("a folder or the Kaggle zip holding Questions.csv + Answers.csv; a Stack Exchange Posts.xml "
           "(.gz, .bz2); one posts file (.csv, .jsonl, .parquet; .gz) with Id, Score, Title, Body and "
           "PostTypeId or ParentId (or questions only)")
SEVEN_ZIP_HINT = "7z e {path} Posts.xml"      # the one command that extracts a dump's Posts.xml

# A text dump compresses 3-10 times (the Kaggle zip about 3, a Posts.xml.bz2 about 6); a bomb
# thousands of times. Below RATIO_FLOOR bytes of output the ratio is not judged.
MAX_RATIO = 100
RATIO_FLOOR = 32 << 20

_MAGIC = {b"PK\x03\x04": "zip", b"\x1f\x8b": "gzip", b"BZh": "bz2", b"7z\xbc\xaf\x27\x1c": "7z",
          b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
NULL_TOKENS = ("", "na", "nan", "null", "none", "nat", "<na>")   # how tools write a missing value


def column_label(name: str, position: int) -> str:
    """A column's name for the audit; pandas writes its index column with an empty name."""
    return name if name.strip() else f"(unnamed column {position + 1})"


def canonical(name: str) -> str:
    """The Kaggle spelling of a known column name, matched ignoring case, '_', '-' and spaces;
    other names are returned as they are."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _CANON.get(key, name)


_CANON = {c.lower(): c for c in KNOWN}


# ----------------------------------------------------------------------------- bytes in
class _Guarded(io.RawIOBase):
    """A decompressing stream that refuses to expand more than MAX_RATIO times what it consumed,
    and counts the '"' it passes (a CSV cut inside a quoted field holds an odd number)."""

    def __init__(self, inner: BinaryIO, consumed: Callable[[], int], label: str):
        super().__init__()
        self._inner, self._consumed, self._label = inner, consumed, label
        self.out = 0
        self.quotes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._inner.readinto(buf)
        if n:
            self.out += n
            self.quotes += int(np.count_nonzero(np.frombuffer(buf, np.uint8, n) == ord('"')))
            if self.out > RATIO_FLOOR + MAX_RATIO * max(self._consumed(), 1):
                raise StageError(f"ingest: {self._label}: refused as a decompression bomb (expands more than "
                                 f"{MAX_RATIO} times: {self.out} bytes from {self._consumed()})")
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


def sniff(path: Path) -> str | None:
    """The compression or archive kind by magic bytes (zip, gzip, bz2, 7z, xz, zstd), or None."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def open_stream(path: Path, kind: str | None) -> BinaryIO:
    """The file's bytes, decompressed (gzip, bz2) behind the bomb guard, buffered."""
    if kind is None:
        return open(path, "rb")
    raw = open(path, "rb")
    inner = gzip.GzipFile(fileobj=raw) if kind == "gzip" else bz2.BZ2File(raw)
    return io.BufferedReader(_Guarded(inner, raw.tell, str(path)), 1 << 20)


def _check_member(info: zipfile.ZipInfo, label: str) -> None:
    if info.flag_bits & 0x1:
        raise StageError(f"ingest: {label}: {info.filename} is encrypted; extract it first")
    if info.file_size > RATIO_FLOOR + MAX_RATIO * max(info.compress_size, 1):
        raise StageError(f"ingest: {label}: refused as a zip bomb ({info.filename} declares {info.file_size} bytes "
                         f"from {info.compress_size}, more than {MAX_RATIO} times)")


def open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> BinaryIO:
    """One zip member's bytes behind the bomb guard (its declared sizes are checked first)."""
    _check_member(info, label)
    try:
        inner = zf.open(info)
    except NotImplementedError as exc:
        raise StageError(f"ingest: {label}: {info.filename}: {exc}; extract it and give the folder") from None
    return io.BufferedReader(_Guarded(inner, lambda: info.compress_size, f"{label}:{info.filename}"), 1 << 20)


def check_text(head: bytes, label: str) -> None:
    """A few NULs inside a row's body are a repairable defect of that row; NULs in the header line,
    or bytes that are mostly NUL / not UTF-8, mean the file is not text (image, UTF-16)."""
    head = head[:4096]
    junk = head.count(b"\x00") + head.decode("utf-8", errors="replace").count("\ufffd")
    if b"\x00" in head.split(b"\n", 1)[0] or junk > len(head) // 10:
        raise StageError(f"ingest: {label}: looks like a binary file (NUL or non-UTF-8 bytes in its first 4 KB), "
                         "not CSV/XML text")


def check_readable(path: Path) -> None:
    if not path.exists():
        raise StageError(f"ingest: {path}: file not found")
    if path.is_dir():
        raise StageError(f"ingest: {path}: is a folder, expected a file")
    if path.stat().st_size == 0:
        raise StageError(f"ingest: {path}: file is empty")


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Source:
    """A recognised source: its layout and, for one posts file, how its columns map."""
    path: Path
    layout: str                         # kaggle_folder | kaggle_zip | posts_xml | posts_csv | posts_jsonl | posts_parquet
    compression: str | None = None      # gzip | bz2 for a compressed posts file or Posts.xml
    columns: dict[str, str] = field(default_factory=dict)   # Kaggle name -> the source's name (posts files)
    ignored: tuple[str, ...] = ()       # source columns no stage reads
    kind_by: str = ""                   # posts files: PostTypeId | ParentId | questions_only
    has_tags: bool = False              # a Tags column or attribute, or Tags.csv beside the CSVs


def _posts_layout(path: Path, layout: str, compression: str | None, header: list[str]) -> Source:
    """Recognise a one-file posts export from its column names, or refuse in one line."""
    columns: dict[str, str] = {}
    ignored = []
    for k, name in enumerate(header):
        c = canonical(name)
        if c in KNOWN and c not in columns:
            columns[c] = name
        else:
            ignored.append(column_label(name, k))
    kind_by = "PostTypeId" if "PostTypeId" in columns else "ParentId" if "ParentId" in columns else "questions_only"
    need = ["Id", "Score", "Title", "Body"]
    missing = [c for c in need if c not in columns]
    if missing:
        found = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
        hint = (" (answers only? give the folder or zip holding Questions.csv too)"
                if missing == ["Title"] and kind_by == "ParentId" else "")
        raise StageError(f"ingest: {path}: unknown layout{hint}: columns found [{found}], missing {missing}; "
                         f"accepted: {LAYOUTS}")
    return Source(path, layout, compression, columns, tuple(ignored), kind_by, "Tags" in columns)


def _csv_header(head: bytes) -> list[str]:
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    return [h.strip() for h in next(csv.reader([first]), [])]


def _zip_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The zip's members by lower-case file name (Kaggle's zip holds them at the top; a re-zipped
    folder under one folder)."""
    return {Path(i.filename).name.lower(): i for i in zf.infolist() if not i.is_dir()}


def detect(path: Path) -> Source:
    """The source's layout from its files and columns; StageError (one line) when unknown."""
    if path.is_dir():
        files = {p.name.lower(): p for p in path.iterdir() if p.is_file()}
        return Source(path, "kaggle_folder", has_tags=TAGS_FILE.lower() in files)
    check_readable(path)
    kind = sniff(path)
    if kind == "7z":
        raise StageError(f"ingest: {path}: a .7z archive is not read directly; extract its Posts.xml first "
                         f"({SEVEN_ZIP_HINT.format(path=path)}) and set ingest.source to it")
    if kind in ("xz", "zstd"):
        raise StageError(f"ingest: {path}: {kind}-compressed: decompress it first; read compressed are "
                         ".gz, .bz2 and the Kaggle .zip")
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = _zip_members(zf)
        except zipfile.BadZipFile as exc:
            raise StageError(f"ingest: {path}: unreadable zip ({exc})") from None
        if not all(name.lower() in members for name in CSV_FILES.values()):
            raise StageError(f"ingest: {path}: unknown layout: the zip holds {sorted(members)[:10]}; "
                             f"accepted: {LAYOUTS}")
        for name in (*CSV_FILES.values(), TAGS_FILE):
            if name.lower() in members:
                _check_member(members[name.lower()], str(path))
        return Source(path, "kaggle_zip", "zip", has_tags=TAGS_FILE.lower() in members)
    with open_stream(path, kind) as stream:
        try:
            head = stream.read(1 << 16)
        except (OSError, EOFError) as exc:
            raise StageError(f"ingest: {path}: unreadable {kind} file ({exc})") from None
    if head.startswith(b"PAR1"):
        if kind:
            raise StageError(f"ingest: {path}: a compressed parquet file: parquet is read as it is (decompress it)")
        import pyarrow.parquet as pq

        return _posts_layout(path, "posts_parquet", None, pq.read_schema(path).names)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        raise StageError(f"ingest: {path}: file is empty")
    if text.startswith(b"<"):
        return Source(path, "posts_xml", kind, has_tags=True)
    check_text(head, str(path))
    if text.startswith(b"{"):
        try:
            first = json.loads(text.split(b"\n", 1)[0])
        except ValueError as exc:
            raise StageError(f"ingest: {path}: unreadable JSON lines ({exc})") from None
        return _posts_layout(path, "posts_jsonl", kind, list(first) if isinstance(first, dict) else [])
    return _posts_layout(path, "posts_csv", kind, _csv_header(head))


# ----------------------------------------------------------------------------- text columns
def decode_row(raw: bytes) -> tuple[str, bool]:
    """Decode one field as UTF-8; on invalid bytes decode only those as cp1252. Returns (text, repaired)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="soqa_cp1252"), True


def _cp1252_fallback(err: UnicodeDecodeError) -> tuple[str, int]:
    # Invalid bytes in a mostly-UTF-8 row are almost always Windows-1252 text pasted in:
    # decode just those bytes that way and keep the row's valid UTF-8 as it is.
    bad = err.object[err.start:err.end]
    return bad.decode("cp1252", errors="replace").replace("\ufffd", ""), err.end


codecs.register_error("soqa_cp1252", _cp1252_fallback)


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


def as_text(col: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
    """Any typed column (JSON, parquet) as the text a CSV would hold: integral floats read as
    integers later, timestamps in ISO form, tag lists in the dump's <a><b> form."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return decode_column(col.cast(pa.binary()))
    if pa.types.is_timestamp(t):
        secs = pc.cast(col, pa.timestamp("s", tz=t.tz), safe=False)      # outputs hold seconds
        return pc.strftime(secs, format="%Y-%m-%dT%H:%M:%S"), 0
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.array([None if v is None else "".join(f"<{x}>" for x in v) for v in col.to_pylist()],
                        pa.string()), 0
    if pa.types.is_null(t):
        return pa.nulls(len(col), pa.string()), 0
    try:
        return pc.cast(col, pa.string()), 0
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):      # a struct, a map: its text, for the row's reason
        return pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string()), 0


# ----------------------------------------------------------------------------- CSV
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
        _truncated(str(path))


def _truncated(label: str) -> None:
    raise StageError(f"ingest: {label}: truncated CSV: the file ends inside a quoted field "
                     "(odd number of '\"' characters)")


def csv_batches(src: Path | BinaryIO, label: str, columns: dict[str, str],
                block_bytes: int = 16 << 20) -> Iterator[dict[str, Any]]:
    """Stream a CSV (multi-line quoted HTML, CRLF, every field quoted or none) as batches of
    decoded Arrow string columns under their Kaggle names (`columns`: Kaggle name -> CSV name),
    with the rows pyarrow could not split (`_bad_rows`) and the fields repaired (`_repaired_utf8`).
    A path is checked for a cut quoted field first; a stream is counted as it is read."""
    import pyarrow.csv as pacsv

    if isinstance(src, Path):
        _check_quotes_closed(src)
    bad_rows: list[str] = []

    def on_invalid(row: Any) -> str:
        bad_rows.append(f"line {row.number}: {row.actual_columns} fields, expected {row.expected_columns}")
        return "skip"

    try:
        reader = pacsv.open_csv(
            src,
            read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=True),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in columns.values()}, include_columns=list(columns.values()),
                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]),
        )
        for batch in reader:
            out: dict[str, Any] = {}
            repaired = 0
            for c, name in columns.items():
                out[c], r = decode_column(batch.column(name))
                repaired += r if c in ("Title", "Body") else 0
            out["_repaired_utf8"] = [repaired]
            out["_bad_rows"] = list(bad_rows)
            bad_rows.clear()
            yield out
    except pa.ArrowInvalid as exc:
        msg = str(exc).splitlines()[0]
        if "quote" in msg.lower() or "end of file" in msg.lower() or "truncat" in msg.lower():
            msg = f"truncated or malformed CSV ({msg})"
        raise StageError(f"ingest: {label}: {msg}") from None
    guard = getattr(getattr(src, "raw", None), "quotes", None)
    if guard is not None and guard % 2:
        _truncated(label)
    if bad_rows:
        yield {c: [] for c in columns} | {"_repaired_utf8": [0], "_bad_rows": list(bad_rows)}


def read_kaggle_csv(path: Path, table: str, block_bytes: int = 16 << 20,
                    ignored: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream one Kaggle CSV file (Questions.csv or Answers.csv) as batches of Kaggle-named text
    columns; `ignored` collects the names of its other columns."""
    check_readable(path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
    check_text(head, str(path))
    yield from csv_batches(path, str(path), _kaggle_columns(head, table, str(path), ignored), block_bytes)


def _kaggle_columns(head: bytes, table: str, label: str, ignored: set[str] | None) -> dict[str, str]:
    header = _csv_header(head)
    by_name = {}
    for h in header:
        by_name.setdefault(canonical(h), h)
    expected = KAGGLE_COLUMNS[table]
    missing = [c for c in expected if c not in by_name]
    if missing:
        raise StageError(f"ingest: {label}: missing columns {missing} (found {header[:10]}); "
                         f"expected the Kaggle schema {expected}")
    used = {c: by_name[c] for c in expected}
    if ignored is not None:
        ignored.update(column_label(h, k) for k, h in enumerate(header) if h not in used.values())
    return used


def kaggle_tables(source: Source, ignored: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A Kaggle folder or zip: every question, then every answer (`ignored` collects the names of
    columns no stage reads)."""
    if source.layout == "kaggle_folder":
        files = {p.name.lower(): p for p in source.path.iterdir() if p.is_file()}
        for table, name in CSV_FILES.items():
            for raw in read_kaggle_csv(files.get(name.lower(), source.path / name), table, ignored=ignored):
                yield table, raw
        return
    with zipfile.ZipFile(source.path) as zf:
        members = _zip_members(zf)
        for table, name in CSV_FILES.items():
            info = members[name.lower()]
            label = f"{source.path}:{info.filename}"
            with open_member(zf, info, str(source.path)) as stream:
                head = stream.peek(4096)[:4096]
                check_text(head, label)
                yield from ((table, raw) for raw in csv_batches(stream, label, _kaggle_columns(head, table, label, ignored)))


def tagged_question_ids(source: Source, wanted: frozenset[str], parse_ids: Callable[[pa.Array], pa.Array]) -> set[int]:
    """Kaggle's Tags.csv (Id, Tag; one row per tag): the ids of questions carrying a wanted tag."""
    label = f"{source.path}:{TAGS_FILE}"

    def ids_of(stream: Path | BinaryIO, head: bytes) -> set[int]:
        header = _csv_header(head)
        cols = {canonical(h): h for h in header}
        tag_col = next((h for h in header if h.strip().lower() == "tag"), None)
        if "Id" not in cols or tag_col is None:
            raise StageError(f"ingest: {label}: expected columns Id, Tag (found {header[:10]})")
        out: set[int] = set()
        for raw in csv_batches(stream, label, {"Id": cols["Id"], "Tag": tag_col}):
            if not len(raw["Id"]):
                continue
            hit = pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(raw["Tag"])), pa.array(sorted(wanted)))
            out.update(i for i in parse_ids(raw["Id"].filter(hit)).to_pylist() if i is not None)
        return out

    if source.layout == "kaggle_folder":
        files = {p.name.lower(): p for p in source.path.iterdir() if p.is_file()}
        path = files[TAGS_FILE.lower()]
        with open(path, "rb") as fh:
            head = fh.read(4096)
        return ids_of(path, head)
    with zipfile.ZipFile(source.path) as zf:
        info = _zip_members(zf)[TAGS_FILE.lower()]
        with open_member(zf, info, str(source.path)) as stream:
            return ids_of(stream, stream.peek(4096)[:4096])


# ----------------------------------------------------------------------------- one posts file
def _jsonl_chunks(stream: BinaryIO, block_bytes: int = 16 << 20) -> Iterator[bytes]:
    """Whole lines, about block_bytes at a time (a JSON line holds no raw newline)."""
    rest = b""
    while data := stream.read(block_bytes):
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest.strip():
        yield rest


def _typed_batches(source: Source, batch_rows: int) -> Iterator[pa.RecordBatch]:
    names = list(source.columns.values())
    if source.layout == "posts_parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(source.path)
        yield from pf.iter_batches(batch_size=batch_rows, columns=names)     # a row group at most in memory
        return
    import pyarrow.json as pajson

    # Each chunk's types are inferred on their own (a column null in the first lines and numbers
    # later would stop Arrow's one-schema streaming reader); every column becomes text anyway.
    with open_stream(source.path, source.compression) as stream:
        for chunk in _jsonl_chunks(stream):
            try:
                table = pajson.read_json(io.BytesIO(chunk))
            except pa.ArrowInvalid as exc:
                raise StageError(f"ingest: {source.path}: unreadable JSON lines ({str(exc).splitlines()[0]})") from None
            yield from table.select([n for n in names if n in table.column_names]).to_batches(batch_rows)


def _text_batches(source: Source, batch_rows: int) -> Iterator[dict[str, Any]]:
    """A posts file's batches as Kaggle-named text columns, whatever its format."""
    if source.layout == "posts_csv":
        if source.compression:
            with open_stream(source.path, source.compression) as stream:
                yield from csv_batches(stream, str(source.path), source.columns)
        else:
            yield from csv_batches(source.path, str(source.path), source.columns)
        return
    for batch in _typed_batches(source, batch_rows):
        out: dict[str, Any] = {"_repaired_utf8": [0], "_bad_rows": []}
        for c, name in source.columns.items():
            if name in batch.schema.names:
                out[c], r = as_text(batch.column(name))
                out["_repaired_utf8"][0] += r if c in ("Title", "Body") else 0
            else:       # a JSON line block without that key at all
                out[c] = pa.nulls(batch.num_rows, pa.string())
        yield out


def _post_kinds(source: Source, cols: dict[str, pa.Array]) -> np.ndarray:
    """Per row: 1 question, 2 answer, 0 another post type."""
    n = len(cols["Id"])
    if source.kind_by == "questions_only":
        return np.ones(n, np.int8)
    if source.kind_by == "ParentId":
        parent = pc.utf8_lower(pc.utf8_trim_whitespace(cols["ParentId"]))
        empty = pc.fill_null(pc.is_in(parent, pa.array(NULL_TOKENS)), True)
        return np.where(empty.to_numpy(zero_copy_only=False), 1, 2).astype(np.int8)
    kind = pc.replace_substring_regex(pc.utf8_trim_whitespace(cols["PostTypeId"]), r"\.0*$", "")
    kind = pc.fill_null(kind, "").to_numpy(zero_copy_only=False)
    return np.where(kind == "1", 1, np.where(kind == "2", 2, 0)).astype(np.int8)


def posts_tables(source: Source, batch_rows: int, tags: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """One posts file: each batch split into its questions, its answers and other post types."""
    for raw in _text_batches(source, batch_rows):
        meta = {"_repaired_utf8": raw.pop("_repaired_utf8"), "_bad_rows": raw.pop("_bad_rows")}
        n = len(raw["Id"])
        if meta["_bad_rows"] or not n:
            yield "questions", {c: pa.array([], pa.string()) for c in KAGGLE_COLUMNS["questions"]} | meta
            meta = {"_repaired_utf8": meta["_repaired_utf8"], "_bad_rows": []}
            if not n:
                continue
        kinds = _post_kinds(source, raw)
        for table, k in (("questions", 1), ("answers", 2)):
            rows = kinds == k
            if not rows.any():
                continue
            pick = pa.array(rows)
            cols = KAGGLE_COLUMNS[table] + (["Tags"] if tags and table == "questions" else [])
            out = {c: raw[c].filter(pick) if c in raw else pa.nulls(int(rows.sum()), pa.string()) for c in cols}
            yield table, out | meta
            meta = {"_repaired_utf8": [0], "_bad_rows": []}
        if (kinds == 0).any():
            pick = pa.array(kinds == 0)
            yield "other", {"Id": raw["Id"].filter(pick), "PostTypeId": raw["PostTypeId"].filter(pick)}


# ----------------------------------------------------------------------------- Posts.xml
def read_posts_xml(path: Path, batch_rows: int, tags: bool = False, compression: str | None = None,
                   attributes: set[str] | None = None) -> Iterator[tuple[str, dict[str, list[str | None]]]]:
    """Stream a Stack Exchange Posts.xml (row elements; plain, or gzip/bz2 `compression`) without
    building the tree; questions carry their Tags when `tags`; `attributes` collects every
    attribute name met.

    defusedxml refuses DTD entity declarations and external references outright: a dump
    never needs them, and they are the billion-laughs and XXE attacks.
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse
    import xml.etree.ElementTree as ET

    check_readable(path)
    cols = {"questions": KAGGLE_COLUMNS["questions"] + (["Tags"] if tags else []),
            "answers": KAGGLE_COLUMNS["answers"]}
    buf: dict[str, dict[str, list]] = {t: {c: [] for c in cs} for t, cs in cols.items()}
    other: dict[str, list] = {"Id": [], "PostTypeId": []}
    stream = open_stream(path, compression)
    try:
        it = iterparse(stream, events=("end",), forbid_dtd=False, forbid_entities=True, forbid_external=True)
        for _, el in it:
            if el.tag != "row":
                continue
            a = el.attrib
            if attributes is not None:
                attributes.update(a)
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
    except (OSError, EOFError) as exc:
        raise StageError(f"ingest: {path}: unreadable {compression} file ({exc})") from None
    finally:
        stream.close()
    for table, b in buf.items():
        if b["Id"]:
            yield table, b
    if other["Id"]:
        yield "other", other
