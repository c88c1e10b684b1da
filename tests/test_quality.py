"""Quality gates: every stage's GX suite passes clean data and fails data that violates it, with one
clear message; a stage whose suite fails writes nothing; a corrupted input stops `dvc repro` there."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import run
from stages import quality
from stages.common import ANSWER_SCHEMA, PAIR_SCHEMA, QUESTION_SCHEMA, StageError, load_params, to_frame
from stages.quality import prose_frame, run_suite, text_frame
from stages.strip_html import strip_html

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params() -> dict:
    p = load_params(REPO / "params.yaml")
    p["filter"]["min_score"] = 2
    p["top_answers"]["k"] = 2
    p["split"].update(test_fraction=0.2, val_fraction=0.05)
    p["shard"]["size"] = 3
    return p


def ids(values: list[int]) -> pd.Series:
    return pd.Series(values, dtype="Int64")


def questions(bodies: list[str], titles: list[str] | None = None) -> pd.DataFrame:
    n = len(bodies)
    # object columns: pandas' Arrow strings would refuse a lone surrogate before the suite sees it
    return pd.DataFrame({"id": ids(list(range(1, n + 1))), "title": titles or [f"title {i}" for i in range(n)],
                         "body": pd.Series(bodies, dtype=object)})


def answers(bodies: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids(list(range(101, 101 + len(bodies)))), "body": pd.Series(bodies, dtype=object)})


def pairs(qids: list[int], aids: list[int], ranks: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"question_id": ids(qids), "answer_id": ids(aids), "answer_rank": ids(ranks)})


def failed(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["results"] if not r["success"]}


# ----------------------------------------------------------------------------- frames per suite
def ingest_frames(q_ids: list[int], q_scores: list, a_schema: pa.Schema = ANSWER_SCHEMA) -> list:
    return [("questions", "schema", to_frame(QUESTION_SCHEMA.empty_table())),
            ("questions", "keys", pd.DataFrame({"id": ids(q_ids), "score": ids(q_scores)})),
            ("answers", "schema", to_frame(a_schema.empty_table())),
            ("answers", "keys", pd.DataFrame({"id": ids([7, 8]), "score": ids([1, 2]), "parent_id": ids([1, 1])}))]


def strip_frames(q_bodies: list[str], a_bodies: list[str]) -> list:
    return [("questions", "rows", prose_frame(questions(q_bodies))), ("answers", "rows", prose_frame(answers(a_bodies)))]


def utf_frames(q_bodies: list[str], a_bodies: list[str]) -> list:
    return [("questions", "rows", text_frame(questions(q_bodies))), ("answers", "rows", text_frame(answers(a_bodies)))]


def split_frames(sides: dict[int, list[str]]) -> list:
    rows = [(q, s) for q, ss in sides.items() for s in ss]
    distinct = pd.DataFrame({"question_id": ids([q for q, _ in rows]), "side": [s for _, s in rows]})
    per_q = distinct.drop_duplicates("question_id").reset_index(drop=True)
    return [("question_sides", "keys", distinct),
            ("split_questions", "keys", pd.DataFrame({"question_id": per_q["question_id"],
                                                      "is_test": (per_q["side"] == "test").astype(float),
                                                      "is_val": (per_q["side"] == "val").astype(float)}))]


def balanced_sides(n: int) -> dict[int, list[str]]:
    # 20% test, 4% val (5% of the rest), the remainder train: exactly the requested shares.
    out = {}
    for q in range(n):
        out[q] = ["test"] if q % 5 == 0 else (["val"] if q % 25 == 1 else ["train"])
    return out


def shard_frames(rows: list[int], train_hash: list[int], shard_hash: list[int]) -> list:
    n = len(rows)
    return [("shards", "keys", quality.shard_frame([f"train-{i:05d}.parquet" for i in range(n)], rows)),
            ("positions", "keys", pd.DataFrame({"answer_id": ids(list(range(500, 500 + len(train_hash)))),
                                                "train_row_hash": pd.Series(train_hash, dtype="UInt64"),
                                                "shard_row_hash": pd.Series(shard_hash, dtype="UInt64")}))]


def _pairs_table(n: int) -> pa.Table:
    return pa.table({"question_id": list(range(n)), "answer_id": [100 + i for i in range(n)],
                     "answer_rank": [1] * n, "title": [f"t{i}" for i in range(n)],
                     "question": [f"q é {i}" if i % 3 else "" for i in range(n)],
                     "answer": [None if i % 4 == 0 else f"a\n{i}" for i in range(n)],
                     "question_score": [i % 7 for i in range(n)], "answer_score": [None] + list(range(1, n))},
                    schema=PAIR_SCHEMA)


@pytest.mark.parametrize("batch_rows", [1, 3, 50])
def test_shard_positions_flag_exactly_the_rows_that_differ(tmp_path, monkeypatch, batch_rows):
    """The shard check hashes every row of train and of the shards: equal rows hash equal whatever
    the batch they are read in, and a change to any one value (a null for an empty text or a 0
    included), or values swapped between columns, makes its row differ."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "split").mkdir(parents=True)
    train = _pairs_table(12)
    pq.write_table(train, "data/split/train.parquet")
    rows = train.to_pylist()
    changed = {1: ("question", None), 4: ("answer", ""), 6: ("answer_score", 0), 8: ("title", "t8 "),
               10: ("answer_rank", 2)}
    for i, (col, value) in changed.items():
        assert rows[i][col] != value
        rows[i][col] = value
    rows[2]["title"], rows[2]["question"] = rows[2]["question"], rows[2]["title"]   # the same values, moved
    changed[2] = None
    out = tmp_path / "shards"
    out.mkdir()
    shards = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    pq.write_table(shards.slice(0, 5), out / "train-00000.parquet")
    pq.write_table(shards.slice(5), out / "train-00001.parquet", row_group_size=2)
    params = {"ingest": {"batch_rows": batch_rows}, "shard": {"size": 5}}
    frames = dict(((t, s), df) for t, s, df in quality.stage_frames("shard", out, params))
    pos = frames[("positions", "keys")]
    differ = pos["train_row_hash"] != pos["shard_row_hash"]
    assert pos["answer_id"].tolist() == [100 + i for i in range(12)]
    assert sorted(pos.index[differ].tolist()) == sorted(changed)
    if batch_rows == 1:     # the same rows hash the same read one by one or all at once
        at_once = {**params, "ingest": {"batch_rows": 50}}
        whole = dict(((t, s), df) for t, s, df in quality.stage_frames("shard", out, at_once))
        assert whole[("positions", "keys")]["train_row_hash"].tolist() == pos["train_row_hash"].tolist()


