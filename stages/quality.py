"""Quality gates: one Great Expectations suite per data stage, run on its outputs before they are committed.

`stage_main` (stages/common.py) calls `validate_stage` with the stage's still-temporary outputs.
When an expectation fails the stage raises StageError with one message (stage, expectation,
failed rows, example ids, where the details are), so the stage exits non-zero and nothing is
committed. When all pass, `metrics/quality/<stage>.json` records the results (a DVC metric:
evaluated / successful expectations and each check's unexpected count; the full per-expectation
results sit in a list there, which DVC ignores and the `report` stage renders).

Every suite is code here, expectation by expectation, each with the reason it exists (`why`).
GX is imported only inside `run_suite` (it costs seconds) and its progress bars are off.

Memory: whole-table checks (uniqueness, membership, fractions) run on the few key columns
they need, read alone from parquet; text checks run batch by batch and their counts are summed,
so a 2.2 GB corpus is never held whole.
"""
from __future__ import annotations

import html
import importlib
import importlib.util
import json
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.common import DATA, METRICS, StageError, iter_parquet, to_frame, write_json

STAGE_SUITES = ("ingest", "strip_html", "validate_utf", "filter_upvotes", "top_answers", "split", "shard")
QUALITY_METRICS = METRICS / "quality"
# A failed validation is written here (git-ignored): the stage's outputs are not, so the
# details have to live somewhere a person can open.
FAILURES = Path("gx") / "uncommitted" / "failures"
EXAMPLE_IDS = 5          # example ids named in the failure message
PARTIAL_ROWS = 20        # example rows kept per expectation (GX's SUMMARY format keeps 20 too)

# Split fractions are checked within this many binomial standard errors of the requested share
# (sqrt(p(1-p)/n) over n questions), and never tighter than SPLIT_MIN_TOLERANCE: hashing
# assigns questions at random, so a small sample legitimately strays further than a big one.
SPLIT_TOLERANCE_SE = 4.0
SPLIT_MIN_TOLERANCE = 0.02

# Which frame's column names a failing row: ids a person can look up.
ID_COLUMNS = {"questions": ["id"], "answers": ["id"], "pairs": ["answer_id"], "question_sides": ["question_id"],
              "split_questions": ["question_id"], "shards": ["shard"], "positions": ["answer_id"]}

# ----------------------------------------------------------------------------- text patterns
def _space_chars() -> str:
    """Python's \\s as the inside of a character class that RE2 reads the same way.

    pandas runs a pattern holding \\s or \\S through Python's re, one row at a time, since RE2's
    \\s is ASCII whitespace only while Python's is str.isspace(). Spelled out, the class means the
    same to both engines and GX's check stays on Arrow's vectorised RE2: the strip_html checks
    spent over a quarter of their CPU time in that row-by-row fallback. Code points above U+00FF are
    written as themselves (RE2 has no \\u escape, Python no \\x{...})."""
    spaces = [c for c in range(0x110000) if chr(c).isspace()]
    runs: list[list[int]] = []
    for c in spaces:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    spell = (lambda c: f"\\x{c:02x}" if c <= 0xFF else chr(c))
    return "".join(spell(a) if a == b else f"{spell(a)}-{spell(b)}" for a, b in runs)


# HTML tag names (closing and self-closing forms too). A known-name list, so plain text such as
# `List<int>` or `a < b > c` is never mistaken for markup.
_TAG_NAMES = ("a|abbr|b|blockquote|body|br|center|cite|code|dd|del|div|dl|dt|em|font|form|h[1-6]|head|hr|html|"
              "i|iframe|img|input|ins|kbd|li|link|meta|ol|p|pre|s|script|small|span|strike|strong|style|sub|"
              "sup|table|tbody|td|th|thead|tr|tt|u|ul")
