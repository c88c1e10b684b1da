"""Each data transform on small, real-shaped input: what it keeps, what it rejects and why."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from stages import filter_upvotes, split, strip_html, top_answers, validate_utf
from stages.common import BatchResult, Ledger, StageError
from stages.ingest import decode_row, ingest, type_batch
from stages.shard import reshard, shard_slices
from stages.strip_html import strip_html as strip

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- ingest
def _ingest(source: Path, tmp_path: Path, batch_rows: int = 50) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        led = Ledger("ingest")
        ingest(source, tmp_path / "raw", led, batch_rows)
        summary = led.check()
        led._rejects.close()
        rej = pq.read_table(led._reject_tmp).to_pandas()
    finally:
        os.chdir(cwd)
    q = pq.read_table(tmp_path / "raw" / "questions.parquet").to_pandas()
    a = pq.read_table(tmp_path / "raw" / "answers.parquet").to_pandas()
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
def _reference_row(table: str, row: dict[str, str | None]) -> tuple[str | None, str, int | None, bool]:
    """(reason or None, detail, parsed id, whether the owner is unreadable) for one source row."""
    import re

    def as_int(v: str | None) -> int | None:
        return int(v) if v is not None and re.match(r"^\s*[+-]?\d{1,18}\s*$", v) else None

    def blank(v: str | None) -> bool:
        return v is None or not v.strip()

    i, score = as_int(row["Id"]), row["Score"]
    date = row["CreationDate"]
    date_ok = not date or pd.notna(pd.to_datetime(date, errors="coerce", utc=True))
    owner = row["OwnerUserId"]
    owner_present = owner is not None and owner.strip() not in ("", "NA")
    reason, detail = None, ""
    if i is None:
        reason, detail = "bad_id", row["Id"] or ""
    elif blank(score):
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
    return reason, detail, i, reason is None and owner_present and as_int(owner) is None


_INTISH = st.sampled_from(["1", "42", "007", " 5", "+5", "-3", "٣", "1e3", "x", "", " ", "NA", "NA ", None,
                           "12345678901234567890", "123456789012345678"])
_TEXTISH = st.sampled_from(["t", "<p>b</p>", "", " ", " \n\t", "\u3000", "\x1c", "\u0085", "\u00a0", "é", None])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["questions", "answers"]),
       st.lists(st.tuples(_INTISH, _INTISH, _INTISH, _INTISH, _TEXTISH, _TEXTISH,
                          st.sampled_from(["2008-08-02T15:11:16Z", "", "yesterday"])), min_size=1, max_size=12))
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
    assert res.kept["score"].tolist() == [int(raw["Score"][k]) for k in kept_rows]


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


# ----------------------------------------------------------------------------- strip_html
def test_strip_keeps_code_blocks_lists_and_entities() -> None:
    html = ("<p>Try   this &amp; that:</p>\n<pre><code>def f(x):\n    if x &lt; 2:\n        return [x]\n</code></pre>"
            "<ul><li>one <code>a&lt;b</code></li><li>two</li></ul><p>Use the &lt;br&gt; tag<br>next</p>")
    assert strip(html) == (
        "Try this & that:\n\n```\ndef f(x):\n    if x < 2:\n        return [x]\n```\n\n"
        "- one `a<b`\n- two\n\nUse the `<br>` tag\n\nnext")


def test_strip_code_with_html_inside_is_not_parsed_again() -> None:
    html = "<pre><code>&lt;div&gt;List&lt;int&gt; xs;&lt;/div&gt;\n```\n</code></pre>"
    out = strip(html)
    assert "<div>List<int> xs;</div>" in out and out.startswith("````\n")
    assert strip(out) == out


def test_strip_rejects_empty_after_strip() -> None:
    df = pd.DataFrame({"id": pd.array([1, 2], dtype="Int64"), "body": ["<p><img src='x.png'></p>", "<p>ok</p>"]})
    res = strip_html.transform("answers", df)
    assert res.kept["id"].tolist() == [2]
    assert res.rejected["reason"].tolist() == ["empty_after_strip"]


_TEXT = st.lists(st.sampled_from(list("ab <>&;/`#x1\n\t é’") + ["&lt;", "&amp;", "&#39;", "<br>", "<p>", "```\n"]),
                 max_size=30).map("".join)


@st.composite
def html_docs(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(
        _TEXT,
        _TEXT.map(lambda t: f"<p>{t}</p>"),
        _TEXT.map(lambda t: f"<pre><code>{t}</code></pre>"),
        _TEXT.map(lambda t: f"<code>{t}</code>"),
        st.lists(_TEXT, max_size=3).map(lambda xs: "<ul>" + "".join(f"<li>{x}</li>" for x in xs) + "</ul>"),
        _TEXT.map(lambda t: f"<blockquote><b>{t}</b></blockquote>"),
    ), max_size=6))
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(html_docs())
def test_strip_is_idempotent(doc: str) -> None:
    once = strip(doc)
    assert strip(once) == once


# ----------------------------------------------------------------------------- validate_utf
def test_validate_repairs_mojibake_and_controls_keeps_unicode() -> None:
    moj = "It doesn’t work — naïve café.".encode("utf-8").decode("cp1252")
    df = pd.DataFrame({"id": pd.array([1, 2, 3, 4], dtype="Int64"),
                       "body": [moj, "nul\x00 esc\x1b[31m bell\x07", "中文 “curly” 😀 é", "bad \ufffd char"]})
    res = validate_utf.transform("answers", df)
    assert res.kept["body"].tolist() == ["It doesn’t work — naïve café.", "nul esc bell", "中文 “curly” 😀 é"]
    assert res.rejected["reason"].tolist() == ["replacement_char"]
    assert res.repaired["mojibake"] == 1 and res.repaired["control_chars"] == 1


def test_validate_rejects_lone_surrogates_and_takes_empty_batches() -> None:
    # Found by hypothesis: a lone surrogate crashed building its reject row (Arrow strings cannot
    # hold one), an empty batch crashed selecting rows. Parquet input never holds either; the
    # pure transform must still take them.
    df = pd.DataFrame({"id": pd.array([1, 2], dtype="Int64"), "body": pd.Series(["ok", "x \ud800 y"], dtype=object)})
    res = validate_utf.transform("answers", df)
    assert res.kept["body"].tolist() == ["ok"]
    assert res.rejected["reason"].tolist() == ["replacement_char"]     # ftfy turns it into U+FFFD
    assert res.rejected["detail"].tolist() == ["x \\ud800 y"]
    empty = validate_utf.transform("answers", df.iloc[:0])
    assert len(empty.kept) == 0 and len(empty.rejected) == 0


# ----------------------------------------------------------------------------- filter / top answers
def _answers(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame({"id": pd.array([r[0] for r in rows], dtype="Int64"),
                         "parent_id": pd.array([r[1] for r in rows], dtype="Int64"),
                         "score": pd.array([r[2] for r in rows], dtype="Int64"),
                         "body": [f"a{r[0]}" for r in rows]})


def test_filter_upvotes_threshold_is_inclusive() -> None:
    res = filter_upvotes.transform(_answers([(1, 9, 1), (2, 9, 2), (3, 9, 5)]), min_score=2)
    assert res.kept["id"].tolist() == [2, 3]
    assert res.rejected["reason"].tolist() == ["score_below_min"]


def test_top_answers_ranks_with_deterministic_ties() -> None:
    ans = _answers([(30, 1, 5), (20, 1, 5), (10, 1, 7), (40, 1, 5), (50, 2, 1), (60, 3, 9)])
    res = top_answers.rank_answers(ans, {1, 2}, k=2)
    assert list(zip(res.kept["id"], res.kept["answer_rank"])) == [(10, 1), (20, 2), (50, 1)]
    assert dict(zip(res.rejected["id"], res.rejected["reason"])) == {
        60: "question_not_kept", 30: "not_top_k", 40: "not_top_k"}
    q = pd.DataFrame({"id": pd.array([2, 1], dtype="Int64"), "title": ["t2", "t1"], "body": ["q2", "q1"],
                      "score": pd.array([0, 3], dtype="Int64")})
    pairs = top_answers.join_pairs(q, res.kept)
    assert pairs["answer_id"].tolist() == [50, 10, 20] and pairs["question"].tolist() == ["q2", "q1", "q1"]


# ----------------------------------------------------------------------------- split / shard
def test_split_groups_same_title_and_is_stable() -> None:
    assert split.normalize_title("How to  sort a Dict?") == split.normalize_title("how to sort a dict")
    a = split.assign(1, "How to sort a dict?", 42, 0.2, 0.05)
    assert a == split.assign(99, "how to sort a DICT", 42, 0.2, 0.05)
    fractions = pd.Series([split.assign(i, f"title {i}", 42, 0.2, 0.05) for i in range(20000)]).value_counts(normalize=True)
    assert abs(fractions["test"] - 0.2) < 0.015 and abs(fractions["val"] - 0.04) < 0.01


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.sampled_from(["How to x?", "how to X", "Why y", "", "z z"])),
                min_size=1, max_size=80), st.integers(0, 10))
def test_split_never_straddles_a_question(rows: list[tuple[int, str]], seed: int) -> None:
    pairs = pd.DataFrame({"question_id": [r[0] for r in rows], "title": [r[1] for r in rows]})
    # One title per question id, as in real data.
    pairs["title"] = pairs.groupby("question_id")["title"].transform("first")
    parts = split.transform(pairs, seed, 0.3, 0.2)
    side = {}
    for name, part in parts.items():
        for q, t in zip(part["question_id"], part["title"]):
            for key in (("q", q), ("t", split.normalize_title(t)) if split.normalize_title(t) else ("q", q)):
                assert side.setdefault(key, name) == name
    assert sum(len(p) for p in parts.values()) == len(pairs)
    # Adding rows never moves existing questions.
    more = split.transform(pd.concat([pairs, pd.DataFrame({"question_id": [999], "title": ["new"]})]), seed, 0.3, 0.2)
    for name, part in parts.items():
        assert set(part["question_id"]) <= set(more[name]["question_id"])


def test_shards_are_full_except_last() -> None:
    import pyarrow as pa

    batches = [pa.record_batch({"x": list(range(i, i + n))}) for i, n in ((0, 7), (7, 3), (10, 12))]
    tables = list(reshard(iter(batches), 5))
    assert [t.num_rows for t in tables] == [5, 5, 5, 5, 2]
    assert sum((t.column("x").to_pylist() for t in tables), []) == list(range(22))
    assert shard_slices(22, 5)[-1] == (20, 22)


# ----------------------------------------------------------------------------- audit invariant
def test_ledger_refuses_to_lose_rows(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        led = Ledger("demo")
        led.record("answers", 3, BatchResult(kept=pd.DataFrame({"id": [1, 2]})))
        with pytest.raises(StageError, match="rows lost in table answers: rows_in 3 != rows_out 2 \\+ rejected 0"):
            led.finish()
        led.abort()
        assert not (tmp_path / "metrics" / "audit" / "demo.json").exists()
    finally:
        os.chdir(cwd)


def test_strip_batch_control_scan_matches_the_python_regex() -> None:
    """_transform_batch finds control characters with one RE2 scan of the Arrow batch; it must
    flag exactly the texts HAS_CONTROL (Python re) flags, or CONTROL_IN_HTML would be skipped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = [chr(c) for c in range(0x100)] + ["a\x00b", "é\x1bx", "tab\tnl\ncr\r", "\u2028", "", "\U0001f600\x7f"]
    scanned = pc.match_substring_regex(pa.array(texts), strip_html.HAS_CONTROL.pattern).to_pylist()
    assert scanned == [strip_html.HAS_CONTROL.search(t) is not None for t in texts]


_FAULTS_SCRIPT = """
import random, resource, sys
from stages.common import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
rng = random.Random(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
held = []
for _ in range(300):                 # batch-sized buffers, a few alive at once, as in a stage
    held.append(bytearray(rng.randrange(1 << 18, 24 << 20)))
    if len(held) > 3:
        held.pop(0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in_again():
    """stage_main's malloc settings: freed buffers are reused, not unmapped and faulted in anew."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        return int(out.stdout)
    default, kept = faults("default"), faults("keep")
    assert kept * 3 < default, (kept, default)