CODE_BODY = "Use this:\n\n```\n<div class=\"x\">&amp;</div>\n```\n\nor `List<int>` and `&lt;`."
# (stage, clean frames, violating frames, failing check, failed rows, example ids)
CASES = [
    ("ingest", ingest_frames([1, 2, 3], [0, 5, -1]), ingest_frames([1, 2, 2], [0, 5, -1]),
     "questions.id: expect_column_values_to_be_unique", 2, [2, 2]),
    ("ingest", ingest_frames([1, 2, 3], [0, 5, -1]), ingest_frames([1, 2, 3], [0, None, -1]),
     "questions.score: expect_column_values_to_not_be_null", 1, [2]),
    ("ingest", ingest_frames([1, 2, 3], [0, 5, -1]),
     ingest_frames([1, 2, 3], [0, 5, -1], ANSWER_SCHEMA.set(4, pa.field("score", pa.string()))),
     "answers.score: expect_column_values_to_be_of_type", 0, []),
    ("strip_html", strip_frames(["plain text", CODE_BODY], ["- item one\n- item two"]),
     strip_frames(["plain text", "left over <p>tag</p> here"], ["ok"]),
     "questions.body_prose: expect_column_values_to_not_match_regex", 1, [2]),
    ("strip_html", strip_frames(["plain"], ["a < b and b > c", "quote `&amp;` in code"]),
     strip_frames(["plain"], ["fine", "Tom &amp; Jerry"]),
     "answers.body_prose: expect_column_values_to_not_match_regex", 1, [102]),
    ("strip_html", strip_frames(["plain"], ["ok"]), strip_frames(["plain"], ["ok", "   "]),
     "answers.body: expect_column_values_to_match_regex", 1, [102]),
    ("validate_utf", utf_frames(["café, don’t", "中文 😀"], ["ok"]), utf_frames(["fine", "bad \ufffd here"], ["ok"]),
     "questions.text: expect_column_values_to_not_match_regex", 1, [2]),
    ("validate_utf", utf_frames(["café"], ["tab\tand\nnewline"]), utf_frames(["café"], ["bell \x07 here"]),
     "answers.text: expect_column_values_to_not_match_regex", 1, [101]),
    ("validate_utf", utf_frames(["café"], ["ok"]), utf_frames(["cafÃ© and donâ€™t"], ["ok"]),
     "questions.text: expect_column_values_to_not_match_regex", 1, [1]),
    ("validate_utf", utf_frames(["café"], ["ok"]), utf_frames(["café"], ["lone \ud800 surrogate"]),
     "answers.encodes_as_utf8: expect_column_values_to_be_in_set", 1, [101]),
    ("filter_upvotes", [("answers", "keys", pd.DataFrame({"id": ids([1, 2]), "score": ids([2, 9])}))],
     [("answers", "keys", pd.DataFrame({"id": ids([1, 2, 3]), "score": ids([2, 1, 0])}))],
     "answers.score: expect_column_values_to_be_between", 2, [2, 3]),
    ("top_answers", [("pairs", "keys", pairs([1, 1, 2], [10, 11, 12], [1, 2, 1]).assign(question_in_input=True))],
     [("pairs", "keys", pairs([1, 1, 1], [10, 11, 13], [1, 2, 3]).assign(question_in_input=True))],
     "pairs.answer_rank: expect_column_values_to_be_between", 1, [13]),
    ("top_answers", [("pairs", "keys", pairs([1, 2], [10, 12], [1, 1]).assign(question_in_input=True))],
     [("pairs", "keys", pairs([1, 1, 2], [10, 10, 12], [1, 2, 1]).assign(question_in_input=True))],
     "pairs.question_id+answer_id: expect_compound_columns_to_be_unique", 2, [10, 10]),
    ("top_answers", [("pairs", "keys", pairs([1, 2], [10, 12], [1, 1]).assign(question_in_input=True))],
     [("pairs", "keys", pairs([1, 2], [10, 12], [1, 1]).assign(question_in_input=[True, False]))],
     "pairs.question_in_input: expect_column_values_to_be_in_set", 1, [12]),
    ("split", split_frames(balanced_sides(100)),
     split_frames({**balanced_sides(100), 7: ["train", "test"]}),
     "question_sides.question_id: expect_column_values_to_be_unique", 2, [7, 7]),
    ("split", split_frames(balanced_sides(100)), split_frames({q: ["test"] for q in range(100)}),
     "split_questions.is_test: expect_column_mean_to_be_between", 0, []),
    ("shard", shard_frames([3, 3, 1], [1, 2, 3], [1, 2, 3]), shard_frames([3, 2, 2], [1, 2, 3], [1, 2, 3]),
     "shards.rows_if_not_last: expect_column_values_to_be_between", 1, ["train-00001.parquet"]),
    ("shard", shard_frames([3, 3, 1], [1, 2, 3], [1, 2, 3]), shard_frames([3, 3, 0], [1, 2, 3], [1, 2, 3]),
     "shards.rows: expect_column_values_to_be_between", 1, ["train-00002.parquet"]),
    ("shard", shard_frames([3, 1], [1, 2, 3, 4], [1, 2, 3, 4]), shard_frames([3, 1], [1, 2, 3, 4], [1, 2, 9, 4]),
     "positions.train_row_hash|shard_row_hash: expect_column_pair_values_to_be_equal", 1, [502]),
]


