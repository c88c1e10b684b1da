"""Sources as users have them (stages/curate/sources.py): every layout, built here from real rows
of ../shared (a Stack Exchange dump, the Kaggle sample), gives the same questions, answers and
pairs as the form it was made from; ingest.tags keeps exactly the tagged questions and their answers.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core import runner
from stages.core.errors import StageError
from stages.curate import ingest, top_answers
from stages.curate.sources import canonical, detect

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
DUMP = "matheducators.stackexchange.com-Posts.xml"

# Stack Exchange Data Explorer's Posts columns, in its order (every one a CSV column of its export).
SEDE = ["Id", "PostTypeId", "AcceptedAnswerId", "ParentId", "CreationDate", "DeletionDate", "Score", "ViewCount",
        "Body", "OwnerUserId", "OwnerDisplayName", "LastEditorUserId", "LastEditDate", "LastActivityDate", "Title",
        "Tags", "AnswerCount", "CommentCount", "ClosedDate", "CommunityOwnedDate", "ContentLicense"]


def _run(source: Path, tmp: Path, tags: list[str] | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ingest `source` in a fresh folder under tmp: (audit summary, questions, answers, rejects)."""
    work = tmp / f"run-{len(list(tmp.glob('run-*')))}"
    work.mkdir()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        params = {"ingest": {"source": str(source), "tags": tags or []},
                  "runtime": {"workers": 1, "batch_rows": 64, "gx_preload": False}}
        summary = runner.execute(ingest.STAGE, params)
    finally:
        os.chdir(cwd)
    read = lambda p: pq.read_table(work / p).to_pandas()  # noqa: E731
    return summary, read("data/raw/questions.parquet"), read("data/raw/answers.parquet"), \
        read("data/rejects/ingest.parquet")


def _pairs(q: pd.DataFrame, a: pd.DataFrame) -> list[tuple[int, int]]:
    """The (question, answer) pairs top_answers forms (k=2) from these tables."""
    pairs = top_answers.join_pairs(q, top_answers.rank_answers(a, set(q["id"]), 2).kept)
    return sorted(zip(pairs["question_id"].tolist(), pairs["answer_id"].tolist()))


def _by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("id").reset_index(drop=True)


def _same(got: tuple, want: tuple) -> None:
    """Same questions and answers (in id order: a reader's batches may hold an answer before its
    question, which then waits), and the same rejects by reason."""
    pd.testing.assert_frame_equal(_by_id(got[1]), _by_id(want[1]))
    pd.testing.assert_frame_equal(_by_id(got[2]), _by_id(want[2]))
    assert got[3]["reason"].value_counts().to_dict() == want[3]["reason"].value_counts().to_dict()
    assert _pairs(got[1], got[2]) == _pairs(want[1], want[2])


# ----------------------------------------------------------------------------- fixtures from real rows
@pytest.fixture(scope="module")
def dump_rows(shared: Path) -> list[dict[str, str]]:
    """The first 400 rows of a real dump: questions, answers and a few other post types."""
    rows = []
    for _, el in ET.iterparse(shared / "data" / "se-dump" / DUMP):
        if el.tag == "row":
            rows.append(dict(el.attrib))
            if len(rows) == 400:
                break
    assert {r["PostTypeId"] for r in rows} >= {"1", "2"}
    return rows


def _xml(rows: list[dict[str, str]], path: Path) -> Path:
    root = ET.Element("posts")
    for r in rows:
        ET.SubElement(root, "row", r)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _sede_date(v: str) -> str:
    return v.replace("T", " ")[:19] if v else ""       # Data Explorer writes 2008-08-01 13:57:07


def _sede_csv(rows: list[dict[str, str]], path: Path, columns: list[str] = SEDE) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        w.writerow(columns)
        for r in rows:
            w.writerow([_sede_date(r.get(c, "")) if c.endswith("Date") else r.get(c, "") for c in columns])
    return path


def _bigquery_records(rows: list[dict[str, str]]) -> list[dict]:
    """BigQuery's Stack Overflow posts as exported: snake_case, typed, NULLs, tags as python|list."""
    def num(v: str | None) -> int | None:
        return int(v) if v else None

    out = []
    for r in rows:
        tags = [t for t in r.get("Tags", "").strip("<>|").replace("><", "|").split("|") if t]
        out.append({"id": int(r["Id"]), "title": r.get("Title"), "body": r["Body"],
                    "creation_date": r["CreationDate"].replace("T", " ") + " UTC",
                    "owner_user_id": num(r.get("OwnerUserId")), "parent_id": num(r.get("ParentId")),
                    "post_type_id": int(r["PostTypeId"]), "score": int(r["Score"]),
                    "view_count": num(r.get("ViewCount")), "tags": "|".join(tags) or None})
    return out


