"""Stage ingest on small, real-shaped input: what it keeps, what it rejects and why; its quality suite."""
from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from gate_cases import assert_suite_passes_clean_and_fails_violating, case_ids, ids, suite_params
from stages.core import runner
from stages.core.schemas import ANSWER_SCHEMA, QUESTION_SCHEMA, to_frame
from stages.curate import ingest
from stages.curate.ingest import decode_row, type_batch

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- ingest
def _ingest(source: Path, tmp_path: Path, batch_rows: int = 50,
            tags: list[str] | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run the ingest stage on `source` in `tmp_path`: (audit summary, questions, answers, rejects)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        params = {"ingest": {"source": str(source), "tags": tags or []},
                  "runtime": {"workers": 1, "batch_rows": batch_rows, "gx_preload": False}}
        summary = runner.execute(ingest.STAGE, params)
        rej = pq.read_table(tmp_path / "data" / "rejects" / "ingest.parquet").to_pandas()
    finally:
        os.chdir(cwd)
    q = pq.read_table(tmp_path / "data" / "raw" / "questions.parquet").to_pandas()
    a = pq.read_table(tmp_path / "data" / "raw" / "answers.parquet").to_pandas()
    return summary, q, a, rej


def _write_kaggle(folder: Path, questions: bytes, answers: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Questions.csv").write_bytes(questions)
    (folder / "Answers.csv").write_bytes(answers)
    return folder


def test_ingest_sample_is_typed_and_complete(tmp_path: Path) -> None:
    summary, q, a, rej = _ingest(REPO / "data" / "sample", tmp_path)
    assert (len(q), len(a), len(rej)) == (98, 103, 0)
    assert str(q["id"].dtype) == "int64" and str(a["parent_id"].dtype) == "int64"
    assert str(q["creation_date"].dtype).startswith("datetime64[") and "UTC" in str(q["creation_date"].dtype)
    assert q["owner_user_id"].isna().any(), "the sample's NA owners become nulls"
    # Multi-line quoted HTML with CRLF survives intact.
    assert q.loc[q["id"] == 469, "body"].item().count("\n") >= 5
    assert summary["rows_in"] == summary["rows_out"] + summary["rejected"]


def test_ingest_rejects_bad_rows_with_reasons(tmp_path: Path) -> None:
    qcsv = (b'Id,OwnerUserId,CreationDate,Score,Title,Body\r\n'
            b'1,NA,2008-08-02T15:11:16Z,3,Title one,"<p>multi\r\nline, with ""quotes""</p>"\r\n'
            b'x2,5,2008-08-02T15:11:16Z,3,Bad id,<p>b</p>\r\n'
            b'3,5,2008-08-02T15:11:16Z,,No score,<p>c</p>\r\n'
            b'4,5,2008-08-02T15:11:16Z,twelve,Text score,<p>d</p>\r\n'
            b'1,5,2008-08-02T15:11:16Z,1,Duplicate,<p>e</p>\r\n'
            b'6,5,2008-08-02T15:11:16Z,1,Empty body,\r\n'
            b'7,5,2008-08-02T15:11:16Z,2,Caf\xe9 latin-1,"<p>na\xefve \xe2\x80\x99 ok</p>"\r\n')
    acsv = (b'Id,OwnerUserId,CreationDate,ParentId,Score,Body\r\n'
            b'10,7,2008-08-03T15:11:16Z,1,5,<p>answer</p>\r\n'
            b'11,7,2008-08-03T15:11:16Z,999,5,<p>orphan</p>\r\n'
            b'12,7,2008-08-03T15:11:16Z,4,5,<p>parent rejected</p>\r\n')
    summary, q, a, rej = _ingest(_write_kaggle(tmp_path / "src", qcsv, acsv), tmp_path)
    reasons = dict(zip(rej["source_id"], rej["reason"]))
    assert reasons == {"x2": "bad_id", "3": "missing_score", "4": "non_numeric_score", "1": "duplicate_id",
                       "6": "empty_body", "11": "orphan_answer", "12": "question_rejected"}
    assert sorted(q["id"]) == [1, 7] and a["id"].tolist() == [10]
    assert q.loc[q["id"] == 1, "body"].item() == '<p>multi\r\nline, with "quotes"</p>'
    # Invalid bytes are decoded on their own; the row's valid UTF-8 (’) is untouched.
    row7 = q.loc[q["id"] == 7]
    assert row7["title"].item() == "Café latin-1" and row7["body"].item() == "<p>naïve ’ ok</p>"
    assert summary["repaired_by_kind"]["invalid_utf8"] == 2
    assert summary["rows_in"] == 10 and summary["rows_out"] == 3 and summary["rejected"] == 7


def test_decode_row_falls_back_per_byte_only() -> None:
    assert decode_row("déjà vu".encode()) == ("déjà vu", False)
    assert decode_row(b"caf\xe9 \xe2\x80\x94 \x80") == ("café — €", True)


def test_type_batch_keeps_na_owner_and_rejects_bad_date() -> None:
    res = type_batch("questions", {"Id": ["1", "2"], "OwnerUserId": ["NA", "3"],
                                   "CreationDate": ["2008-08-02T15:11:16Z", "yesterday"],
                                   "Score": ["1", "2"], "Title": ["t", "t"], "Body": ["b", "b"]})
    assert res.kept["id"].tolist() == [1] and pd.isna(res.kept["owner_user_id"].iloc[0])
    assert res.rejected["reason"].tolist() == ["bad_creation_date"]


# The row rule type_batch implements (with vectorised shortcuts), written plainly, one row at a time.
_MISSING = {"", "na", "nan", "null", "none", "nat", "<na>"}


def _reference_row(table: str, row: dict[str, str | None]) -> tuple[str | None, str, int | None, bool]:
    """(reason or None, detail, parsed id, whether the owner is unreadable) for one source row."""
    import re

    def as_int(v: str | None) -> int | None:
        m = re.match(r"^\s*([+-]?\d{1,18})(\.0*)?\s*$", v) if v is not None else None
        return int(m.group(1)) if m else None

    def blank(v: str | None) -> bool:
        return v is None or not v.strip()

    def missing(v: str | None) -> bool:
        return v is None or v.strip().lower() in _MISSING

    i, score = as_int(row["Id"]), row["Score"]
    date = row["CreationDate"]
    date_ok = missing(date) or pd.notna(pd.to_datetime(date.strip(), errors="coerce", utc=True))
    owner = row["OwnerUserId"]
    reason, detail = None, ""
    if i is None:
        reason, detail = "bad_id", row["Id"] or ""
    elif missing(score):
        reason = "missing_score"
    elif as_int(score) is None:
        reason, detail = "non_numeric_score", score
    elif table == "answers" and as_int(row["ParentId"]) is None:
        reason, detail = "bad_parent_id", row["ParentId"] or ""
    elif not date_ok:
        reason, detail = "bad_creation_date", date
    elif blank(row["Body"]):
        reason = "empty_body"
    elif table == "questions" and blank(row["Title"]):
        reason = "empty_title"
    return reason, detail, i, reason is None and not missing(owner) and as_int(owner) is None


_INTISH = st.sampled_from(["1", "42", "007", " 5", "+5", "-3", "٣", "1e3", "x", "", " ", "NA", "NA ", None,
                           "12345678901234567890", "123456789012345678", "29481088.0", "7.00", "123.5", "nan",
                           "null", " None ", "1.", ".0"])
_TEXTISH = st.sampled_from(["t", "<p>b</p>", "", " ", " \n\t", "\u3000", "\x1c", "\u0085", "\u00a0", "é", None])
_DATES = st.sampled_from(["2008-08-02T15:11:16Z", "", "yesterday", "2008-08-01T13:57:07.123", "2008-08-01 13:57:07",
                          "2008-08-01 13:57:07 UTC", " 2008-08-01T13:57:07Z ", "NA", "nan", "2008-08-01",
                          "2008-08-01T13:57:07+02:00", "2008-02-30T00:00:00"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["questions", "answers"]),
       st.lists(st.tuples(_INTISH, _INTISH, _INTISH, _INTISH, _TEXTISH, _TEXTISH,
                          _DATES), min_size=1, max_size=12))
def test_type_batch_follows_the_row_rule(table: str, rows: list[tuple]) -> None:
    """The vectorised typing (Arrow fast paths, Python only for odd values) = the plain per-row rule."""
    names = ["Id", "OwnerUserId", "Score", "ParentId", "Title", "Body", "CreationDate"]
    raw = {c: [r[k] for r in rows] for k, c in enumerate(names)}
    res = type_batch(table, raw)
    ref = [_reference_row(table, {c: raw[c][k] for c in names}) for k in range(len(rows))]
    assert res.rejected["reason"].tolist() == [r for r, *_ in ref if r]
    assert res.rejected["detail"].tolist() == [d for r, d, *_ in ref if r]
    assert res.kept["id"].tolist() == [i for r, _, i, _ in ref if r is None]
    assert res.repaired.get("owner_unreadable", 0) == sum(u for *_, u in ref)
    kept_rows = [k for k, (r, *_) in enumerate(ref) if r is None]
    assert res.kept["body"].tolist() == [raw["Body"][k] for k in kept_rows]
    assert res.kept["score"].tolist() == [int(Decimal(raw["Score"][k].strip())) for k in kept_rows]


def test_ingest_posts_xml_reproduces_dump_counts(tmp_path: Path, shared: Path) -> None:
    dumps = {"matheducators": (397, 1507), "genai": (181, 243)}
    for site, (n_q, n_a) in dumps.items():
        summary, q, a, rej = _ingest(shared / "data" / "se-dump" / f"{site}.stackexchange.com-Posts.xml",
                                     tmp_path / site if (tmp_path / site).mkdir() is None else tmp_path)
        assert (len(q), len(a)) == (n_q, n_a)
        assert set(rej["reason"]) <= {"not_question_or_answer"}
        assert summary["rows_in"] == summary["rows_out"] + summary["rejected"]


def test_posts_xml_answer_before_question_and_orphans(tmp_path: Path) -> None:
    xml = tmp_path / "Posts.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
        '  <row Id="5" PostTypeId="2" ParentId="4" CreationDate="2020-01-01T00:00:00.000" Score="3" Body="&lt;p&gt;early&lt;/p&gt;" />\n'
        '  <row Id="4" PostTypeId="1" CreationDate="2020-01-01T00:00:00.000" Score="1" Title="T" Body="&lt;p&gt;q&lt;/p&gt;" />\n'
        '  <row Id="6" PostTypeId="2" ParentId="77" CreationDate="2020-01-01T00:00:00.000" Score="1" Body="x" />\n'
        '  <row Id="8" PostTypeId="5" CreationDate="2020-01-01T00:00:00.000" Score="0" Body="wiki" />\n'
        '</posts>\n', encoding="utf-8")
    summary, q, a, rej = _ingest(xml, tmp_path)
    assert q["id"].tolist() == [4] and a["id"].tolist() == [5]
    assert sorted(rej["reason"]) == ["not_question_or_answer", "orphan_answer"]


# ----------------------------------------------------------------------------- quality suite
@pytest.fixture(scope="module")
def params() -> dict:
    return suite_params()


def ingest_frames(q_ids: list[int], q_scores: list, a_schema: pa.Schema = ANSWER_SCHEMA) -> list:
    return [("questions", "schema", to_frame(QUESTION_SCHEMA.empty_table())),
            ("questions", "keys", pd.DataFrame({"id": ids(q_ids), "score": ids(q_scores)})),
            ("answers", "schema", to_frame(a_schema.empty_table())),
            ("answers", "keys", pd.DataFrame({"id": ids([7, 8]), "score": ids([1, 2]), "parent_id": ids([1, 1])}))]


# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("ingest", ingest_frames([1, 2, 3], [0, 5, -1]), ingest_frames([1, 2, 2], [0, 5, -1]),
     "questions.id: expect_column_values_to_be_unique", 2, [2, 2]),
    ("ingest", ingest_frames([1, 2, 3], [0, 5, -1]), ingest_frames([1, 2, 3], [0, None, -1]),
     "questions.score: expect_column_values_to_not_be_null", 1, [2]),
    ("ingest", ingest_frames([1, 2, 3], [0, 5, -1]),
     ingest_frames([1, 2, 3], [0, 5, -1], ANSWER_SCHEMA.set(4, pa.field("score", pa.string()))),
     "answers.score: expect_column_values_to_be_of_type", 0, []),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES, ids=case_ids(CASES))
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    assert_suite_passes_clean_and_fails_violating(ingest.STAGE, params, clean, bad, check, n_failed, example_ids)