@pytest.mark.parametrize("stage,clean,bad,check,n_failed,example_ids", CASES,
                         ids=[f"{c[0]}-{c[3].split(':')[0]}-{i}" for i, c in enumerate(CASES)])
def test_suite_passes_clean_and_fails_violating_data(params, stage, clean, bad, check, n_failed, example_ids):
    ok = run_suite(stage, params, clean)
    assert ok["success"], failed(ok)
    assert ok["evaluated"] == len(quality.suite_checks(stage, params)) == ok["successful"]

    report = run_suite(stage, params, bad)
    assert not report["success"]
    bad_checks = failed(report)
    assert check in bad_checks, sorted(bad_checks)
    assert bad_checks[check]["unexpected_count"] == n_failed
    assert bad_checks[check]["examples"][:len(example_ids)] == example_ids
    assert report["unsuccessful"] == len(bad_checks) >= 1

    msg = quality.failure_message(report, Path("gx/uncommitted/failures") / f"{stage}.html")
    assert f"stage {stage}" in msg and "Outputs not written" in msg
    assert f"gx/uncommitted/failures/{stage}.html" in msg
    first = next(r for r in report["results"] if not r["success"])
    assert first["expectation"] in msg and first["why"] in msg
    if first["unexpected_count"]:
        assert f"{first['unexpected_count']} of {first['element_count']} rows failed" in msg
        assert "e.g. " + "/".join(quality.ID_COLUMNS[first["table"]]) in msg
        assert str(first["examples"][0]) in msg


