"""What a transform returns, and the audit ledger the runner books it in.

Stages decide, the runner counts: a transform returns kept rows, rejected rows (each with a
reason) and repairs by kind; the runner counts rows in from what it fed the stage and rows out
and rejected from what came back. `check()` refuses rows_in != rows_out + rejected: a stage that
loses rows silently is a bug, and the pipeline stops there.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from stages.core.errors import StageError
from stages.core.outputs import AUDIT, REJECTS, commit_path, remove_path, tmp_sibling, write_json
from stages.core.parquet import ParquetSink
from stages.core.schemas import REJECT_SCHEMA, empty_rejects


@dataclass
class Result:
    """What a transform decided for the rows it was given."""
    kept: pa.Table | pa.RecordBatch | pd.DataFrame
    rejected: pd.DataFrame = field(default_factory=empty_rejects)   # core.schemas.rejects(...)
    repaired: Counter = field(default_factory=Counter)             # rows kept after a repair, by kind

    @classmethod
    def rejected_only(cls, rejected: pd.DataFrame) -> "Result":
        """Rows rejected, none kept."""
        return cls(kept=pa.table({}), rejected=rejected)

    @property
    def kept_rows(self) -> int:
        return self.kept.num_rows if isinstance(self.kept, (pa.Table, pa.RecordBatch)) else len(self.kept)


class Ledger:
    """Counts rows in / out / rejected-by-reason for one stage and keeps the rejected rows."""

    def __init__(self, stage: str):
        self.stage = stage
        self.rows_in: Counter = Counter()       # by table
        self.rows_out: Counter = Counter()
        self.rejected: Counter = Counter()      # by reason
        self.rejected_by_table: Counter = Counter()
        self.repaired: Counter = Counter()
        self.started = time.time()
        self.extra: dict[str, Any] = {}          # stage-specific audit facts (min_score, shard sizes, ...)
        self._reject_tmp = tmp_sibling(REJECTS / f"{stage}.parquet")
        self._reject_tmp.parent.mkdir(parents=True, exist_ok=True)
        self._rejects = ParquetSink(self._reject_tmp, REJECT_SCHEMA)

    def count_in(self, table: str, n: int) -> None:
        self.rows_in[table] += n

    def count_out(self, table: str, n: int) -> None:
        self.rows_out[table] += n

    def book(self, table: str, result: Result) -> None:
        """Book what a transform decided for rows of `table` (their count in is booked apart)."""
        self.rows_out[table] += result.kept_rows
        rej = result.rejected
        if len(rej):
            rej = rej.copy()
            rej["stage"] = self.stage
            self.rejected.update(rej["reason"].astype(str).tolist())
            self.rejected_by_table.update(rej["table"].astype(str).tolist())
            self._rejects.write(rej)
        self.repaired.update(result.repaired)

    def summary(self) -> dict[str, Any]:
        tables = sorted(set(self.rows_in) | set(self.rows_out))
        return {
            "stage": self.stage,
            "rows_in": sum(self.rows_in.values()),
            "rows_out": sum(self.rows_out.values()),
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "repaired_by_kind": dict(sorted(self.repaired.items())),
            "tables": {t: {"rows_in": self.rows_in[t], "rows_out": self.rows_out[t],
                           "rejected": self.rejected_by_table[t]} for t in tables},
            **self.extra,
        }

    def check(self) -> dict[str, Any]:
        s = self.summary()
        for t, c in s["tables"].items():
            if c["rows_in"] != c["rows_out"] + c["rejected"]:
                raise StageError(
                    f"stage {self.stage}: rows lost in table {t}: rows_in {c['rows_in']} != "
                    f"rows_out {c['rows_out']} + rejected {c['rejected']}")
        return s

    def finish(self) -> dict[str, Any]:
        """Check the invariant, then write rejects and the audit metrics atomically."""
        s = self.check()
        self._rejects.close()
        commit_path(self._reject_tmp, REJECTS / f"{self.stage}.parquet")
        s["seconds"] = round(time.time() - self.started, 3)
        # Wall time varies run to run; keep it out of the DVC metric so diffs show data changes.
        write_json(AUDIT / f"{self.stage}.json", {k: v for k, v in s.items() if k != "seconds"})
        return s

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._rejects.close()
        remove_path(self._reject_tmp)

