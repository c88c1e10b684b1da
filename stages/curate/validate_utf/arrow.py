"""The stage's transform: rules.py's rules over an Arrow batch, with the costly part on few rows.

Speed code with a reference it must equal: transform(table, batch) keeps, rejects and repairs
exactly what rules.transform_frame does (tests/curate/test_validate_utf.py, with hypothesis and
on real bodies). The plain texts (ASCII without control characters, about 94% on the real
corpus) are found and kept as they are with vectorised Arrow calls; only the rest become Python
strings and go through ftfy.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.ledger import Result
from stages.core.schemas import rejects
from stages.curate.validate_utf.rules import clean_cell, plain_mask, text_columns

# Parquet input never holds a lone surrogate, so every text fits in Arrow.
_ONLY_ASCII_SPACE = r"^[ \t\n]*$"     # a plain text is empty after cleaning iff it is this


@dataclass
class _Plan:
    table: str
    batch: pa.RecordBatch
    todo: dict[str, pa.Array]     # per text column: True where the text is not plain


def _prepare(table: str, batch: pa.RecordBatch) -> tuple[tuple[list[str], ...], _Plan]:
    """(the texts that are not plain, per text column; what _finish needs)."""
    todo: dict[str, pa.Array] = {}
    texts = []
    for col in text_columns(table):
        arr = batch.column(col)
        todo[col] = pc.invert(plain_mask(arr))
        texts.append(arr.filter(todo[col]).to_pylist())
    return tuple(texts), _Plan(table, batch, todo)


def _clean_cells(texts: tuple[list[str], ...]) -> tuple[list[tuple[str, list[str], str | None]], ...]:
    """clean_cell over each column's texts that are not plain."""
    return tuple([clean_cell(t) for t in col] for col in texts)


def _finish(plan: _Plan, cleaned: tuple[list[tuple[str, list[str], str | None]], ...]) -> Result:
    batch = plan.batch
    n = batch.num_rows
    repaired: Counter = Counter()
    reasons: list[str | None] = [None] * n
    columns = {}
    for col, results in zip(text_columns(plan.table), cleaned):
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
        return Result(kept=kept, repaired=repaired)
    bad = np.zeros(n, dtype=bool)
    bad[bad_rows] = True
    return Result(
        kept=kept.filter(pa.array(~bad)),
        rejected=rejects(plan.table, batch.column("id").take(bad_rows).to_pylist(), [reasons[i] for i in bad_rows],
                         [t[:120] for t in batch.column("body").take(bad_rows).to_pylist()]),
        repaired=repaired)


def transform(table: str, batch: pa.RecordBatch, options: None = None) -> Result:
    """rules.transform_frame over an Arrow batch (kept rows as an Arrow table)."""
    texts, plan = _prepare(table, batch)
    return _finish(plan, _clean_cells(texts))