def test_every_expectation_says_why(params):
    for stage in quality.STAGE_SUITES:
        checks = quality.suite_checks(stage, params)
        assert checks, stage
        for c in checks:
            assert len(c.why) > 20, c


def test_mostly_is_judged_over_all_batches(params):
    """Batches each under the mojibake allowance must not hide a table over it (and vice versa)."""
    clean = [f"row {i}" for i in range(999)]
    one_bad = utf_frames(["ok"], clean + ["donâ€™t"])          # 1 in 1000: within mostly=0.999
    assert run_suite("validate_utf", params, one_bad)["success"]
    # Two batches of 500 rows, one bad row each: each batch alone is over 0.1%, the table too.
    batches = [("questions", "rows", text_frame(questions(["ok"])))]
    for b in range(2):
        df = text_frame(answers(clean[:499] + ["cafÃ©"]))
        df["id"] = df["id"] + 1000 * b
        batches.append(("answers", "rows", df))
    report = run_suite("validate_utf", params, batches)
    check = failed(report)["answers.text: expect_column_values_to_not_match_regex"]
    assert check["element_count"] == 1000 and check["unexpected_count"] == 2


HTML_FRAGMENTS = ["<p>", "</p>", "<div>", "</div>", "<pre><code>", "</code></pre>", "<code>", "</code>", "&amp;",
                  "&lt;", "&gt;", "&lt;div&gt;", "List&lt;int&gt;", "&amp;amp;", "\n", " ", "word", "<br>", "<li>",
                  "<ul>", "</ul>", "&#39;", "&nbsp;", "<b>", "</b>", "a < b", "x > y", "&", "<a href='x'>", "</a>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(HTML_FRAGMENTS), max_size=25))
def test_strip_html_output_passes_the_prose_checks(parts):
    """The gate and the stage agree: whatever HTML (without literal backticks) strip_html is given,
    its output leaves no tag or entity in prose, so the tag/entity checks never fire on a sound stage."""
    text = strip_html("".join(parts))
    p = quality.prose(text)
    assert not re.search(quality.HTML_TAG, p) and not re.search(quality.HTML_ENTITY, p), (text, p)


def test_prose_drops_code_blocks_and_spans_but_not_across_paragraphs():
    text = "Use `<div>` here.\n\n```\n<p>&amp;</p>\n```\n\nA lone ` tick.\n\nThen <b>left</b> and `x`."
    p = quality.prose(text)
    assert "<div>" not in p and "&amp;" not in p and "<b>left</b>" in p and "`x`" not in p


_PROSE_PARTS = ["<", "</", ">", "/", "a", "b", "div", "DiV", "li", "h1", "x", "&", "#", "x2", "12", "amp", ";",
                "`", "``", "```", "\n", "\n\n", " ", "=", "'", "</b>", "<i>", "</Li >", "<br/>", "&amp;", "&#39;",
                "&#x2F;", "`<b>`", "```\n<p>\n```\n"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PROSE_PARTS), max_size=30))