_SPACES = _space_chars()
SPACE, NOT_SPACE = f"[{_SPACES}]", f"[^{_SPACES}]"     # Python's \\s and \\S
# Run by RE2: (?i) folds ASCII case, the Kelvin sign and long s as Python's re does; only Python
# also reads "ı" and "İ" as "i", which no browser does in a tag name.
_TAG_START = rf"(?i)</?(?:{_TAG_NAMES})"
HTML_TAG = rf"{_TAG_START}(?:{SPACE}[^<>]*)?/?>"
HTML_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
# Code is excluded from the HTML checks: fenced blocks and backtick spans may legitimately hold
# `<div>` or `&amp;` (a question about HTML quotes it), prose must not.
_FENCE = re.compile(r"^(`{3,})[^\n`]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
# A code span never crosses a blank line (it lives inside one paragraph, as in Markdown).
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(?:(?!\n\n).)+?(?<!`)\1(?!`)", re.DOTALL)
REPLACEMENT_CHAR = "\ufffd"
C0_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"          # C0 controls except tab, newline, carriage return
# UTF-8 read as cp1252/latin-1: "Ã©" for é, "â€™" for ’, "Â " for a no-break space.
MOJIBAKE = ("Ã[\u0080-\u00bf]|Â[\u00a0-\u00bf]|â€[\u0080-\u00bf\u2018-\u201e\u2020-\u2022\u2026\u2030"
            "\u2039\u203a\u20ac\u2122\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc]")
# Prose is what remains outside code; where a literal backtick sits next to a code span (e.g. "`" then
# "`<div>`") the span's edges are ambiguous and a few rows in 10,000 may show code as prose.
PROSE_MOSTLY = 0.9999
# Questions *about* encoding problems quote mojibake on purpose; one row in a thousand may.
MOJIBAKE_MOSTLY = 0.999


# What every text whose prose can match HTML_TAG or HTML_ENTITY holds (tests/test_quality.py: a
# property test). prose() only deletes code and puts whitespace in its place. So an entity in
# prose, which holds no whitespace, stands as it is in the text. A tag's name stands in the text
# too, followed by what follows it in the tag (whitespace, "/" or ">") or by the backtick that
# starts the code prose() deleted ("<a`x`>" reads "<a >"). A bare "<i" would do as well, but
# matches every `List<int>`: five times the rows paying for prose() at Kaggle size.
# Searched as its two halves: RE2 (Arrow's engine behind pandas' str.contains) finds a one-prefix
# pattern with a fast scan for its first character, an alternation of '<' and '&' patterns at a
# third of that speed.
_SUSPECT_HALVES = (rf"{_TAG_START}[{_SPACES}/>`]", HTML_ENTITY)
PROSE_SUSPECT = "|".join(_SUSPECT_HALVES)


def prose(text: str | None) -> str:
    """Text with fenced code blocks and backtick code spans removed (what the HTML checks read)."""
    if not text:
        return ""
    return _CODE_SPAN.sub(" ", _FENCE.sub("\n", text))


# ----------------------------------------------------------------------------- suites as code
@dataclass(frozen=True)
class Check:
    """One expectation of a suite: the frame it reads, how that frame is fed, and why it exists."""
    table: str                      # the frame the expectation runs on (see stage_frames)
    scope: str                      # schema | keys | rows  (rows: fed in batches, counts summed)
    kind: str                       # the GX expectation class name
    kwargs: dict[str, Any]
    why: str

    @property
    def name(self) -> str:
        col = self.kwargs.get("column") or "+".join(self.kwargs.get("column_list", [])) or \
            "|".join(filter(None, [self.kwargs.get("column_A"), self.kwargs.get("column_B")]))
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", self.kind).lower()
        return f"{self.table}.{col}: {snake}" if col else f"{self.table}: {snake}"


def _texts_checks(table: str, column: str) -> list[Check]:
    return [
        Check(table, "rows", "ExpectColumnValuesToBeInSet", {"column": "encodes_as_utf8", "value_set": [True]},
              "every text must encode as UTF-8 (lone surrogates cannot, and crash tokenizers); the flag is "
              "text.encode('utf-8') per row, since GX cannot even hash a column holding a surrogate"),
        Check(table, "rows", "ExpectColumnValuesToNotMatchRegex", {"column": column, "regex": REPLACEMENT_CHAR},
              "U+FFFD marks bytes already lost in decoding: the text is not what the author wrote"),
        Check(table, "rows", "ExpectColumnValuesToNotMatchRegex", {"column": column, "regex": C0_CONTROL},
              "C0 control characters (tab/newline aside) are never meaningful in a post and confuse tokenizers"),
        Check(table, "rows", "ExpectColumnValuesToNotMatchRegex",
              {"column": column, "regex": MOJIBAKE, "mostly": MOJIBAKE_MOSTLY},
              "classic mojibake (Ã©, â€™) means UTF-8 was decoded as cp1252 and not repaired; "
              f"mostly={MOJIBAKE_MOSTLY} because questions about encoding bugs quote it on purpose"),
    ]


def suite_checks(stage: str, params: dict[str, Any]) -> list[Check]:
    """The suite of a data stage, in the order it is reported."""
    if stage == "ingest":
        out: list[Check] = []
        for table, cols in (("questions", ["id", "owner_user_id", "creation_date", "score", "title", "body"]),
                            ("answers", ["id", "owner_user_id", "creation_date", "parent_id", "score", "body"])):
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
    if stage == "strip_html":
        out = []
        for table in ("questions", "answers"):
            out += [
                Check(table, "rows", "ExpectColumnValuesToNotMatchRegex",
                      {"column": "body_prose", "regex": HTML_TAG, "mostly": PROSE_MOSTLY},
                      "no HTML tags left in prose: code blocks and backtick spans are excluded, since code may "
                      f"legitimately contain <div> or List<int>; mostly={PROSE_MOSTLY} only because a literal "
                      "backtick in prose next to a code span makes the span's edges ambiguous"),
                Check(table, "rows", "ExpectColumnValuesToNotMatchRegex",
                      {"column": "body_prose", "regex": HTML_ENTITY, "mostly": PROSE_MOSTLY},
                      "entities must be decoded in prose (code excluded: it may quote &amp; on purpose; "
                      f"mostly={PROSE_MOSTLY} as for tags)"),
                Check(table, "rows", "ExpectColumnValuesToMatchRegex", {"column": "body", "regex": NOT_SPACE},
                      "no empty text: empty-after-strip bodies are rejected, never kept"),
            ]
        out.append(Check("questions", "rows", "ExpectColumnValuesToMatchRegex", {"column": "title", "regex": NOT_SPACE},
                         "no empty titles: a question without a title is rejected"))
        return out
    if stage == "validate_utf":
        return _texts_checks("questions", "text") + _texts_checks("answers", "text")
    if stage == "filter_upvotes":
        k = int(params["filter"]["min_score"])
        return [Check("answers", "keys", "ExpectColumnValuesToBeBetween", {"column": "score", "min_value": k},
                      f"every kept answer has score >= filter.min_score ({k}): the filter is the stage's promise")]
    if stage == "top_answers":
        k = int(params["top_answers"]["k"])
        return [
            Check("pairs", "keys", "ExpectColumnValuesToBeBetween",
                  {"column": "answer_rank", "min_value": 1, "max_value": k},
                  f"at most k={k} answers per question (with the uniqueness of question+rank below)"),
            Check("pairs", "keys", "ExpectCompoundColumnsToBeUnique", {"column_list": ["question_id", "answer_rank"]},
                  "ranks are unique within a question, so ranks 1..k mean at most k answers"),
            Check("pairs", "keys", "ExpectCompoundColumnsToBeUnique", {"column_list": ["question_id", "answer_id"]},
                  "no duplicate pairs: a duplicate would be trained on twice"),
            Check("pairs", "keys", "ExpectColumnValuesToBeUnique", {"column": "answer_id"},
                  "an answer belongs to one question: one pair per answer"),
            Check("pairs", "keys", "ExpectColumnValuesToBeInSet",
                  {"column": "question_in_input", "value_set": [True]},
                  "every pair's question exists among the stage's input questions (data/filtered)"),
        ]
    if stage == "split":
        sp = params["split"]
        t, v = float(sp["test_fraction"]), float(sp["val_fraction"])
        return [
            Check("question_sides", "keys", "ExpectColumnValuesToBeUnique", {"column": "question_id"},
                  "question ids disjoint across train/val/test: one question's answers on two sides leak test data"),
            Check("split_questions", "keys", "ExpectColumnMeanToBeBetween",
                  {"column": "is_test", "min_value": "$test_min", "max_value": "$test_max"},
                  f"share of questions in test near split.test_fraction={t} (within "
                  f"{SPLIT_TOLERANCE_SE:g} binomial standard errors, at least ±{SPLIT_MIN_TOLERANCE})"),
            Check("split_questions", "keys", "ExpectColumnMeanToBeBetween",
                  {"column": "is_val", "min_value": "$val_min", "max_value": "$val_max"},
                  f"share of questions in val near (1-{t})*{v} (val is a share of non-test), same tolerance"),
        ]
    if stage == "shard":
        size = int(params["shard"]["size"])
        return [
            Check("shards", "keys", "ExpectColumnValuesToBeBetween",
                  {"column": "rows_if_not_last", "min_value": size, "max_value": size},
                  f"every shard but the last holds exactly shard.size={size} rows (the last is null here, "
                  "and GX skips nulls)"),
            Check("shards", "keys", "ExpectColumnValuesToBeBetween",
                  {"column": "rows", "min_value": 1, "max_value": size},
                  "the last shard holds 1..shard.size rows (no empty shard files)"),
            Check("positions", "keys", "ExpectColumnPairValuesToBeEqual",
                  {"column_A": "train_row_hash", "column_B": "shard_row_hash"},
                  "shards together equal train: row i of the shards (in order) is row i of train, all columns"),
        ]
    raise StageError(f"quality: no suite for stage {stage!r}")


# ----------------------------------------------------------------------------- frames fed to the suites
Frame = tuple[str, str, pd.DataFrame]     # (table, scope, frame)


def _schema_frame(path: Path) -> pd.DataFrame:
    """Zero rows, the file's columns and types: type checks without reading any data."""
    return to_frame(pq.read_schema(path).empty_table())


def _keys(path: Path, columns: list[str]) -> pd.DataFrame:
    return to_frame(pq.read_table(path, columns=columns))


def _text_batches(path: Path, columns: list[str], batch_rows: int,
                  derive: Callable[[pd.DataFrame], pd.DataFrame]) -> Iterator[pd.DataFrame]:
    seen = False
    for b in iter_parquet(path, batch_rows, columns=columns):
        seen = True
        yield derive(to_frame(b))
    if not seen:   # an empty table still gets its checks evaluated (on zero rows)
        yield derive(_empty_frame(path, columns))


def _empty_frame(path: Path, columns: list[str]) -> pd.DataFrame:
    return to_frame(pq.read_schema(path).empty_table().select(columns))


def prose_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The batch plus `body_prose`. Only bodies that _SUSPECT_HALVES match (a tag name followed by
    what can follow it, or an entity) can have prose matching HTML_TAG or HTML_ENTITY, so only
    those pay for the code-stripping regexes; the others' prose is the body itself (same check
    outcome: neither matches). Two vectorised regexes, run the way GX runs its own (pandas
    str.contains), find them: about 1 body in 100 at Kaggle size. The column is the body column
    with just those rows replaced: the rest never become Python strings."""
    body = df["body"].fillna("")
    tag, entity = (body.str.contains(half, regex=True).to_numpy(bool) for half in _SUSPECT_HALVES)
    suspect = np.flatnonzero(tag | entity)
    body_prose = body.copy()
    if len(suspect):
        body_prose.iloc[suspect] = [prose(t) for t in body.iloc[suspect].tolist()]
    return df.assign(body_prose=body_prose)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _arrow_strings(column: pd.Series) -> pa.Array | None:
    """The column's Arrow string data when it is held that way (pandas' Arrow-backed str dtype)."""
    if isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow":
        return pa.array(column.array)
    return None


def text_frame(df: pd.DataFrame) -> pd.DataFrame:
    """id, the row's whole text (title + body for questions) and whether it encodes as UTF-8.

    Unencodable text is shown with backslash escapes: pandas' Arrow strings and GX's hashing
    refuse lone surrogates, and the row must still reach the checks to be reported.
    """
    body = _arrow_strings(df["body"])
    title = _arrow_strings(df["title"]) if "title" in df else None
    if body is not None and ("title" not in df or title is not None):
        return _text_frame_arrow(df["id"], title, body)
    titles = df["title"].tolist() if "title" in df else [None] * len(df)
    texts = ["\n".join(x for x in (t, b) if x) for t, b in zip(titles, df["body"].tolist())]
    ok = [_encodes(t) for t in texts]
    shown = [t if good else t.encode("utf-8", "backslashreplace").decode("utf-8") for t, good in zip(texts, ok)]
    return pd.DataFrame({"id": pd.array(df["id"], dtype="Int64"), "text": shown, "encodes_as_utf8": ok})


def _text_frame_arrow(ids: pd.Series, title: pa.Array | None, body: pa.Array) -> pd.DataFrame:
    """text_frame for Arrow-held strings, without a Python string per row (the same frame).

    Arrow strings are UTF-8 (checked here in full), so every row encodes; the text is title and
    body joined by a newline, or whichever of them is not empty.
    """
    for arr in (title, body):
        if arr is not None:
            arr.validate(full=True)        # raises on bytes that are not UTF-8, as the Python path would
    text = pc.fill_null(body, "")
    if title is not None:
        title = pc.fill_null(title, "").cast(text.type)
        has_title, has_body = pc.greater(pc.utf8_length(title), 0), pc.greater(pc.utf8_length(text), 0)
        joined = pc.binary_join_element_wise(title, text, pa.scalar("\n", text.type))
        text = pc.if_else(pc.and_(has_title, has_body), joined, pc.if_else(has_title, title, text))
    n = len(text)
    return to_frame(pa.table({"id": pa.array(pd.array(ids, dtype="Int64")), "text": text,
                              "encodes_as_utf8": pa.array(np.ones(n, bool))}))


_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)     # a null's hash: apart from every value's (but for 2^-64)


def _column_hashes(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 per value, the same for equal values whatever batch they come in: siphash (pandas'
    hash_array) of a text's UTF-8 bytes as stored, never decoded to Python strings and encoded
    back, which is what hashing the pandas column did (3-4x slower); numbers hash as numbers."""
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type) \
            or pa.types.is_large_binary(col.type):
        values = col.cast(pa.large_binary()).fill_null(b"").to_numpy(zero_copy_only=False)
    else:
        values = col.fill_null(pa.scalar(0).cast(col.type)).to_numpy(zero_copy_only=False)
    return np.where(valid, pd.util.hash_array(values, categorize=False), _NULL_HASH)


