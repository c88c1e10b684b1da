"""core/gx_import.py changes two things inside Great Expectations for speed. Both are pinned to the
GX version in constraints.txt here: a GX upgrade fails this test until they are checked again."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import great_expectations

from conftest import REPO

PINNED = next(line.split("==")[1].strip() for line in (REPO / "constraints.txt").read_text().splitlines()
              if line.startswith("great_expectations=="))

CHILD = r"""
import json, sys
import pandas as pd
from great_expectations.execution_engine import pandas_execution_engine as pee
default = pee.HASH_THRESHOLD
from stages.core import gx_import
gx_import.SKIP_BATCH_FINGERPRINTS = sys.argv[1] == "0"
from stages.core.gate import Check, Suite, run_frames
suite = Suite(checks=lambda p: [
    Check("t", "rows", "ExpectColumnValuesToNotMatchRegex", {"column": "text", "regex": "<b>", "mostly": 0.5}, "w"),
    Check("t", "keys", "ExpectColumnValuesToBeUnique", {"column": "id"}, "w")], ids={"t": ["id"]})
df = pd.DataFrame({"id": [1, 2, 2, 4], "text": ["a", "<b>x", "c", "<b>"]})
report = run_frames("s", suite, {}, [("t", "rows", df), ("t", "keys", df)])
print(json.dumps({"default": default, "now": pee.HASH_THRESHOLD, "report": report}))   # after GX ran
"""


def _run(fingerprint: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if fingerprint else "0"], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_settings_are_checked_for_this_gx_version():
    assert great_expectations.__version__ == PINNED


def test_skipping_batch_fingerprints_changes_no_result():
    plain, fast = _run(True), _run(False)
    assert plain["default"] > 0                       # the knob exists, and fingerprints are on by default
    assert plain["now"] == plain["default"] and fast["now"] == 0          # and the setting reaches it
    assert fast["report"] == plain["report"]
    assert fast["report"]["failed_rows"] == {"t.text: expect_column_values_to_not_match_regex": 2,
                                             "t.id: expect_column_values_to_be_unique": 2}
