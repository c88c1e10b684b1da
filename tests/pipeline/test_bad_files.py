"""Bad files: each gives one clear line naming the file and the problem, exit 1, no outputs, no network.

Every case runs the real ingest entry point (`python -m stages.curate.ingest`) in a copy of the project,
with `ingest.source` pointed at the bad input. A local TCP listener stands in for "the network":
hostile XML points its external entities and DTDs at it, and the test checks that nothing ever
connected.
"""
from __future__ import annotations

import bz2
import functools
import gzip
import io
import random
import zipfile
import re
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import REPO, Listener, run

SAMPLE = REPO / "data" / "sample"
SE_DUMP = REPO.parent / "shared" / "data" / "se-dump" / "genai.stackexchange.com-Posts.xml"
ROW = ('<row Id="1" PostTypeId="1" Score="3" CreationDate="2020-01-01T00:00:00.000" Title="t" '
       'Body="&lt;p&gt;{body}&lt;/p&gt;" />')


@pytest.fixture(scope="module")
def listener() -> Listener:
    lst = Listener()
    yield lst
    lst.sock.close()


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import copy_project

    return copy_project(tmp_path_factory.mktemp("badfiles") / "proj")


def _kaggle(folder: Path, questions: bytes | None, answers: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("Questions.csv", questions), ("Answers.csv", answers)):
        if data is not None:
            (folder / name).write_bytes(data)
    return folder


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _xml(path: Path, doctype: str, body: str = "hello") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n{doctype}\n<posts>\n  {ROW.format(body=body)}\n</posts>\n',
                    encoding="utf-8")
    return path


def _billion_laughs() -> str:
    ents = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    return "<!DOCTYPE posts [" + "".join(ents) + "]>"


Q = (SAMPLE / "Questions.csv").read_bytes() if SAMPLE.exists() else b""
A = (SAMPLE / "Answers.csv").read_bytes() if SAMPLE.exists() else b""