def _row_hashes(paths: Iterable[Path], batch_rows: int) -> tuple[pd.Series, pd.Series]:
    """(answer_id, hash of the whole row: every column, in order) for the rows of `paths` in order, streamed."""
    ids, hashes = [], []
    for p in paths:
        for b in iter_parquet(p, batch_rows):
            row = np.zeros(b.num_rows, dtype=np.uint64)
            for col in b.columns:
                row = row * np.uint64(0x100000001B3) ^ _column_hashes(col)    # uint64 arithmetic wraps
            ids.append(b.column("answer_id").to_numpy(zero_copy_only=False))
            hashes.append(row)
    if not ids:
        return pd.Series([], dtype="Int64"), pd.Series([], dtype="UInt64")
    return (pd.Series(np.concatenate(ids)).astype("Int64"), pd.Series(np.concatenate(hashes)).astype("UInt64"))


def shard_frame(names: list[str], rows: list[int]) -> pd.DataFrame:
    """One row per shard file, in order: its row count, and the same count for all but the last."""
    n = len(rows)
    return pd.DataFrame({"shard": names, "rows": pd.array(rows, dtype="Int64"),
                         "rows_if_not_last": pd.array([r if i < n - 1 else None for i, r in enumerate(rows)],
                                                      dtype="Int64")})


