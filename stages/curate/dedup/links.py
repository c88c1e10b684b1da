"""The moderators' duplicate links of a Stack Exchange dump: PostLinks.xml beside Posts.xml.

Rows with LinkTypeId 3 say PostId is a duplicate of RelatedPostId. They are the duplicates
lexical similarity cannot see (none of 441 such pairs in the pymaker pages reached Jaccard 0.3).
A Kaggle-schema folder has no such file; a folder source may hold one (PostLinks.xml in it).
"""
from __future__ import annotations

import bz2
import gzip
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from stages.core.errors import StageError

DUPLICATE = "3"
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open}


def links_path(source: str | Path) -> Path | None:
    """PostLinks.xml (or .xml.gz / .xml.bz2, like the Posts file) beside a Posts.xml source or in a
    source folder; None when there is none."""
    src = Path(source)
    folder = src if src.is_dir() else src.parent
    suffix = src.suffix if src.suffix in _OPENERS else ""
    for name in (f"PostLinks.xml{suffix}", "PostLinks.xml"):
        p = folder / name
        if p.is_file():
            return p
    return None


def duplicate_links(path: Path) -> np.ndarray:
    """(post id, related post id) of every LinkTypeId 3 row, in file order (k x 2 int64). Rows with
    unreadable ids are skipped (a link names two posts: without both it links nothing)."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    opener = _OPENERS.get(path.suffix, open)
    pairs: list[tuple[int, int]] = []
    try:
        with opener(path, "rb") as f:
            for _, el in iterparse(f, events=("end",), forbid_dtd=False, forbid_entities=True,
                                   forbid_external=True):
                if el.tag == "row" and el.attrib.get("LinkTypeId") == DUPLICATE:
                    a, b = el.attrib.get("PostId", ""), el.attrib.get("RelatedPostId", "")
                    if a.strip().isdigit() and b.strip().isdigit():
                        pairs.append((int(a), int(b)))
                el.clear()
    except DefusedXmlException as exc:
        raise StageError(f"dedup: {path}: refused unsafe XML ({type(exc).__name__}: {exc})") from None
    except (ET.ParseError, OSError, EOFError) as exc:
        raise StageError(f"dedup: {path}: malformed or unreadable PostLinks file ({exc})") from None
    return np.array(pairs, np.int64).reshape(-1, 2)