# ----------------------------------------------------------------------------- one posts file
def test_data_explorer_csv_equals_the_dump(dump_rows, tmp_path: Path) -> None:
    want = _run(_xml(dump_rows, tmp_path / "Posts.xml"), tmp_path)
    got = _run(_sede_csv(dump_rows, tmp_path / "QueryResults.csv"), tmp_path)
    _same(got, want)
    assert len(got[1]) > 50 and len(got[2]) > 50
    assert got[0]["layout"] == "posts_csv"
    assert {"ViewCount", "AcceptedAnswerId", "ContentLicense"} <= set(got[0]["ignored_columns"])
    assert "not_question_or_answer" in set(got[3]["reason"])


def test_questions_only_export(dump_rows, tmp_path: Path) -> None:
    questions = [r for r in dump_rows if r["PostTypeId"] == "1"]
    want = _run(_xml(questions, tmp_path / "Posts.xml"), tmp_path)
    cols = ["Id", "CreationDate", "Score", "Body", "OwnerUserId", "Title", "Tags"]     # no PostTypeId, no ParentId
    got = _run(_sede_csv(questions, tmp_path / "questions.csv", cols), tmp_path)
    _same(got, want)
    assert len(got[1]) == len(questions) and len(got[2]) == 0 and got[0]["rejected"] == 0


def test_parent_id_tells_questions_from_answers(dump_rows, tmp_path: Path) -> None:
    posts = [r for r in dump_rows if r["PostTypeId"] in ("1", "2")]
    want = _run(_xml(posts, tmp_path / "Posts.xml"), tmp_path)
    cols = [c for c in SEDE if c != "PostTypeId"]
    _same(_run(_sede_csv(posts, tmp_path / "posts.csv", cols), tmp_path), want)


@pytest.mark.parametrize("form", ["jsonl", "jsonl.gz", "parquet"])
def test_bigquery_snake_case_equals_the_dump(form: str, dump_rows, tmp_path: Path) -> None:
    want = _run(_xml(dump_rows, tmp_path / "Posts.xml"), tmp_path)
    records = _bigquery_records(dump_rows)
    path = tmp_path / f"posts.{form}"
    if form == "parquet":
        table = pa.Table.from_pylist(records)
        dates = pd.to_datetime(table.column("creation_date").to_pandas(), utc=True)
        table = table.set_column(3, "creation_date", pa.array(dates, pa.timestamp("ms", tz="UTC")))
        pq.write_table(table, path, row_group_size=100)
    else:
        text = "".join(json.dumps(r) + "\n" for r in records).encode()
        path.write_bytes(gzip.compress(text, mtime=0) if form.endswith("gz") else text)
    got = _run(path, tmp_path)
    _same(got, want)
    assert got[0]["ignored_columns"] == ["view_count"]


def test_jsonl_column_types_may_change_between_chunks(dump_rows, tmp_path: Path, monkeypatch) -> None:
    """A column null in the first lines and numbers later, or ints then floats (pandas NaN)."""
    from stages.curate import sources

    records = _bigquery_records([r for r in dump_rows if r["PostTypeId"] in ("1", "2")])
    records.sort(key=lambda r: r["parent_id"] is not None)          # every question first: parent_id null
    for r in records[-20:]:
        r["score"] = float(r["score"])
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    real = sources._jsonl_chunks
    monkeypatch.setattr(sources, "_jsonl_chunks", lambda stream: real(stream, 4096))
    summary, q, a, rej = _run(path, tmp_path)
    assert (len(q), len(a)) == (sum(r["parent_id"] is None for r in records), sum(r["parent_id"] is not None for r in records))


# ----------------------------------------------------------------------------- Kaggle forms
def _resaved(folder: Path, index: bool) -> Path:
    """The Kaggle pair read and written back by pandas: NA owners make OwnerUserId float (467090.0),
    and ParentId is float too where a subset has missing values."""
    folder.mkdir()
    for name in ("Questions.csv", "Answers.csv"):
        df = pd.read_csv(SAMPLE / name, encoding="latin-1")
        if "ParentId" in df:
            df["ParentId"] = df["ParentId"].astype(float)
        df.to_csv(folder / name, index=index, encoding="latin-1")
    return folder


