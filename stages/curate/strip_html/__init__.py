"""Stage 2, strip_html: HTML bodies -> plain text with code intact (the format: render.py).

Stripping is idempotent: text with no HTML markup outside code is only whitespace-normalised,
and the output never holds markup outside code, so strip(strip(x)) == strip(x).

Here: the stage's transform, its declaration and its expectations. The text rules and the
reference engine are in render.py, the fast engine in lxml_engine.py.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.errors import StageError
from stages.core.gate import Check, Suite
from stages.core.ledger import Result
from stages.core.runner import MapStage
from stages.core.schemas import rejects, to_frame
from stages.curate.strip_html.lxml_engine import html_to_text_lxml, html_to_text_lxml_normal
from stages.curate.strip_html.render import (CONTROL_IN_HTML, HAS_CONTROL, html_to_text_bs4, looks_like_html,
                                             normalize_text, normalize_title)

ENGINES: dict[str, Callable[[str], str]] = {"bs4": html_to_text_bs4, "lxml": html_to_text_lxml}


def strip_html(text: str, engine: str = "bs4") -> str:
    """HTML -> text (see render.py). Plain text is only normalised, so the result is a fixed point."""
    return _strip(text, engine, HAS_CONTROL.search(text) is not None)


def _strip(text: str, engine: str, has_control: bool) -> str:
    # has_control: whether `text` holds a control character (the caller has scanned it already).
    if has_control:
        text = CONTROL_IN_HTML.sub("", text)
    if not looks_like_html(text):
        return normalize_text(text)
    if engine == "lxml":
        # normalize_text costs a quarter of the time here and changes nothing on known-normal
        # output (none of the 149,523 bodies of the 150k benchmark corpus; tests/curate/test_strip_html_engines.py).
        out, known_normal = html_to_text_lxml_normal(text, may_hold_controls="&#" in text)
        return out if known_normal else normalize_text(out)
    return normalize_text(ENGINES[engine](text))


# ----------------------------------------------------------------------------- the pure transform
def _strip_or_none(text: str, engine: str, has_control: bool) -> str | None:
    try:
        return _strip(text, engine, has_control)
    except RecursionError:   # tags nested deeper than the tree walk can go: a hostile row, not a crash
        return None


def transform_frame(table: str, df: pd.DataFrame, engine: str = "bs4", has_control: list[bool] | None = None) -> Result:
    """The rows of a pandas frame stripped. has_control: whether each body holds a control
    character, when the caller knows (None: scan here)."""
    raw = df["body"].tolist()
    if has_control is None:
        has_control = [HAS_CONTROL.search(t) is not None for t in raw]
    stripped = [_strip_or_none(t, engine, c) for t, c in zip(raw, has_control)]
    bodies = ["" if b is None else b for b in stripped]
    out = df.copy()
    out["body"] = bodies
    empty = pd.Series([not b for b in bodies], index=df.index)
    if table == "questions":
        out["title"] = [normalize_title(t) for t in df["title"].tolist()]
        empty |= out["title"].eq("")
    rej = out[empty]
    reasons = ["html_too_deep" if b is None else "empty_after_strip" for b, e in zip(stripped, empty.tolist()) if e]
    n_control = sum(has_control)
    return Result(kept=out[~empty].reset_index(drop=True),
                  rejected=rejects(table, rej["id"].tolist(), reasons,
                                   [t[:120] for t in df.loc[empty, "body"].tolist()]),
                  repaired=Counter({"control_chars": n_control} if n_control else {}))


def transform(table: str, batch: pa.RecordBatch, engine: str) -> Result:
    """The stage's transform: one Arrow batch of questions or answers."""
    # One vectorised scan (RE2 over the Arrow buffer) in place of a Python regex search per body.
    has_control = pc.match_substring_regex(batch.column("body"), HAS_CONTROL.pattern).fill_null(False)
    return transform_frame(table, to_frame(batch), engine, has_control.to_pylist())


def options(params: dict[str, Any]) -> str:
    engine = params["strip_html"]["engine"]
    if not isinstance(engine, str) or engine not in ENGINES:
        raise StageError(f"strip_html: unknown engine {engine!r} (strip_html.engine in params.yaml); "
                         f"choose one of {sorted(ENGINES)}")
    return engine


# ----------------------------------------------------------------------------- expectations
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
# Prose is what remains outside code; where a literal backtick sits next to a code span (e.g. "`" then
# "`<div>`") the span's edges are ambiguous and a few rows in 10,000 may show code as prose.
PROSE_MOSTLY = 0.9999


# What every text whose prose can match HTML_TAG or HTML_ENTITY holds (tests/curate/test_strip_html.py: a
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


def checks(params: dict[str, Any]) -> list[Check]:
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


STAGE = MapStage(
    name="strip_html", module=__name__, reads=("data/raw",), writes="data/stripped",
    params=("strip_html.engine",), options=options,
    transform=transform,
    suite=Suite(checks=checks, ids={"questions": ["id"], "answers": ["id"]},
                row_tables=(("questions", ("id", "title", "body")), ("answers", ("id", "body"))),
                row_frame=prose_frame),
)
