"""The text format strip_html writes, and the reference engine (BeautifulSoup's html.parser).

Output text format (also what the model learns to write):
- prose: whitespace collapsed, one paragraph per block, blocks separated by a blank line;
- `<pre>` blocks: a fenced block (```), newlines and indentation intact;
- inline `<code>`: its text in backticks;
- list items: one per line, "- " in front;
- entities decoded; markup-looking literal text in prose (an escaped "&lt;br&gt;") is put in
  backticks, so that the output never looks like HTML again.

An engine walks a parse tree and feeds a Builder; TAG_KIND says what each tag does, for every
engine alike. lxml_engine.py is the fast engine, which must give this one's text.
"""
from __future__ import annotations

import re
from typing import Any, Callable

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


class Builder:
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
TAG_KIND = {**{t: _SKIP for t in (*SKIP_TAGS, "img")}, "pre": _PRE, "code": _CODE, "br": _BR,
             **{t: _ITEM for t in LINE_TAGS - {"li"}}, "li": _LI, "td": _CELL, "th": _CELL,
             **{t: _BLOCK for t in BLOCK_TAGS}}


def visit(b: Builder, kind: int, node: Any, walk: Callable[[Any, Builder], None], code_text: Callable[[Any], str],
          pre_text: Callable[[Any], str]) -> None:
    """What an element of a known kind (TAG_KIND) does, the same for every engine: walk(node, b)
    visits its children, code_text and pre_text read an inline <code>'s and a <pre>'s text."""
    if kind == _CODE:
        b.code_inline(code_text(node))
    elif kind == _PRE:
        b.code_block(pre_text(node))
    elif kind == _BLOCK:
        b.flush()
        walk(node, b)
        b.flush()
    elif kind == _LI or kind == _ITEM:
        b.start_item("- " if kind == _LI else "")
        walk(node, b)
        b.flush()
    elif kind == _BR:
        b.flush()
    elif kind == _CELL:
        walk(node, b)
        b.text(" | ")
    # _SKIP: nothing


def _get_text(node: Any) -> str:
    return node.get_text()


def _walk_bs4(node: Any, b: Builder) -> None:
    from bs4 import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction

    for child in node.children:
        if isinstance(child, NavigableString):
            if isinstance(child, (Comment, Declaration, Doctype, ProcessingInstruction)):
                continue
            b.text(str(child))
            continue
        kind = TAG_KIND.get((child.name or "").lower())
        if kind is None:
            _walk_bs4(child, b)
        else:
            visit(b, kind, child, _walk_bs4, _get_text, _get_text)


def html_to_text_bs4(html: str) -> str:
    from bs4 import BeautifulSoup

    b = Builder()
    _walk_bs4(BeautifulSoup(html, "html.parser"), b)
    return b.result()



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


def normalize_title(title: str) -> str:
    # Titles are plain text in the dumps (not HTML): only whitespace is normalised.
    return " ".join(title.split())