@example(["</div>"])
@example(["&#x41;"])
@example(["<a", "`x`", ">"])          # prose joins what code split: "<a >" is a tag, "<a`x`>" is not
@example(["``", "</b>", "``"])
def test_prose_suspect_finds_every_text_whose_prose_can_fail(parts):
    """prose_frame skips the code-stripping regexes for texts PROSE_SUSPECT does not match: their
    prose must then hold no tag or entity either, or the gate would judge the wrong text."""
    text = "".join(parts)
    p = quality.prose(text)
    if re.search(quality.HTML_TAG, p) or re.search(quality.HTML_ENTITY, p) or \
            re.search(quality.HTML_TAG, text) or re.search(quality.HTML_ENTITY, text):
        assert re.search(quality.PROSE_SUSPECT, text), (text, p)
    framed = prose_frame(answers([text]))
    assert framed["body_prose"].tolist() == [p if re.search(quality.PROSE_SUSPECT, text) else text]


def test_space_classes_match_what_python_s_matches_in_both_engines():
    """SPACE and NOT_SPACE spell out Python's \\s and \\S so that GX's regex checks run on Arrow's
    RE2: over every code point, Python's re and RE2 must read them exactly as Python reads \\s."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    is_space = [re.fullmatch(r"\s", c) is not None for c in chars]
    assert [re.fullmatch(quality.SPACE, c) is not None for c in chars] == is_space
    assert [re.fullmatch(quality.NOT_SPACE, c) is None for c in chars] == is_space
    arr = pa.array(chars)
    assert pc.match_substring_regex(arr, f"^{quality.SPACE}$").to_pylist() == is_space
    assert pc.match_substring_regex(arr, f"^{quality.NOT_SPACE}$").to_pylist() == [not s for s in is_space]


# What makes pandas run a str.contains pattern through Python's re row by row, not Arrow's RE2
# (pandas.core.arrays._arrow_string_mixins): \s \S \w \W \d \D \b \B, lookaround, \u escapes.
_PYTHON_ONLY_REGEX = re.compile(r"\\[sSwWdDbBuUN]|\(\?<?[=!]")


@pytest.mark.parametrize("stage", ["strip_html", "validate_utf"])
def test_text_suite_regexes_stay_on_arrow(stage):
    """The text suites read every body of the corpus: each regex must be one RE2 runs (see above)."""
    patterns = [c.kwargs["regex"] for c in quality.suite_checks(stage, load_params()) if "regex" in c.kwargs]
    if stage == "strip_html":
        patterns += list(quality._SUSPECT_HALVES)
    assert patterns and not [p for p in patterns if _PYTHON_ONLY_REGEX.search(p)]
    # and they mean the same to both engines on text that exercises them
    texts = ["<p>x", "<P\u3000a>", "<div\x0b>", "a &amp; b", "&#x41;", " \u2028 ", "", "x", "Ã©", "\x01",
             "\ufffd", "<br/>", "<lı>", "List<int>", "<a`x`>"]
    arr = pa.array(texts)
    for p in patterns:
        expected = [re.search(p, t) is not None for t in texts]
        if "(?i)" in p:     # Python's re alone also reads "ı" as "i" (see quality.HTML_TAG)
            expected = [e and "ı" not in t for e, t in zip(expected, texts)]
        assert pc.match_substring_regex(arr, p).to_pylist() == expected, p


_CELL = st.one_of(st.none(), st.text(st.sampled_from(list("ab <>&#;`\n\t é　")), max_size=12),
                  st.lists(st.sampled_from(_PROSE_PARTS), max_size=8).map("".join))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_CELL, _CELL), max_size=8), st.booleans())
def test_row_frames_from_arrow_equal_the_row_by_row_frames(rows, with_title):
    """The stages read Arrow-held strings, which text_frame/prose_frame handle without a Python string
    per row; object columns (which may hold surrogates) take the row-by-row path. Same frames."""
    cols = {"id": pa.array(range(1, len(rows) + 1), pa.int64()), "body": pa.array([b for _, b in rows], pa.string())}
    if with_title:
        cols["title"] = pa.array([t for t, _ in rows], pa.string())
    arrow_held = to_frame(pa.table(cols))
    object_held = arrow_held.astype({c: object for c in ("title", "body") if c in arrow_held})
    object_held = object_held.where(object_held.notna(), None)
    for derive in (text_frame, prose_frame):
        fast, plain = derive(arrow_held), derive(object_held)
        assert fast.columns.tolist() == plain.columns.tolist()
        for c in ("text", "encodes_as_utf8", "body_prose"):
            if c in fast:
                assert fast[c].tolist() == plain[c].tolist(), c
    bodies = [b or "" for _, b in rows]
    assert prose_frame(arrow_held)["body_prose"].tolist() == \
        [quality.prose(b) if re.search(quality.PROSE_SUSPECT, b) else b for b in bodies]


def _write_rows(path: Path, schema: pa.Schema, frame: pd.DataFrame, group_rows: int) -> None:
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path, row_group_size=group_rows)


@pytest.mark.parametrize("stage", ["strip_html", "validate_utf"])
@pytest.mark.parametrize("workers", [2, 3])
def test_text_checks_on_workers_report_what_one_process_reports(tmp_path, params, stage, workers):
    """The gate's text checks run row group by row group on a pool: same counts, same first
    failing rows in file order, same verdicts (mostly judged on the whole table)."""
    n = 120
    bodies = [f"answer {i} with `<div>` in code" for i in range(n)]
    for i in (3, 40, 41, 77, 118):                # failures spread over several row groups
        bodies[i] = f"left <b>bold</b> and &amp; {i}" if stage == "strip_html" else f"caf\u00c3\u00a9 \x01 {i}"
    q_bodies = [f"question {i}" for i in range(30)]
    q_bodies[25] = "<p>still html</p>" if stage == "strip_html" else "bad \ufffd"
    n_q = len(q_bodies)
    q = pd.DataFrame({"id": list(range(1, n_q + 1)), "owner_user_id": [None] * n_q, "creation_date": [None] * n_q,
                      "score": [1] * n_q, "title": [f"t{i}" for i in range(n_q)], "body": q_bodies})
    a = pd.DataFrame({"id": list(range(1001, 1001 + n)), "owner_user_id": [None] * n, "creation_date": [None] * n,
                      "parent_id": [1] * n, "score": [2] * n, "body": bodies})
    out = tmp_path / "out"
    out.mkdir()
    _write_rows(out / "questions.parquet", QUESTION_SCHEMA, q, 7)
    _write_rows(out / "answers.parquet", ANSWER_SCHEMA, a, 13)
    serial = run_suite(stage, params, quality.stage_frames(stage, out, params))
    assert not serial["success"] and serial["rows_checked"] == {"questions": n_q, "answers": n}
    assert quality.run_row_suite_parallel(stage, params, out, workers) == serial

    # An empty table is still checked (zero rows) and reported the same way.
    _write_rows(out / "questions.parquet", QUESTION_SCHEMA, q.iloc[:0], 7)
    assert quality.run_row_suite_parallel(stage, params, out, workers) == \
        run_suite(stage, params, quality.stage_frames(stage, out, params))


# ----------------------------------------------------------------------------- the gate on files
def write_raw(folder: Path, question_ids: list[int]) -> None:
    folder.mkdir(parents=True)
    n = len(question_ids)
    q = pa.table({"id": question_ids, "owner_user_id": [None] * n, "creation_date": [None] * n,
                  "score": [1] * n, "title": ["t"] * n, "body": ["b"] * n}, schema=QUESTION_SCHEMA)
    a = pa.table({"id": [50], "owner_user_id": [None], "creation_date": [None], "parent_id": [question_ids[0]],
                  "score": [3], "body": ["x"]}, schema=ANSWER_SCHEMA)
    pq.write_table(q, folder / "questions.parquet")
    pq.write_table(a, folder / "answers.parquet")


def test_validate_stage_raises_one_message_and_writes_no_metrics(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 6, 7, 7])
    with pytest.raises(StageError) as err:
        quality.validate_stage("ingest", {"data/raw": tmp_out}, params)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("quality gate failed in stage ingest: expect_column_values_to_be_unique on questions.id")
    assert "4 of 5 rows failed, e.g. id 6, 6, 7, 7" in msg
    assert "Report: gx/uncommitted/failures/ingest.html" in msg
    assert not Path("metrics/quality/ingest.json").exists()
    page = Path("gx/uncommitted/failures/ingest.html").read_text(encoding="utf-8")
    assert "FAIL" in page and "questions.id" in page
    details = json.loads(Path("gx/uncommitted/failures/ingest.json").read_text(encoding="utf-8"))
    assert details["unsuccessful"] == 1


def test_validate_stage_writes_quality_metrics_when_all_pass(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    tmp_out = Path("data/.raw.tmp-1")
    write_raw(tmp_out, [5, 6, 7])
    quality.validate_stage("ingest", {"data/raw": tmp_out}, params)
    m = json.loads(Path("metrics/quality/ingest.json").read_text(encoding="utf-8"))
    assert m["success"] and m["evaluated"] == m["successful"] > 10 and m["unsuccessful"] == 0
    assert m["rows_checked"] == {"questions": 3, "answers": 1}
    assert m["failed_rows"]["questions.id: expect_column_values_to_be_unique"] == 0
    assert "questions.id: expect_column_values_to_be_of_type" not in m["failed_rows"]   # a type has no rows


# ----------------------------------------------------------------------------- dvc repro stops at the gate
@pytest.mark.slow
def test_corrupted_input_stops_dvc_repro_at_that_stage(project: Path):
    from stages.split import assign

    run(["dvc", "repro", "top_answers"], project)
    # Corrupt split's input the way a bad join would: one question's second pair carries another
    # title, chosen so that the title-grouped hash sends it to another side than its first pair.
    path = project / "data" / "top2" / "pairs.parquet"
    df = pq.read_table(path).to_pandas()
    sp = load_params(project / "params.yaml")["split"]
    side = lambda q, t: assign(q, t, int(sp["seed"]), float(sp["test_fraction"]), float(sp["val_fraction"]))
    qid = int(df.loc[df["answer_rank"] == 2, "question_id"].iloc[0])
    first, second = df.index[df["question_id"] == qid][:2]
    title = next(t for t in (f"{df.at[first, 'title']} ({i})" for i in range(1000))
                 if side(qid, t) != side(qid, df.at[first, "title"]))
    df.at[second, "title"] = title
    pq.write_table(pa.Table.from_pandas(df, schema=PAIR_SCHEMA, preserve_index=False), path)
    run(["dvc", "commit", "-f", "top_answers"], project)   # the corrupted data is top_answers' output now

    proc = run(["dvc", "repro", "report"], project, check=False)   # the data stages and the report
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "quality gate failed in stage split: expect_column_values_to_be_unique on question_sides.question_id" in out
    assert f"rows failed, e.g. question_id {qid}, {qid}" in out
    assert "Report: gx/uncommitted/failures/split.html" in out
    assert (project / "gx/uncommitted/failures/split.html").exists()
    # Nothing of the failed stage was committed, and nothing after it ran.
    assert not (project / "data" / "split").exists()
    assert not (project / "metrics" / "quality" / "split.json").exists()
    assert not (project / "data" / "shards").exists()
    lock = (project / "dvc.lock").read_text(encoding="utf-8")
    assert "top_answers:" in lock and "\n  split:" not in lock
    assert json.loads((project / "metrics/quality/top_answers.json").read_text())["success"]
