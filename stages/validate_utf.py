"""Stage 3, validate_utf: repair mojibake, drop control characters, reject what cannot be trusted.

Unlike the seed's "UTF check" (which dropped every non-ASCII row), valid non-ASCII text (é, ’,
中文, emoji) is kept. ftfy repairs text decoded with the wrong codec ("donâ€™t" -> "don’t")
but keeps curly quotes as written (uncurl_quotes=False).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.common import BatchResult, DATA, Ledger, Offload, _tmp_sibling, rejects, run_per_table, stage_main
from stages.strip_html import normalize_text

FTFY_CONFIG = ftfy.TextFixerConfig(uncurl_quotes=False, fix_line_breaks=False, normalization="NFC",
                                   explain=False, unescape_html=False, remove_terminal_escapes=True)
# C0 controls except tab and newline, DEL and C1 controls: never meaningful in a post.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# ANSI terminal escapes leave "[31m" behind once ESC is gone; ftfy removes the whole sequence.
MOJIBAKE_HINT = re.compile(r"[ÂÃâ][\x80-\xbf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ ¡¢£¤¥¦§¨©ª«¬­®¯°±²³´µ¶·¸¹º»¼½¾¿]")


def fix_text_by_line(text: str) -> str:
    """ftfy.fix_text(text, FTFY_CONFIG), given only the lines it can change.

    fix_text already fixes each line (up to and including its newline) on its own, and leaves
    a line of printable ASCII as it is; most posts hold a few non-ASCII characters in long
    ASCII code, so skipping the plain lines saves most of ftfy's time (tests/test_engines.py).
    """
    lines = text.split("\n")
    last = len(lines) - 1
    controls = CONTROL.search(text) is not None     # one scan of the text, not one per line
    out = []
    for i, line in enumerate(lines):
        if i < last:
            line += "\n"
        if line and (not line.isascii() or (controls and CONTROL.search(line))):
            line = ftfy.fix_text(line, FTFY_CONFIG)
        out.append(line)
    return "".join(out)


def clean_text(text: str) -> tuple[str, list[str]]:
    """Return (clean text, kinds of repair made). Pure; the ASCII fast path skips ftfy."""
    repairs: list[str] = []
    if text.isascii():
        if CONTROL.search(text):
            text = ftfy.fix_text(text, FTFY_CONFIG) if "\x1b" in text else text
            text = normalize_text(CONTROL.sub("", text))   # "a \x00 b" must not stay "a  b"
            repairs.append("control_chars")
        return text, repairs
    fixed = fix_text_by_line(text)
    if fixed != text:
        repairs.append("mojibake" if MOJIBAKE_HINT.search(text) else "unicode_fixed")
        text = fixed
    if CONTROL.search(text):
        text = normalize_text(CONTROL.sub("", text))
        repairs.append("control_chars")
    return text, repairs


def problem(text: str) -> str | None:
    """Why a cleaned text still cannot be trusted, or None."""
    if "\ufffd" in text:
        return "replacement_char"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "unencodable_text"      # lone surrogates
    if unicodedata.is_normalized("NFC", text) is False:
        return "not_nfc"
    return None


def plain_mask(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Which texts are ASCII without control characters (Arrow booleans, no nulls): clean_text
    returns them unchanged and problem() finds nothing. One vectorised pass, so the Python loop
    only visits the rest (about 6% of the texts on the real corpus)."""
    return pc.and_(pc.string_is_ascii(arr), pc.invert(pc.match_substring_regex(arr, CONTROL.pattern))).fill_null(False)


def plain_rows(values: pd.Series) -> np.ndarray:
    """plain_mask over a column of Python strings."""
    try:
        arr = pa.array(values, type=pa.large_string(), from_pandas=True)
    except (UnicodeEncodeError, pa.ArrowException):   # a lone surrogate: every row takes the exact path
        return np.zeros(len(values), dtype=bool)
    return plain_mask(arr).to_numpy(zero_copy_only=False)


def clean_cell(text: str) -> tuple[str, list[str], str | None]:
    """One text that is not plain: (cleaned text, kinds of repair made, why it is rejected or None)."""
    cleaned, kinds = clean_text(text)
    why = problem(cleaned)
    if why is None and not cleaned.strip():
        why = "empty_after_cleaning"
    return cleaned, kinds, why