def _cut_mid_quote(data: bytes) -> bytes:
    # Cut inside a multi-line quoted body half-way through the file.
    at = data.index(b'"<p>', len(data) // 2)
    return data[: at + 40]


@functools.lru_cache(maxsize=None)
def _bomb(kind: str, head: bytes, size: int = 100 << 20) -> bytes:
    """`head` then `size` bytes of one letter, compressed about a thousand times (bz2: a million)."""
    chunk = b"a" * (1 << 20)
    if kind == "bz2":
        c = bz2.BZ2Compressor(9)
        return b"".join([c.compress(head)] + [c.compress(chunk) for _ in range(size >> 20)] + [c.flush()])
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as g:
        g.write(head)
        for _ in range(size >> 20):
            g.write(chunk)
    return buf.getvalue()


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("Questions.csv", "w", force_zip64=True) as fh:
            fh.write(b"Id,OwnerUserId,CreationDate,Score,Title,Body\n\"")
            for _ in range(100):
                fh.write(b"a" * (1 << 20))
        zf.writestr("Answers.csv", A)
    return path


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# name -> (build(dir, listener) -> (source, the bad file named in the message), problem regex)
CASES: dict[str, tuple[Callable[[Path, Listener], tuple[Path, Path]], str]] = {
    "missing source": (lambda d, _: (d / "nowhere", d / "nowhere"), r"no such file or folder"),
    "missing Answers.csv": (lambda d, _: (_kaggle(d / "k", Q, None), d / "k" / "Answers.csv"), r"file not found"),
    "empty Questions.csv": (lambda d, _: (_kaggle(d / "k", b"", A), d / "k" / "Questions.csv"), r"file is empty"),
    "empty Posts.xml": (lambda d, _: (_file(d / "Posts.xml", b""),) * 2, r"file is empty"),
    "wrong columns": (lambda d, _: (_kaggle(d / "k", Q, b"Id,Owner,When,Parent,Points,Text\n1,2,3,4,5,6\n"),
                                    d / "k" / "Answers.csv"), r"missing columns .*ParentId"),
    "missing Body column": (lambda d, _: (_kaggle(d / "k", b"Id,OwnerUserId,CreationDate,Score,Title\n1,2,"
                                                  b"2008-08-02T15:11:16Z,3,t\n", A), d / "k" / "Questions.csv"),
                            r"missing columns \['Body'\]"),
    # A header that looks like rich markup must be printed as it is, not crash the printer.
    "markup-like header": (lambda d, _: (_kaggle(d / "k", b"Id,[/bold],[red]x\n1,2,3\n", A), d / "k" / "Questions.csv"),
                           r"missing columns .*\[/bold\]"),
    "binary file": (lambda d, _: (_kaggle(d / "k", random.Random(7).randbytes(50_000), A), d / "k" / "Questions.csv"),
                    r"binary"),
    "gzipped CSV": (lambda d, _: (_kaggle(d / "k", gzip.compress(Q, mtime=0), A), d / "k" / "Questions.csv"), r"binary"),
    "CSV cut mid-quote": (lambda d, _: (_kaggle(d / "k", Q, _cut_mid_quote(A)), d / "k" / "Answers.csv"),
                          r"truncated"),
    "XXE to a URL": (lambda d, lst: (_xml(d / "Posts.xml", f'<!DOCTYPE posts [<!ENTITY xxe SYSTEM "{lst.url}/secret">]>',
                                          "&amp;xxe; &xxe;"), d / "Posts.xml"), r"unsafe XML.*xxe"),
    "XXE to a local file": (lambda d, _: (_xml(d / "Posts.xml", f'<!DOCTYPE posts [<!ENTITY xxe SYSTEM '
                                               f'"file://{(d / "secret.txt").as_posix()}">]>', "&xxe;"),
                                          d / "Posts.xml"), r"unsafe XML.*xxe"),
    "parameter entity to a URL": (lambda d, lst: (_xml(d / "Posts.xml", f'<!DOCTYPE posts [<!ENTITY % ext SYSTEM '
                                                       f'"{lst.url}/ext.dtd"> %ext;]>'), d / "Posts.xml"),
                                  r"unsafe XML"),
    "billion laughs": (lambda d, _: (_xml(d / "Posts.xml", _billion_laughs(), "&lol9;"), d / "Posts.xml"),
                       r"unsafe XML.*lol"),
    "truncated XML": (lambda d, _: (_file(d / "Posts.xml", SE_DUMP.read_bytes()[:30_000]),) * 2, r"truncated XML"),
    # Sources as users have them, refused: an unknown layout names the columns it found.
    "unknown columns": (lambda d, _: (_file(d / "export.csv", b'"question_id","question_text","votes"\n"1","x","2"\n'),) * 2,
                        r"unknown layout: columns found \[question_id, question_text, votes\].*accepted"),
    "unknown parquet columns": (lambda d, _: (_parquet(d / "x.parquet", {"a": [1], "b": ["x"]}),) * 2,
                                r"unknown layout: columns found \[a, b\]"),
    "answers alone": (lambda d, _: (_file(d / "Answers.csv", A),) * 2, r"unknown layout \(answers only"),
    "zip without the CSVs": (lambda d, _: (_file(d / "x.zip", _zipped({"readme.txt": b"hi"})),) * 2,
                             r"unknown layout: the zip holds \['readme.txt'\]"),
    "7z dump": (lambda d, _: (_file(d / "stackoverflow.com-Posts.7z", b"7z\xbc\xaf\x27\x1c" + bytes(100)),) * 2,
                r"7z e .*Posts.7z Posts.xml"),
    "gzip bomb": (lambda d, _: (_file(d / "posts.csv.gz", _bomb("gzip", b'Id,PostTypeId,Score,Title,Body\n"')),) * 2,
                  r"decompression bomb"),
    "bz2 bomb": (lambda d, _: (_file(d / "Posts.xml.bz2", _bomb("bz2", b'<?xml version="1.0"?>\n<posts>')),) * 2,
                 r"decompression bomb"),
    "zip bomb": (lambda d, _: (_zip_bomb(d / "bomb.zip"),) * 2, r"zip bomb"),
}


def _zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _set_source(proj: Path, source: Path) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["ingest"]["source"] = str(source)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _leftovers(proj: Path) -> list[str]:
    """Anything ingest writes: its outputs, its rejects, its audit, and any temporary sibling."""
    found = [p for p in (proj / "data" / "raw", proj / "data" / "rejects" / "ingest.parquet",
                         proj / "metrics" / "audit" / "ingest.json") if p.exists()]
    for d in (proj / "data", proj / "data" / "rejects", proj / "metrics" / "audit"):
        if d.is_dir():
            found += [p for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    return [str(p.relative_to(proj)) for p in found]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_gives_one_clear_line(case: str, proj: Path, tmp_path: Path, listener: Listener) -> None:
    if not SAMPLE.exists():
        pytest.skip("data/sample is missing")
    if case == "truncated XML" and not SE_DUMP.exists():
        pytest.skip("../shared is not beside the repo")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT\n")
    build, problem = CASES[case]
    source, bad_file = build(tmp_path, listener)
    _set_source(proj, source)

    proc = run([sys.executable, "-m", "stages.curate.ingest"], proj, check=False, timeout=120)

    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, f"{case}: exit {proc.returncode}\n{proc.stderr}"
    assert len(lines) == 1 and not proc.stdout.strip(), f"{case}: expected one line:\n{proc.stdout}{proc.stderr}"
    line = lines[0]
    assert line.startswith("error ingest: ") and str(bad_file) in line, f"{case}: file not named: {line}"
    assert re.search(problem, line), f"{case}: problem not said ({problem}): {line}"
    print(f"\n{case}: exit {proc.returncode}: {line}")
    assert "TOP-SECRET-CONTENT" not in proc.stderr
    assert _leftovers(proj) == [], f"{case}: outputs written"
    assert listener.connections() == 0, f"{case}: something connected to {listener.url}"


@pytest.mark.slow
def test_dvc_repro_stops_on_hostile_xml_without_outputs(project: Path, tmp_path: Path, listener: Listener) -> None:
    """Under DVC too: the stage fails with its one line, DVC exits non-zero, nothing is committed."""
    source = _xml(tmp_path / "Posts.xml", f'<!DOCTYPE posts [<!ENTITY xxe SYSTEM "{listener.url}/x">]>', "&xxe;")
    _set_source(project, source)
    proc = run(["dvc", "repro", "ingest"], project, check=False, timeout=300)
    assert proc.returncode != 0
    assert f"error ingest: {source}: refused unsafe XML" in proc.stdout + proc.stderr
    assert _leftovers(project) == [] and not (project / "dvc.lock").exists()
    assert listener.connections() == 0
