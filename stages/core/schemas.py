"""The tables every stage reads and writes, the rejected-row schema, and Arrow <-> pandas."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
import pyarrow as pa

# Rejected rows of every stage share one schema, so the report can read them all alike.
REJECT_SCHEMA = pa.schema([
    ("stage", pa.string()),
    ("table", pa.string()),        # questions | answers | pairs
    ("id", pa.int64()),            # the row's original id, null when the id itself was unreadable
    ("source_id", pa.string()),    # the id as it stood in the source, for unreadable ids
    ("reason", pa.string()),       # a short machine-readable reason, e.g. empty_body
    ("detail", pa.string()),       # a human hint: the bad value, the snippet, the rule
])

_POST = [("id", pa.int64()), ("owner_user_id", pa.int64()), ("creation_date", pa.timestamp("s", tz="UTC"))]
QUESTION_SCHEMA = pa.schema(_POST + [("score", pa.int64()), ("title", pa.string()), ("body", pa.string())])
ANSWER_SCHEMA = pa.schema(_POST + [("parent_id", pa.int64()), ("score", pa.int64()), ("body", pa.string())])
PAIR_SCHEMA = pa.schema([
    ("question_id", pa.int64()),
    ("answer_id", pa.int64()),
    ("answer_rank", pa.int32()),   # 1 = best answer of its question
    ("title", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("question_score", pa.int64()),
    ("answer_score", pa.int64()),
])
SCHEMAS = {"questions": QUESTION_SCHEMA, "answers": ANSWER_SCHEMA, "pairs": PAIR_SCHEMA}


def empty_rejects() -> pd.DataFrame:
    return REJECT_SCHEMA.empty_table().to_pandas()


def _storable(text: str) -> str:
    """The text, with lone surrogates (which Arrow strings cannot hold) written as backslash escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def rejects(table: str, ids: Iterable, reasons: Iterable[str], details: Iterable[str] | None = None,
            source_ids: Iterable | None = None) -> pd.DataFrame:
    """Build rejected rows (the runner fills in the stage)."""
    ids = list(ids)
    reasons = list(reasons)
    n = len(ids)
    details = [""] * n if details is None else [_storable(str(d)[:300]) for d in details]
    source_ids = [None if i is None else str(i) for i in ids] if source_ids is None else list(source_ids)
    return pd.DataFrame({
        "stage": pd.Series([""] * n, dtype="string"),
        "table": pd.Series([table] * n, dtype="string"),
        "id": pd.Series(ids, dtype="Int64"),
        "source_id": pd.Series(source_ids, dtype="string"),
        "reason": pd.Series(reasons, dtype="string"),
        "detail": pd.Series(details, dtype="string"),
    })


def to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def to_frame(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable ints and plain Python strings (ids stay int64, NA stays NA)."""
    return batch.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)
