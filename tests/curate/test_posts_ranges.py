"""A Posts.xml cut into byte ranges and parsed by workers gives exactly the serial parse's batches,
and ingest's data/raw, rejects and audit byte for byte (the two real Stack Exchange dumps in
../shared/data/se-dump, cut into many small ranges)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import copy_project
from stages.core.errors import StageError
from stages.core.params import Runtime
from stages.curate import posts_ranges
from stages.curate.ingest import KAGGLE_COLUMNS, read_posts_xml

DUMPS = ["genai.stackexchange.com-Posts.xml", "matheducators.stackexchange.com-Posts.xml"]


def _plain(batches) -> list[tuple[str, dict[str, list]]]:
    return [(t, {c: (v.to_pylist() if hasattr(v, "to_pylist") else list(v)) for c, v in cols.items()})
            for t, cols in batches]


@pytest.fixture(autouse=True)
def _local_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local process pool runs the ranges here (the same jobs Ray runs: tests/core/test_ray_executor.py)."""
    monkeypatch.setattr(posts_ranges, "LOCAL_POOL", True)


def _ranged(path: Path, batch_rows: int, range_bytes: int, workers: int = 2) -> list:
    rt = Runtime(workers=workers, batch_rows=batch_rows)
    p = posts_ranges.plan(path, rt, range_bytes)
    assert p is not None and len(p.cuts) > 3
    return _plain(posts_ranges.read(p, rt, KAGGLE_COLUMNS, lambda: read_posts_xml(path, batch_rows)))


@pytest.mark.parametrize("dump", DUMPS)
@pytest.mark.parametrize("batch_rows,range_bytes", [(97, 20_000), (5000, 150_000)])
def test_ranges_give_the_serial_batches(shared: Path, dump: str, batch_rows: int, range_bytes: int) -> None:
    path = shared / "data" / "se-dump" / dump
    serial = _plain(read_posts_xml(path, batch_rows))
    assert len(serial) > 2
    assert _ranged(path, batch_rows, range_bytes) == serial


def _posts(rows: list[str]) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(r + "\n" for r in rows) + "</posts>\n").encode()


def _row(i: int, kind: int = 1) -> str:
    parent = f' ParentId="{i - 1}"' if kind == 2 else ""
    return (f'  <row Id="{i}" PostTypeId="{kind}"{parent} CreationDate="2020-01-01T00:00:00.000" Score="{i % 7}" '
            f'Body="&lt;p&gt;body {i} &#xA; line&lt;/p&gt;" Title="title {i}" OwnerUserId="{i}" />')


def test_a_comment_across_a_cut_is_parsed_merged(tmp_path: Path) -> None:
    rows = [_row(i, 1 + i % 3 % 2) for i in range(400)]
    rows[150:150] = ["  <!-- a comment", *(f"  {'x' * 300} <row Id=\"9{i}\" PostTypeId=\"1\" />" for i in range(40)), "  -->"]
    path = tmp_path / "Posts.xml"
    path.write_bytes(_posts(rows))
    assert _ranged(path, 13, 1000) == _plain(read_posts_xml(path, 13))


def test_a_malformed_file_gives_the_serial_error(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(300)]
    rows[200] = '  <row Id="x" Body="unclosed'
    path = tmp_path / "Posts.xml"
    path.write_bytes(_posts(rows))
    with pytest.raises(StageError) as serial:
        _plain(read_posts_xml(path, 50))
    with pytest.raises(StageError) as ranged:
        _ranged(path, 50, 2000)
    assert str(ranged.value) == str(serial.value)


def test_other_layouts_are_read_serially(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(workers=2)
    one_line = tmp_path / "one.xml"
    one_line.write_bytes(_posts([_row(i) for i in range(200)]).replace(b"\n", b""))
    doctype = tmp_path / "doctype.xml"
    doctype.write_bytes(_posts([_row(i) for i in range(200)]).replace(b"<posts>", b"<!DOCTYPE posts>\n<posts>", 1))
    fine = tmp_path / "fine.xml"
    fine.write_bytes(_posts([_row(i) for i in range(200)]))
    assert posts_ranges.plan(one_line, rt, 1000) is None
    assert posts_ranges.plan(doctype, rt, 1000) is None
    assert posts_ranges.plan(fine, Runtime(workers=1), 1000) is None
    assert posts_ranges.plan(fine, rt, 1000) is not None
    assert posts_ranges.plan(fine, Runtime(workers=2, executor="ray"), 1000) is not None
    monkeypatch.setattr(posts_ranges, "LOCAL_POOL", False)       # the default: the pool does not pay here
    assert posts_ranges.plan(fine, rt, 1000) is None
    assert posts_ranges.plan(fine, Runtime(workers=2, executor="ray"), 1000) is not None


def _digests(proj: Path) -> dict[str, str]:
    return {p.relative_to(proj).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data/raw", "data/rejects", "metrics/audit", "metrics/quality")
            for p in sorted((proj / top).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dump", DUMPS)
def test_ingest_on_ranges_writes_the_serial_raw(shared: Path, tmp_path: Path, dump: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.core.runner import execute
    from stages.curate.ingest import STAGE

    digests, used = [], []
    real_read = posts_ranges.read
    monkeypatch.setattr(posts_ranges, "read", lambda *a: used.append(1) or real_read(*a))
    for workers, range_bytes in ((1, None), (2, 50_000)):
        proj = copy_project(tmp_path / f"w{workers}")
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["ingest"]["source"] = str(shared / "data" / "se-dump" / dump)
        params["runtime"].update(workers=workers, batch_rows=500, gx_preload=False)
        monkeypatch.chdir(proj)
        monkeypatch.setattr(posts_ranges, "RANGE_BYTES", range_bytes or posts_ranges.RANGE_BYTES)
        summary = execute(STAGE, params)
        assert summary["rows_in"] > 400
        digests.append(_digests(proj))
    assert used == [1]            # the second run parsed in ranges, the first serially
    assert len(digests[0]) >= 5 and digests[0] == digests[1]
