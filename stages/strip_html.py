"""Stage 2, strip_html: HTML bodies -> plain text with code intact.

Output text format (also what the model learns to write):
- prose: whitespace collapsed, one paragraph per block, blocks separated by a blank line;
- `<pre>` blocks: a fenced block (```), newlines and indentation intact;
- inline `<code>`: its text in backticks;
- list items: one per line, "- " in front;
- entities decoded; markup-looking literal text in prose (an escaped "&lt;br&gt;") is put in
  backticks, so that the output never looks like HTML again.

Stripping is idempotent: text with no HTML markup outside code is only whitespace-normalised,
and the output never holds markup outside code, so strip(strip(x)) == strip(x).
"""
from __future__ import annotations

import re
from collections import Counter
from html.entities import html5 as _HTML5_ENTITIES
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow.compute as pc

from stages.common import (BatchResult, DATA, Ledger, StageError, _tmp_sibling, rejects, run_per_table,
                           stage_main, to_frame)

# Tags that make a body HTML. Plain text mentioning "<foo>" with another name stays text.
HTML_TAGS = ("a|abbr|b|blockquote|body|br|caption|center|cite|code|dd|del|div|dl|dt|em|font|h[1-6]|head|hr|html|"
             "i|img|ins|kbd|li|ol|p|pre|q|s|samp|small|span|strike|strong|sub|sup|table|tbody|td|tfoot|th|"
             "thead|tr|tt|u|ul|var")
MARKUP = re.compile(rf"</?(?:{HTML_TAGS})(?:\s[^<>\n]*)?/?>|<!--|&(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);",
                    re.IGNORECASE)
