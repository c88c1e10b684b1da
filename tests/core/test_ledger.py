"""The audit invariant: a stage that loses rows fails, and writes no audit."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from stages.core.errors import StageError
from stages.core.ledger import Ledger, Result


def test_ledger_refuses_to_lose_rows(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        led = Ledger("demo")
        led.count_in("answers", 3)
        led.book("answers", Result(kept=pd.DataFrame({"id": [1, 2]})))
        with pytest.raises(StageError, match="rows lost in table answers: rows_in 3 != rows_out 2 \\+ rejected 0"):
            led.finish()
        led.abort()
        assert not (tmp_path / "metrics" / "audit" / "demo.json").exists()
    finally:
        os.chdir(cwd)
