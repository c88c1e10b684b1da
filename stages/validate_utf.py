"""Stage 3, validate_utf: repair mojibake, drop control characters, reject what cannot be trusted.

Unlike the seed's "UTF check" (which dropped every non-ASCII row), valid non-ASCII text (é, ’,
中文, emoji) is kept. ftfy repairs text decoded with the wrong codec ("donâ€™t" -> "don’t")
but keeps curly quotes as written (uncurl_quotes=False).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.common import (BatchResult, DATA, Ledger, _tmp_sibling, rejects, run_per_table, stage_main,
                           to_frame)
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


def plain_rows(values: pd.Series) -> np.ndarray:
    """Which texts are ASCII without control characters: clean_text returns them unchanged and
    problem() finds nothing. One vectorised pass (Arrow), so the Python loop below only visits
    the rest (about 6% of the texts on the real corpus)."""
    try:
        arr = pa.array(values, type=pa.large_string(), from_pandas=True)
    except (UnicodeEncodeError, pa.ArrowException):   # a lone surrogate: every row takes the exact path
        return np.zeros(len(values), dtype=bool)
    plain = pc.and_(pc.string_is_ascii(arr), pc.invert(pc.match_substring_regex(arr, CONTROL.pattern)))
    return plain.fill_null(False).to_numpy(zero_copy_only=False)


def transform(table: str, df: pd.DataFrame) -> BatchResult:
    text_cols = ["title", "body"] if table == "questions" else ["body"]
    out = df.copy()
    repaired: Counter = Counter()
    reasons: list[str | None] = [None] * len(df)
    for col in text_cols:
        cleaned = []
        for i, (t, plain) in enumerate(zip(df[col].tolist(), plain_rows(df[col]))):
            if plain:
                c, why = t, None
            else:
                c, kinds = clean_text(t)
                repaired.update(kinds)
                why = problem(c)
            if why is None and not c.strip():
                why = "empty_after_cleaning"
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


def _transform_batch(args: tuple[str, Any, Any]) -> tuple[int, BatchResult]:
    table, batch, _ = args
    df = to_frame(batch)
    return len(df), transform(table, df)


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        final = DATA / "utf8"
        tmp = _tmp_sibling(final)
        run_per_table("validate_utf", DATA / "stripped", tmp, ledger, params, _transform_batch, None)
        return {final: tmp}

    stage_main("validate_utf", body)


if __name__ == "__main__":
    main()