@pytest.mark.parametrize("index", [False, True], ids=["index=False", "with the index column"])
def test_pandas_resaved_kaggle_pair_gives_the_same_pairs(index: bool, tmp_path: Path) -> None:
    folder = _resaved(tmp_path / "resaved", index)
    text = (folder / "Answers.csv").read_text(encoding="latin-1")
    assert ".0," in text.splitlines()[1], "ids written as floats"
    want = _run(SAMPLE, tmp_path)
    got = _run(folder, tmp_path)
    pd.testing.assert_frame_equal(got[1][["id", "owner_user_id", "score", "title"]],
                                  want[1][["id", "owner_user_id", "score", "title"]])
    pd.testing.assert_frame_equal(got[2][["id", "owner_user_id", "parent_id", "score"]],
                                  want[2][["id", "owner_user_id", "parent_id", "score"]])
    assert _pairs(got[1], got[2]) == _pairs(want[1], want[2]) and len(_pairs(got[1], got[2])) > 50
    assert got[0]["rejected"] == 0 and "owner_unreadable" not in got[0]["repaired_by_kind"]
    assert got[0]["ignored_columns"] == (["(unnamed column 1)"] if index else [])


def _tags_csv(sample_questions: Path) -> bytes:
    """A Tags.csv for the sample's questions, Kaggle's form (Id,Tag; one row a tag): every question
    python, every third pandas too."""
    ids = pd.read_csv(sample_questions, encoding="latin-1")["Id"].tolist()
    lines = ["Id,Tag"] + [f"{i},python" for i in ids] + [f"{i},Pandas" for i in ids[::3]]
    return ("\n".join(lines) + "\n").encode()


def _kaggle_zip(path: Path, folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("Questions.csv", "Answers.csv"):
            zf.write(folder / name, name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_kaggle_zip_equals_the_folder(tmp_path: Path) -> None:
    want = _run(SAMPLE, tmp_path)
    got = _run(_kaggle_zip(tmp_path / "pythonquestions.zip", SAMPLE, {"Tags.csv": _tags_csv(SAMPLE / "Questions.csv")}),
               tmp_path)
    _same(got, want)
    assert got[0]["layout"] == "kaggle_zip"


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_kaggle_tags_csv_selects_questions(form: str, tmp_path: Path) -> None:
    folder = tmp_path / "k"
    folder.mkdir()
    for name in ("Questions.csv", "Answers.csv"):
        (folder / name).write_bytes((SAMPLE / name).read_bytes())
    tags = _tags_csv(SAMPLE / "Questions.csv")
    if form == "folder":
        (folder / "Tags.csv").write_bytes(tags)
        source = folder
    else:
        source = _kaggle_zip(tmp_path / "k.zip", folder, {"Tags.csv": tags})
    everything = _run(SAMPLE, tmp_path)
    summary, q, a, rej = _run(source, tmp_path, tags=["pandas"])
    wanted = set(everything[1]["id"].tolist()[::3])
    assert set(q["id"]) == wanted
    assert set(a["id"]) == set(everything[2].loc[everything[2]["parent_id"].isin(wanted), "id"])
    assert summary["rejected_by_reason"] == {"tag_not_selected": len(everything[1]) - len(q) + len(everything[2]) - len(a)}
    assert summary["rows_in"] == summary["rows_out"] + summary["rejected"]


# ----------------------------------------------------------------------------- compressed dumps
@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gz", "bz2"])
def test_compressed_dump_equals_the_dump(compress, shared: Path, tmp_path: Path) -> None:
    dump = shared / "data" / "se-dump" / DUMP
    packed = tmp_path / (DUMP + (".gz" if compress is gzip.compress else ".bz2"))
    packed.write_bytes(compress(dump.read_bytes()))
    want = _run(dump, tmp_path)
    got = _run(packed, tmp_path)
    _same(got, want)
    assert got[1]["id"].tolist() == want[1]["id"].tolist() and len(got[1]) == 397


# ----------------------------------------------------------------------------- tags
def _tagged(rows: list[dict[str, str]], tag: str) -> set[int]:
    return {int(r["Id"]) for r in rows if r["PostTypeId"] == "1" and f"<{tag}>" in r.get("Tags", "").lower()}


def test_tags_keep_exactly_the_tagged_questions_and_their_answers(shared: Path, tmp_path: Path) -> None:
    """A real dump with mixed tags, some questions also tagged python: ingest.tags=[python] keeps
    exactly those and their answers; the audit counts every other question and answer."""
    rows = []
    for _, el in ET.iterparse(shared / "data" / "se-dump" / DUMP):
        if el.tag == "row":
            rows.append(dict(el.attrib))
    for r in rows:
        if r["PostTypeId"] == "1" and int(r["Id"]) % 4 == 0:
            r["Tags"] = r.get("Tags", "") + "<Python>"
    dump = _xml(rows, tmp_path / "Posts.xml")
    keep = _tagged(rows, "python")
    questions = {int(r["Id"]) for r in rows if r["PostTypeId"] == "1"}
    answers = {int(r["Id"]): int(r["ParentId"]) for r in rows if r["PostTypeId"] == "2"}
    assert 0 < len(keep) < len(questions)

    summary, q, a, rej = _run(dump, tmp_path, tags=["python"])
    assert set(q["id"]) == keep
    assert set(a["id"]) == {i for i, p in answers.items() if p in keep}
    n_other = sum(r["PostTypeId"] not in ("1", "2") for r in rows)
    assert summary["rejected_by_reason"] == {"not_question_or_answer": n_other,
                                             "tag_not_selected": len(rows) - n_other - len(q) - len(a)}
    untagged = rej[rej["reason"] == "tag_not_selected"]
    assert set(untagged.loc[untagged["table"] == "questions", "id"]) == questions - keep


def test_tags_from_a_bigquery_column(dump_rows, tmp_path: Path) -> None:
    top = pd.Series([t for r in dump_rows for t in r.get("Tags", "").strip("<>").split("><") if t]).value_counts()
    tag = top.index[0]
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _bigquery_records(dump_rows)))
    summary, q, a, rej = _run(path, tmp_path, tags=[tag.upper()])
    assert set(q["id"]) == _tagged(dump_rows, tag) and len(q) > 0
    assert set(a["parent_id"]) <= set(q["id"])