def transform(table: str, df: pd.DataFrame) -> BatchResult:
    text_cols = _text_columns(table)
    out = df.copy()
    repaired: Counter = Counter()
    reasons: list[str | None] = [None] * len(df)
    for col in text_cols:
        cleaned = []
        for i, (t, plain) in enumerate(zip(df[col].tolist(), plain_rows(df[col]))):
            if plain:
                c, why = t, (None if t.strip() else "empty_after_cleaning")
            else:
                c, kinds, why = clean_cell(t)
                repaired.update(kinds)
            cleaned.append(c)
            if reasons[i] is None:
                reasons[i] = why
        out[col] = cleaned
    bad = pd.Series([r is not None for r in reasons], index=df.index, dtype=bool)   # bool even when empty
    rej = out[bad]
    return BatchResult(
        kept=out[~bad].reset_index(drop=True),
        rejected=rejects(table, rej["id"].tolist(), [r for r in reasons if r is not None],
                         [t[:120] for t in df.loc[bad, "body"].tolist()]),
        repaired=repaired)


# ----------------------------------------------------------------------------- the stage's batch path
# The same rule as `transform`, split for the worker pool (common.Offload): the plain rows are
# found and kept as they are with Arrow calls here, only the other texts go to a worker.
# Parquet input never holds a lone surrogate, so every text fits in Arrow.
_ONLY_ASCII_SPACE = r"^[ \t\n]*$"     # a plain text is empty after cleaning iff it is this


@dataclass
class _Plan:
    table: str
    batch: pa.RecordBatch
    todo: dict[str, pa.Array]     # per text column: True where the text is not plain


def prepare_batch(table: str, batch: pa.RecordBatch) -> tuple[tuple[list[str], ...], _Plan]:
    """(the texts a worker must clean, per text column; what finish_batch needs)."""
    todo: dict[str, pa.Array] = {}
    texts = []
    for col in _text_columns(table):
        arr = batch.column(col)
        todo[col] = pc.invert(plain_mask(arr))
        texts.append(arr.filter(todo[col]).to_pylist())
    return tuple(texts), _Plan(table, batch, todo)


def clean_cells(texts: tuple[list[str], ...]) -> tuple[list[tuple[str, list[str], str | None]], ...]:
    """The pool's part: clean_cell over each column's texts."""
    return tuple([clean_cell(t) for t in col] for col in texts)


def finish_batch(plan: _Plan, cleaned: tuple[list[tuple[str, list[str], str | None]], ...]) -> BatchResult:
    batch = plan.batch
    n = batch.num_rows
    repaired: Counter = Counter()
    reasons: list[str | None] = [None] * n
    columns = {}
    for col, results in zip(_text_columns(plan.table), cleaned):
        arr, todo = batch.column(col), plan.todo[col]
        # Plain texts are kept as they are unless only ASCII whitespace; the rest as cleaned.
        empty = pc.and_(pc.invert(todo), pc.match_substring_regex(arr, _ONLY_ASCII_SPACE))
        why: dict[int, str] = {int(i): "empty_after_cleaning" for i in np.flatnonzero(empty.to_numpy(zero_copy_only=False))}
        if results:
            rows = np.flatnonzero(todo.to_numpy(zero_copy_only=False))
            for i, (_, kinds, w) in zip(rows.tolist(), results):
                repaired.update(kinds)
                if w is not None:
                    why[i] = w
            arr = pc.replace_with_mask(arr, todo, pa.array([c for c, _, _ in results], type=arr.type))
        columns[col] = arr
        for i, w in why.items():
            if reasons[i] is None:
                reasons[i] = w
    kept = pa.Table.from_batches([batch])
    for col, arr in columns.items():
        kept = kept.set_column(batch.schema.get_field_index(col), batch.schema.field(col), arr)
    bad_rows = [i for i, r in enumerate(reasons) if r is not None]
    if not bad_rows:
        return BatchResult(kept=kept, repaired=repaired)
    bad = np.zeros(n, dtype=bool)
    bad[bad_rows] = True
    return BatchResult(
        kept=kept.filter(pa.array(~bad)),
        rejected=rejects(plan.table, batch.column("id").take(bad_rows).to_pylist(), [reasons[i] for i in bad_rows],
                         [t[:120] for t in batch.column("body").take(bad_rows).to_pylist()]),
        repaired=repaired)


def transform_batch(table: str, batch: pa.RecordBatch) -> BatchResult:
    """`transform` over an Arrow batch, all in this process (kept rows as an Arrow table)."""
    job, plan = prepare_batch(table, batch)
    return finish_batch(plan, clean_cells(job))


def _text_columns(table: str) -> list[str]:
    return ["title", "body"] if table == "questions" else ["body"]


OFFLOAD = Offload(prepare=prepare_batch, work=clean_cells, finish=finish_batch)


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        final = DATA / "utf8"
        tmp = _tmp_sibling(final)
        run_per_table("validate_utf", DATA / "stripped", tmp, ledger, params, OFFLOAD, None)
        return {final: tmp}

    stage_main("validate_utf", body)


if __name__ == "__main__":
    main()