def stage_frames(stage: str, out: Path, params: dict[str, Any]) -> Iterator[Frame]:
    """The frames a stage's suite reads, from its output folder `out` (and committed inputs)."""
    batch_rows = int(params.get("ingest", {}).get("batch_rows", 20000))
    if stage == "ingest":
        for table, extra in (("questions", []), ("answers", ["parent_id"])):
            path = out / f"{table}.parquet"
            yield table, "schema", _schema_frame(path)
            yield table, "keys", _keys(path, ["id", "score", *extra])
    elif stage in ROW_STAGES:
        for table, cols in ROW_TABLES:
            for df in _text_batches(out / f"{table}.parquet", cols, batch_rows, ROW_STAGES[stage]):
                yield table, "rows", df
    elif stage == "filter_upvotes":
        yield "answers", "keys", _keys(out / "answers.parquet", ["id", "score"])
    elif stage == "top_answers":
        pairs = _keys(out / "pairs.parquet", ["question_id", "answer_id", "answer_rank"])
        input_q = pq.read_table(DATA / "filtered" / "questions.parquet", columns=["id"]).column("id").to_pandas()
        yield "pairs", "keys", pairs.assign(question_in_input=pairs["question_id"].isin(input_q).astype(bool))
    elif stage == "split":
        sides = pd.concat([_keys(out / f"{s}.parquet", ["question_id"]).assign(side=s)
                           for s in ("train", "val", "test")], ignore_index=True)
        distinct = sides.drop_duplicates(["question_id", "side"]).reset_index(drop=True)
        yield "question_sides", "keys", distinct
        per_q = distinct.drop_duplicates("question_id").reset_index(drop=True)
        yield "split_questions", "keys", pd.DataFrame({
            "question_id": per_q["question_id"],
            "is_test": (per_q["side"] == "test").astype(float),
            "is_val": (per_q["side"] == "val").astype(float)})
    elif stage == "shard":
        files = sorted(out.glob("train-*.parquet"))
        rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
        yield "shards", "keys", shard_frame([f.name for f in files], rows)
        t_ids, t_hash = _row_hashes([DATA / "split" / "train.parquet"], batch_rows)
        s_ids, s_hash = _row_hashes(files, batch_rows)
        n = max(len(t_hash), len(s_hash))
        yield "positions", "keys", pd.DataFrame({
            "answer_id": t_ids.reindex(range(n)).fillna(s_ids.reindex(range(n))),
            "train_row_hash": t_hash.reindex(range(n)), "shard_row_hash": s_hash.reindex(range(n))})
    else:
        raise StageError(f"quality: no suite for stage {stage!r}")


