"""The fast engine: the reference's rules (render.py) over lxml's tree, about 8x faster.

Speed code with a reference it must equal: html_to_text_lxml(x) == html_to_text_bs4(x), tested on
every real body of ../shared, on injected faults and on edge cases (tests/curate/test_strip_html_engines.py).
The bodies lxml reads differently go to the reference engine.
"""
from __future__ import annotations

import re
from html.entities import html5 as _HTML5_ENTITIES
from typing import Any

from stages.curate.strip_html.render import HAS_CONTROL, TAG_KIND, Builder, html_to_text_bs4, visit

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


def _lxml_code_text(el: Any) -> str:
    return _lxml_inline_code_text(el) if len(el) else (el.text or "")


def _walk_lxml(el: Any, b: Builder) -> None:
    # The same rules as _walk_bs4; lxml keeps text in .text (before the first child) and .tail.
    # No call for childless inline elements: this loop is most of the stage's CPU time.
    if el.text:
        b.text(el.text)
    for child in el:
        tag = child.tag
        if isinstance(tag, str):     # comments and processing instructions have a function as tag
            kind = TAG_KIND.get(tag)
            if kind is None and not tag.islower():
                kind = TAG_KIND.get(tag.lower())
            if kind is None:
                if len(child):
                    _walk_lxml(child, b)
                elif child.text:
                    b.text(child.text)
            else:
                visit(b, kind, child, _walk_lxml, _lxml_code_text, _lxml_text)
        if child.tail:
            b.text(child.tail)


def html_to_text_lxml(html: str) -> str:
    """The bs4 rules over lxml's tree, about 8x faster; the few bodies lxml reads differently go to bs4."""
    return html_to_text_lxml_normal(html)[0]


def html_to_text_lxml_normal(html: str, may_hold_controls: bool | None = None) -> tuple[str, bool]:
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
    b = Builder()
    if may_hold_controls is None:
        may_hold_controls = "&#" in html or HAS_CONTROL.search(html) is not None
    b.may_hold_controls = may_hold_controls
    if root is not None:
        _walk_lxml(root, b)
    return b.result(), b.known_normal