# Already-plain code: fenced blocks and backtick spans are never parsed as HTML. Bars may stand
# between any whitespace, as prose normalisation removes it: " ````" must not turn into a bar
# only on a second pass.
FENCE = re.compile(r"^[^\S\n]*(`{3,})[^\n`]*\n(?:.*?\n)?[^\S\n]*\1[^\S\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
# C0 controls (not tab/LF/CR), DEL and terminal escapes are not HTML and split tags ("<co\x00de>" is no
# tag and would turn into "<code>" once validate_utf drops the NUL): gone before parsing. C1 controls
# stay for validate_utf, where ftfy may still need them to undo mojibake.
CONTROL_IN_HTML = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Every match of CONTROL_IN_HTML holds one of these (ESC is \x1b): a plain class scans about 3x
# faster than the alternation, so most texts are checked with it and never substituted.
HAS_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

BLOCK_TAGS = {"p", "div", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "tbody",
              "thead", "tfoot", "hr", "section", "article", "header", "footer", "center", "body", "html",
              "form", "caption", "figure", "figcaption", "details", "summary", "main", "nav", "aside"}
LINE_TAGS = {"li", "tr", "dt", "dd"}
SKIP_TAGS = {"script", "style", "head", "title", "noscript", "template"}


# ----------------------------------------------------------------------------- rendering helpers
def _fence(code: str) -> str:
    if "`" not in code:          # the common case: no run of backticks to outgrow
        return f"```\n{code}\n```"
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    bar = "`" * max(3, longest + 1)
    return f"{bar}\n{code}\n{bar}"


def _code_span(code: str) -> str:
    code = " ".join(code.split())
    if not code:
        return ""
    if "`" not in code:
        return f"`{code}`"
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    bar = "`" * (longest + 1)
    pad = " " if code.startswith("`") or code.endswith("`") else ""
    return f"{bar}{pad}{code}{pad}{bar}"


def _mask_code_spans(text: str) -> str:
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def _protect_markup(line: str) -> str:
    """Literal markup in a prose line (from escaped entities) goes into backticks so it stays text.

    Works on the whole line, code spans included, because markup can be split across text
    nodes or stand around a code span ("&lt;a <code>x</code> &gt;"). A match that holds a code
    span is broken by putting only its first character in backticks.
    """
    if "<" not in line and "&" not in line:    # every MARKUP match starts with one of them
        return line
    while True:
        m = MARKUP.search(_mask_code_spans(line))
        if m is None:
            return line
        frag = line[m.start():m.end()]
        rep = _code_span(frag) if "`" not in frag else _code_span(frag[0]) + " " + frag[1:]
        line = " ".join(f"{line[:m.start()]} {rep} {line[m.end():]}".split())


def _clean_code(code: str) -> str:
    lines = [ln.rstrip() for ln in code.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


class _Builder:
    """Collects blocks while a parse tree is walked; engines differ only in the walk."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.prefix = ""
        # False when the source holds neither control characters nor numeric references (the
        # only way to write one in HTML): then no text node can hold one and the scan is skipped.
        self.may_hold_controls = True
        # Whether result() is already in normalize_text's normal form: prose blocks are single
        # collapsed lines and fences are built by _fence. A prose line holding a multi-backtick
        # code span gets a second look anyway, as cheap insurance: it can start with ```.
        self.known_normal = True

    def text(self, s: str) -> None:
        # A literal backtick in prose would pair up with the backticks of our code spans and
        # make their edges ambiguous on a second pass; in prose it becomes an apostrophe, so
        # every backtick in the output belongs to a code span or a fence.
        # Entities like &#1; decode to control characters: gone here, as in the raw HTML.
        if self.may_hold_controls:
            s = CONTROL_IN_HTML.sub("", s)
        self.inline.append(s.replace("`", "'"))

    def code_inline(self, s: str) -> None:
        if self.may_hold_controls:
            s = CONTROL_IN_HTML.sub("", s)
        if "\n" in s.strip():
            self.code_block(s)
        else:
            # Spaces around keep "see`x`" apart from neighbours once prose is collapsed.
            self.inline.append(" " + _code_span(s) + " ")

    def code_block(self, s: str) -> None:
        if self.may_hold_controls:
            s = CONTROL_IN_HTML.sub("", s)
        self.flush()
        code = _clean_code(s)
        if code:
            self.blocks.append(_fence(code))

    def flush(self) -> None:
        if not self.inline:          # most flushes: a block boundary right after another
            return
        line = _protect_markup(" ".join("".join(self.inline).split()))
        self.inline = []
        if line:
            if "``" in line:
                self.known_normal = False
            self.blocks.append(self.prefix + line)
            self.prefix = ""

    def start_item(self, prefix: str) -> None:
        self.flush()
        self.prefix = prefix

    def result(self) -> str:
        self.flush()
        out: list[str] = []
        for b in self.blocks:
            # List items sit on consecutive lines; every other block is a paragraph. Two items
            # whose literal text would read as one tag across the line break ("- <a", "- >")
            # stay paragraphs, or the output would look like HTML again.
            last = out[-1].rsplit("\n", 1)[-1] if out else ""
            if b.startswith("- ") and last.startswith("- ") and not ("<" in last and looks_like_html(f"{last}\n{b}")):
                out[-1] = out[-1] + "\n" + b
            else:
                out.append(b)
        return "\n\n".join(out)


# ----------------------------------------------------------------------------- engines
# What both walks do with an element, by tag name (lower case); a name not here is inline.
_SKIP, _PRE, _CODE, _BR, _ITEM, _LI, _CELL, _BLOCK = range(8)
_TAG_KIND = {**{t: _SKIP for t in (*SKIP_TAGS, "img")}, "pre": _PRE, "code": _CODE, "br": _BR,
             **{t: _ITEM for t in LINE_TAGS - {"li"}}, "li": _LI, "td": _CELL, "th": _CELL,
             **{t: _BLOCK for t in BLOCK_TAGS}}


def _walk_bs4(node: Any, b: _Builder) -> None:
    from bs4 import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction

    for child in node.children:
        if isinstance(child, NavigableString):
            if isinstance(child, (Comment, Declaration, Doctype, ProcessingInstruction)):
                continue
            b.text(str(child))
            continue
        kind = _TAG_KIND.get((child.name or "").lower())
        if kind is None:
            _walk_bs4(child, b)
        elif kind == _CODE:
            b.code_inline(child.get_text())
        elif kind == _PRE:
            b.code_block(child.get_text())
        elif kind == _BLOCK:
            b.flush()
            _walk_bs4(child, b)
            b.flush()
        elif kind == _LI or kind == _ITEM:
            b.start_item("- " if kind == _LI else "")
            _walk_bs4(child, b)
            b.flush()
        elif kind == _BR:
            b.flush()
        elif kind == _CELL:
            _walk_bs4(child, b)
            b.text(" | ")
        # _SKIP: nothing


def html_to_text_bs4(html: str) -> str:
    from bs4 import BeautifulSoup

    b = _Builder()
    _walk_bs4(BeautifulSoup(html, "html.parser"), b)
    return b.result()


_LXML_PARSER: Any = None      # lxml is imported on first use: the bs4 engine never needs it
_LXML_FROMSTRING: Any = None
_LXML_TOSTRING: Any = None
# What lxml (libxml2's HTML5 tokenizer) reads differently from html.parser, the reference: NUL
# (U+FFFD there), a lone CR (a newline there), CDATA sections (dropped there), lone surrogates
# (unencodable), entity references that are unterminated or unknown (html.parser keeps
# "&copy2015" and turns "&foo;" into "&foo"; HTML5 reads "©2015" and "&foo;") and a tag cut off
# at the end ("...<pre><code": text there, dropped here). Such bodies, a small share, go to the
# reference engine, so both engines give the same text.
_LONE_CR = re.compile(r"\r(?!\n)")
_NUMERIC_REF = re.compile(r"&#(?:[0-9]+|[xX][0-9A-Fa-f]+);")
_ENTITY_REF = re.compile(r"&(?:#[xX]?[0-9A-Fa-f]*|[A-Za-z][-.A-Za-z0-9]*)(;?)")


def _lxml_needs_reference(html: str) -> bool:
    # Substring tests first: one regex alternation over every character cost two thirds of the parse.
    if html.rfind("<") > html.rfind(">") or "\x00" in html or "<![" in html:
        return True
    if "\r" in html and _LONE_CR.search(html):
        return True
    if "&" in html:
        for m in _ENTITY_REF.finditer(html):
            ref = m.group(0)
            if not m.group(1):
                return True
            if ref[1] == "#" and not _NUMERIC_REF.fullmatch(ref):   # "&#;", "&#1a;": read differently
                return True
            if ref[1] != "#" and ref[1:] not in _HTML5_ENTITIES:
                return True
    if not html.isascii():
        try:
            html.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _lxml_text(el: Any) -> str:
    """All text below `el` (comments and processing instructions excluded), like bs4's get_text()."""
    return _LXML_TOSTRING(el, method="text", encoding="unicode", with_tail=False)


_ASCII_SPACES = " \n\t\f\r"
_PRESERVE_WHITESPACE = ("pre", "textarea")


def _lxml_inline_code_text(el: Any) -> str:
    """Text below an inline <code> that has child elements, as html.parser reads it.

    Outside <pre> and <textarea>, beautifulsoup4 turns a string of nothing but ASCII whitespace
    into one space, or one newline if it holds one ("<code>\t<br>x</code>" reads " x").
    """
    parts: list[str] = []

    def add(s: str | None, preserve: bool) -> None:
        if s:
            if not preserve and not s.strip(_ASCII_SPACES):
                s = "\n" if "\n" in s else " "
            parts.append(s)

    def collect(node: Any, preserve: bool) -> None:
        add(node.text, preserve)
        for child in node:
            if isinstance(child.tag, str):      # comments and processing instructions hold no text
                collect(child, preserve or child.tag.lower() in _PRESERVE_WHITESPACE)
            add(child.tail, preserve)

    collect(el, False)
    return "".join(parts)


def _walk_lxml(el: Any, b: _Builder) -> None:
    # The same rules as _walk_bs4; lxml keeps text in .text (before the first child) and .tail.
    # No call for childless inline elements: this loop is most of the stage's CPU time.
    if el.text:
        b.text(el.text)
    for child in el:
        tag = child.tag
        if isinstance(tag, str):     # comments and processing instructions have a function as tag
            kind = _TAG_KIND.get(tag)
            if kind is None and not tag.islower():
                kind = _TAG_KIND.get(tag.lower())
            if kind is None:
                if len(child):
                    _walk_lxml(child, b)
                elif child.text:
                    b.text(child.text)
            elif kind == _CODE:
                b.code_inline(_lxml_inline_code_text(child) if len(child) else (child.text or ""))
            elif kind == _PRE:
                b.code_block(_lxml_text(child))
            elif kind == _BLOCK:
                b.flush()
                _walk_lxml(child, b)
                b.flush()
            elif kind == _LI or kind == _ITEM:
                b.start_item("- " if kind == _LI else "")
                _walk_lxml(child, b)
                b.flush()
            elif kind == _BR:
                b.flush()
            elif kind == _CELL:
                _walk_lxml(child, b)
                b.text(" | ")
            # _SKIP: nothing
        if child.tail:
            b.text(child.tail)


def html_to_text_lxml(html: str) -> str:
    """The bs4 rules over lxml's tree, about 8x faster; the few bodies lxml reads differently go to bs4."""
    return _html_to_text_lxml(html)[0]


def _html_to_text_lxml(html: str, may_hold_controls: bool | None = None) -> tuple[str, bool]:
    """(text, whether the text is known to be in normal form already).

    may_hold_controls: False when the caller knows `html` holds no control character and no
    numeric reference (None: scan for them here).
    """
    global _LXML_PARSER, _LXML_FROMSTRING, _LXML_TOSTRING
    if _lxml_needs_reference(html):
        return html_to_text_bs4(html), False
    if _LXML_PARSER is None:
        from lxml import etree

        _LXML_PARSER = etree.HTMLParser(recover=True, no_network=True, remove_comments=False, remove_pis=False,
                                        huge_tree=True, default_doctype=False)
        _LXML_FROMSTRING, _LXML_TOSTRING = etree.fromstring, etree.tostring
    root = _LXML_FROMSTRING(html, _LXML_PARSER) if html.strip() else None
    if len(_LXML_PARSER.error_log):
        # Mis-nested markup ("<p><hr/>text</p> more": libxml2 closes the <p> at the <hr>,
        # html.parser at the </p>) may cut paragraphs elsewhere: 0.15% of real bodies.
        return html_to_text_bs4(html), False
    b = _Builder()
    if may_hold_controls is None:
        may_hold_controls = "&#" in html or HAS_CONTROL.search(html) is not None
    b.may_hold_controls = may_hold_controls
    if root is not None:
        _walk_lxml(root, b)
    return b.result(), b.known_normal


ENGINES: dict[str, Callable[[str], str]] = {"bs4": html_to_text_bs4, "lxml": html_to_text_lxml}


def normalize_text(text: str) -> str:
    """Whitespace normal form of plain text: the HTML path's output already has it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts: list[str] = []
    pos = 0
    for m in FENCE.finditer(text):
        parts.append(_normalize_prose(text[pos:m.start()]))
        body = m.group(0).split("\n")
        parts.append(_fence(_clean_code("\n".join(body[1:-1]))) if _clean_code("\n".join(body[1:-1])) else "")
        pos = m.end()
    parts.append(_normalize_prose(text[pos:]))
    return "\n\n".join(p for p in parts if p)


def _normalize_prose(text: str) -> str:
    paras, cur = [], []
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line:
            cur.append(line)
        elif cur:
            paras.append("\n".join(cur))
            cur = []
    if cur:
        paras.append("\n".join(cur))
    return "\n\n".join(paras)


def looks_like_html(text: str) -> bool:
    """True when markup stands outside fenced blocks and backtick spans."""
    if MARKUP.search(text) is None:
        return False
    if "`" not in text:             # no fence and no code span to look past
        return True
    outside = _mask_code_spans(FENCE.sub("\n", text))
    return MARKUP.search(outside) is not None


def strip_html(text: str, engine: str = "bs4") -> str:
    """HTML -> text (see module doc). Plain text is only normalised, so the result is a fixed point."""
    return _strip(text, engine, HAS_CONTROL.search(text) is not None)


def _strip(text: str, engine: str, has_control: bool) -> str:
    # has_control: whether `text` holds a control character (the caller has scanned it already).
    if has_control:
        text = CONTROL_IN_HTML.sub("", text)
    if not looks_like_html(text):
        return normalize_text(text)
    if engine == "lxml":
        # normalize_text costs a quarter of the time here and changes nothing on known-normal
        # output (none of the 149,523 bodies of the 150k benchmark corpus; tests/test_engines.py).
        out, known_normal = _html_to_text_lxml(text, may_hold_controls="&#" in text)
        return out if known_normal else normalize_text(out)
    return normalize_text(ENGINES[engine](text))


def normalize_title(title: str) -> str:
    # Titles are plain text in the dumps (not HTML): only whitespace is normalised.
    return " ".join(title.split())


# ----------------------------------------------------------------------------- the pure transform
def _strip_or_none(text: str, engine: str, has_control: bool) -> str | None:
    try:
        return _strip(text, engine, has_control)
    except RecursionError:   # tags nested deeper than the tree walk can go: a hostile row, not a crash
        return None


def transform(table: str, df: pd.DataFrame, engine: str = "bs4", has_control: list[bool] | None = None) -> BatchResult:
    """has_control: whether each body holds a control character, when the caller knows (None: scan here)."""
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
    return BatchResult(kept=out[~empty].reset_index(drop=True),
                       rejected=rejects(table, rej["id"].tolist(), reasons,
                                        [t[:120] for t in df.loc[empty, "body"].tolist()]),
                       repaired=Counter({"control_chars": n_control} if n_control else {}))


def _transform_batch(args: tuple[str, Any, str]) -> tuple[int, BatchResult]:
    table, batch, engine = args
    # One vectorised scan (RE2 over the Arrow buffer) in place of a Python regex search per body.
    has_control = pc.match_substring_regex(batch.column("body"), HAS_CONTROL.pattern).fill_null(False)
    df = to_frame(batch)
    return len(df), transform(table, df, engine, has_control.to_pylist())


def main() -> None:
    def body(params: dict[str, Any], ledger: Ledger) -> dict[str, Path]:
        engine = params["strip_html"].get("engine", "bs4")
        if engine not in ENGINES:
            raise StageError(f"strip_html: unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
        final = DATA / "stripped"
        tmp = _tmp_sibling(final)
        run_per_table("strip_html", DATA / "raw", tmp, ledger, params, _transform_batch, engine)
        return {final: tmp}

    stage_main("strip_html", body)


if __name__ == "__main__":
    main()