def suite_parameters(stage: str, params: dict[str, Any], frames: list[Frame]) -> dict[str, Any]:
    """Values the suite needs from the data itself (the split tolerance depends on how many questions)."""
    if stage != "split":
        return {}
    n = sum(len(df) for t, _, df in frames if t == "split_questions")
    sp = params["split"]
    t, v = float(sp["test_fraction"]), float(sp["val_fraction"])
    out = {}
    for name, p in (("test", t), ("val", (1 - t) * v)):
        tol = max(SPLIT_MIN_TOLERANCE, SPLIT_TOLERANCE_SE * (p * (1 - p) / max(n, 1)) ** 0.5)
        out[f"{name}_min"], out[f"{name}_max"] = max(0.0, p - tol), min(1.0, p + tol)
    return out


# ----------------------------------------------------------------------------- running a suite
# GX imports these at module level for what no suite here uses (distribution tests, charts): they
# were 1 s of its 2.4 s import, paid by every cold `dvc repro` before its first gate could answer.
# Deferred, each is imported on first use of one of its attributes, so nothing that does use them breaks.
DEFERRED_IMPORTS = ("scipy.stats", "altair")


class _DeferredModule(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is used, then imports it.

    Not importlib.util.LazyLoader: on Python 3.11 the import system reads `__spec__` of any module
    imported twice, and that read alone makes a LazyLoader module load.
    """

    def __init__(self, spec: importlib.machinery.ModuleSpec):
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)

    def __getattr__(self, attr: str) -> Any:
        # Only called for what the stand-in lacks: on first use, the real module replaces it in
        # sys.modules and its names are copied here for those that imported the stand-in.
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__spec__"})
        return getattr(real, attr)


def _defer_imports(names: Iterable[str] = DEFERRED_IMPORTS) -> None:
    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:        # its parent package is missing: GX will say so itself
            continue
        if spec is not None:
            sys.modules[name] = _DeferredModule(spec)


def _gx():
    """Import GX quietly: analytics off, no progress bars (they would garble the stage log)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    if "great_expectations" not in sys.modules:
        _defer_imports()
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every batch it is given (an md5 over pandas' hash of every cell, twice per
    # validate): pure metadata, and on text batches it cost more than the checks themselves.
    pandas_execution_engine.HASH_THRESHOLD = 0
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return gx, gxe, ctx


def _resolve(kwargs: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {k: (values[v[1:]] if isinstance(v, str) and v.startswith("$") and v[1:] in values else v)
            for k, v in kwargs.items()}


@dataclass
class _Tally:
    """One expectation's result summed over the batches it was fed."""
    check: Check
    kwargs: dict[str, Any]
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
                ids = [row.get(c) for c in ID_COLUMNS.get(self.check.table, [])]
                self.examples.append(_plain(ids[0] if len(ids) == 1 else ids))
        for v in r.get("partial_unexpected_list") or []:
            if len(self.unexpected_values) < PARTIAL_ROWS:
                self.unexpected_values.append(_short(_plain(v)))

    def finish(self) -> dict[str, Any]:
        mostly = self.kwargs.get("mostly")
        if mostly is not None and self.exception is None:
            # Batches each pass `mostly` on their own share; the whole table must pass it too.
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


# One frame's GX verdicts: (index of the check in the suite, GX's result dict, success, exception).
Outcome = list[tuple[int, dict[str, Any], bool, "str | None"]]


class _FrameValidator:
    """Validates frames against a stage's suite with GX (one expectation suite per table+scope)."""

    def __init__(self, stage: str, tallies: list[_Tally]):
        self.stage = stage
        self.tallies = tallies
        self.gx, self.gxe, ctx = _gx()
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
        id_cols = [c for c in ID_COLUMNS.get(table, []) if c in df.columns]
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


def _tallies(stage: str, params: dict[str, Any], held: list[Frame]) -> list[_Tally]:
    values = suite_parameters(stage, params, held)
    return [_Tally(c, _resolve(c.kwargs, values)) for c in suite_checks(stage, params)]


def run_suite(stage: str, params: dict[str, Any], frames: Iterable[Frame]) -> dict[str, Any]:
    """Run the stage's suite over `frames` with GX; returns the results (the quality metrics dict)."""
    frames = iter(frames)
    # Only split needs the frames before the suite is built (its tolerance depends on n); its
    # frames are key columns only, so holding them is cheap.
    held: list[Frame] = list(frames) if stage == "split" else []
    tallies = _tallies(stage, params, held)
    validator = _FrameValidator(stage, tallies)
    verdicts = ((table, scope, len(df), validator.validate(table, scope, df))
                for table, scope, df in (held or frames))
    return _report(stage, tallies, verdicts)


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


# ----------------------------------------------------------------------------- text checks on both cores
# strip_html and validate_utf check every text row (regexes over whole bodies): the bulk of all
# validation time. Their row groups are independent units, validated by a pool of forked
# processes (GX already imported: they are forks of the GX server or of the stage) and summed
# here in file order, so the report is the same as one process's, whatever the worker count.
ROW_STAGES = {"strip_html": prose_frame, "validate_utf": text_frame}
ROW_TABLES = (("questions", ["id", "title", "body"]), ("answers", ["id", "body"]))
_worker_validator: dict[str, Any] = {}


# Row groups per validation unit: each GX validate call costs about 30 ms whatever its size, so
# units of one 32k-row group spent about a sixth of the text checks' CPU there; two halve that, and a
# unit's frames stay small enough for two workers.
UNIT_GROUPS = 2


def _row_units(out: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(table, consecutive row groups) in file order; a table without rows is one unit of none."""
    units: list[tuple[str, tuple[int, ...]]] = []
    for table, _ in ROW_TABLES:
        n = pq.ParquetFile(out / f"{table}.parquet").num_row_groups
        units += [(table, tuple(range(g, min(g + UNIT_GROUPS, n)))) for g in range(0, n, UNIT_GROUPS)] \
            or [(table, ())]
    return units


def _validate_unit(args: tuple[str, dict[str, Any], str, str, tuple[int, ...]]) -> tuple[str, str, int, Outcome]:
    """In a pool worker: validate some row groups (none: the table's empty frame)."""
    stage, params, out, table, groups = args
    if stage not in _worker_validator:         # one GX suite per worker, reused for its units
        _worker_validator[stage] = _FrameValidator(stage, _tallies(stage, params, []))
    path = Path(out) / f"{table}.parquet"
    cols = dict(ROW_TABLES)[table]
    if not groups:
        df = _empty_frame(path, cols)
    else:
        df = to_frame(pq.ParquetFile(path).read_row_groups(list(groups), columns=cols))
    df = ROW_STAGES[stage](df)
    return table, "rows", len(df), _worker_validator[stage].validate(table, "rows", df)


def run_row_suite_parallel(stage: str, params: dict[str, Any], out: Path, workers: int) -> dict[str, Any]:
    """run_suite(stage, params, stage_frames(stage, out, params)) for a text stage, on `workers` processes."""
    import multiprocessing as mp

    units = [(stage, params, str(out), table, g) for table, g in _row_units(out)]
    tallies = _tallies(stage, params, [])
    # imap hands the next unit to whichever worker is free and yields verdicts in unit order.
    with mp.get_context("fork").Pool(min(workers, len(units))) as pool:
        return _report(stage, tallies, pool.imap(_validate_unit, units, chunksize=1))


# ----------------------------------------------------------------------------- the gate
def failure_message(report: dict[str, Any], where: Path) -> str:
    failed = [r for r in report["results"] if not r["success"]]
    first = failed[0]
    if first.get("exception"):
        what = f"raised {first['exception']}"
    elif first["element_count"] or first["unexpected_count"]:
        what = f"{first['unexpected_count']} of {first['element_count']} rows failed"
        if first["examples"]:
            cols = "/".join(ID_COLUMNS.get(first["table"], ["id"]))
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


def output_dir(stage: str, outputs: dict[str, Path]) -> Path:
    """The temporary folder holding the stage's data output (the only output there is today)."""
    data_outs = [tmp for final, tmp in outputs.items() if Path(final).parts[:1] == ("data",)]
    if len(data_outs) != 1:
        raise StageError(f"quality: stage {stage} should hand over one data output, got {sorted(outputs)}")
    return data_outs[0]


def validate_stage(stage: str, outputs: dict[str, Path], params: dict[str, Any]) -> None:
    """The gate: run the stage's suite on its temporary outputs; raise StageError on any failure."""
    out = output_dir(stage, outputs)
    workers = int(params.get("workers", 1))
    if stage in ROW_STAGES and workers > 1:
        report = run_row_suite_parallel(stage, params, out, workers)
    else:
        report = run_suite(stage, params, stage_frames(stage, out, params))
    if not report["success"]:
        raise StageError(failure_message(report, write_failure(report)))
    write_json(QUALITY_METRICS / f"{stage}.json", report)