# ----------------------------------------------------------------------------- recognition
@pytest.mark.parametrize("name", ["ParentId", "parent_id", "PARENTID", "Parent Id", "parent-id"])
def test_column_names_match_whatever_their_style(name: str) -> None:
    assert canonical(name) == "ParentId"
    assert canonical("view_count") == "view_count"


def test_unknown_layout_names_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text('"question_id","question_text","votes"\n"1","x","2"\n')
    with pytest.raises(StageError) as err:
        detect(path)
    msg = str(err.value)
    assert "\n" not in msg and "question_id, question_text, votes" in msg and "accepted:" in msg


def test_integral_floats_are_integers_and_other_floats_are_rejected() -> None:
    res = ingest.type_batch("answers", {"Id": ["1.0", "2.5", " 3 ", "4"], "OwnerUserId": ["467090.0", "nan", "NA", "7.5"],
                                        "CreationDate": ["2008-08-01T13:57:07Z", "2008-08-01T13:57:07.123",
                                                         "2008-08-01 13:57:07 UTC", "null"],
                                        "ParentId": ["29481088.0", "1", "1", "1"], "Score": ["5.0", "1", "-2", "3"],
                                        "Body": ["b"] * 4})
    assert res.kept["id"].tolist() == [1, 3, 4]
    assert res.kept["parent_id"].tolist() == [29481088, 1, 1]
    assert res.kept["score"].tolist() == [5, -2, 3]
    assert res.kept["owner_user_id"].tolist()[0] == 467090 and res.kept["owner_user_id"].isna().tolist()[1:] == [True, True]
    assert res.repaired["owner_unreadable"] == 1          # 7.5 is no user id: kept, owner null
    dates = res.kept["creation_date"].tolist()
    assert str(dates[0]) == str(dates[1]) == "2008-08-01 13:57:07+00:00" and pd.isna(dates[2])
    assert res.rejected[["reason", "detail"]].values.tolist() == [["bad_id", "2.5"]]


def test_json_types_become_the_text_a_csv_holds() -> None:
    from stages.curate.sources import as_text

    assert as_text(pa.array([29481088.0, 1.5, None]))[0].to_pylist() == ["29481088", "1.5", None]
    assert as_text(pa.array([["python", "list"], None]))[0].to_pylist() == ["<python><list>", None]
    ts = pa.array(pd.to_datetime(["2008-08-01 13:57:07.5"], utc=True), pa.timestamp("ms", tz="UTC"))
    assert as_text(ts)[0].to_pylist() == ["2008-08-01T13:57:07"]
