"""validate_utf's rules, and the reference transform that applies them one text at a time.

Unlike the seed's "UTF check" (which dropped every non-ASCII row), valid non-ASCII text (é, ’,
中文, emoji) is kept. ftfy repairs text decoded with the wrong codec ("donâ€™t" -> "don’t")
but keeps curly quotes as written (uncurl_quotes=False).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter

import ftfy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.ledger import Result
from stages.core.schemas import rejects
from stages.curate.strip_html.render import normalize_text

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
    ASCII code, so skipping the plain lines saves most of ftfy's time (tests/curate/test_validate_utf.py).
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


def transform_frame(table: str, df: pd.DataFrame) -> Result:
    """The reference transform: the rows of a pandas frame, one text at a time."""
    text_cols = text_columns(table)
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
    return Result(
        kept=out[~bad].reset_index(drop=True),
        rejected=rejects(table, rej["id"].tolist(), [r for r in reasons if r is not None],
                         [t[:120] for t in df.loc[bad, "body"].tolist()]),
        repaired=repaired)


def text_columns(table: str) -> list[str]:
    return ["title", "body"] if table == "questions" else ["body"]
