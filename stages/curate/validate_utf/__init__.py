"""Stage 3, validate_utf: repair mojibake, drop control characters, reject what cannot be trusted.

Here: the stage's declaration and its expectations. The rules and the reference transform are
in rules.py; the stage's transform (the same rules over Arrow batches, faster) in arrow.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.gate import Check, Suite
from stages.core.runner import MapStage
from stages.core.schemas import to_frame
from stages.curate.validate_utf.arrow import transform

REPLACEMENT_CHAR = "\ufffd"
C0_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"          # C0 controls except tab, newline, carriage return
# UTF-8 read as cp1252/latin-1: "Ã©" for é, "â€™" for ’, "Â " for a no-break space.
MOJIBAKE = ("Ã[\u0080-\u00bf]|Â[\u00a0-\u00bf]|â€[\u0080-\u00bf\u2018-\u201e\u2020-\u2022\u2026\u2030"
            "\u2039\u203a\u20ac\u2122\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc]")
# Questions *about* encoding problems quote mojibake on purpose; one row in a thousand may.
MOJIBAKE_MOSTLY = 0.999


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


def checks(params: dict[str, Any]) -> list[Check]:
    return _texts_checks("questions", "text") + _texts_checks("answers", "text")


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


STAGE = MapStage(
    name="validate_utf", module=__name__, reads=("data/stripped",), writes="data/utf8",
    params=(),
    transform=transform,
    suite=Suite(checks=checks, ids={"questions": ["id"], "answers": ["id"]},
                row_tables=(("questions", ("id", "title", "body")), ("answers", ("id", "body"))),
                row_frame=text_frame),
)
