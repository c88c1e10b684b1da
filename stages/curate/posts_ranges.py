"""A Stack Exchange Posts.xml parsed in byte ranges by Ray tasks (runtime.executor: ray), giving
exactly the batches ingest's serial parse (ingest.read_posts_xml, the reference) gives: the same
rows, in the same order, cut into the same batches, so the same outputs and rejects.

A dump holds one `<row .../>` per line between the line of the root's start tag and the line of its
end tag. plan() cuts that content at line ends into ranges of about RANGE_BYTES; a job parses the
file's own head (XML declaration, root start tag) + its range + the file's tail (root end tag) with
the serial parse's defusedxml settings and returns its rows as Arrow columns plus one table code per
row. The driver re-batches them as the serial reader would: a table's batch goes out when it holds
batch_rows rows, in file order. Ingest's decisions (duplicates, orphans) stay in the driver.

A cut can only fall inside something that spans lines (a comment, CDATA, an element with children):
then that range does not parse alone, and the driver parses it merged with the next ones until it
does. Ranges before it parsed whole, so the serial parser would be in the same state there. A file
that never parses is malformed: the serial reader runs to give its exact error. A file that is not
laid out this way (a DOCTYPE, the root's tags sharing a line with rows, under two ranges) is read
serially.

Kaggle CSVs are not cut: a quoted body spans lines, so a line end is no row end without reading
from the start. They are read in the driver by Arrow's CSV reader (which already uses threads);
the transforms downstream are what run in parallel.
"""
from __future__ import annotations

import io
import xml.parsers.expat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from stages.core.executors import executor_for
from stages.core.params import Runtime

RANGE_BYTES = 16 << 20        # per job: about 12 MB of Arrow strings back, a second or two of parsing
# The local process pool parses ranges too only when this is on: on this 2-core machine the ingest of
# a 208 MB Posts.xml (150k posts) took 31.4 / 36.9 s on 2 pool workers against 28.9 / 36.7 s
# serially (alternating, a loaded hour), 10-15% more CPU (rows pickled back, re-batched). Same bytes
# either way (tests/curate/test_posts_ranges.py runs the pool with it on).
LOCAL_POOL = False
_HEAD_BYTES = 1 << 16
_TAIL_BYTES = 1 << 12
TABLES = ("questions", "answers", "other")
Columns = dict[str, list[str]]      # table -> the attributes read (ingest.KAGGLE_COLUMNS)


@dataclass(frozen=True)
class Plan:
    path: str
    head: bytes                     # the file up to the first row's line
    tail: bytes                     # the file from the root end tag's line
    cuts: tuple[int, ...]           # range boundaries: the first row's line ... the end tag's line


@dataclass(frozen=True)
class Job:
    path: str
    head: bytes
    tail: bytes
    start: int
    end: int
    columns: Columns


def _root_and_content_start(path: Path) -> tuple[str, int] | None:
    """The root element's name and where the line after its start tag begins, if the first row
    starts on a later line and there is no DOCTYPE."""
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    p = xml.parsers.expat.ParserCreate()
    seen: list[tuple[str, int]] = []
    doctype: list[bool] = []

    def start(name: str, attrs: Any) -> None:
        seen.append((name, p.CurrentByteIndex))
        if len(seen) == 2:
            raise StopIteration

    p.StartElementHandler = start
    p.StartDoctypeDeclHandler = lambda *a: doctype.append(True)
    try:
        p.Parse(head, False)
    except StopIteration:
        pass
    except xml.parsers.expat.ExpatError:
        return None
    if doctype or len(seen) < 2:
        return None
    (root, at), (_, first_row) = seen
    line_end = head.find(b"\n", at)
    if line_end < 0 or line_end >= first_row or head[line_end + 1:first_row].strip():
        return None
    return root, line_end + 1


def _content_end(path: Path, root: str, size: int) -> int | None:
    """Where the line holding the root end tag begins, if only whitespace follows that tag."""
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _TAIL_BYTES))
        tail = fh.read()
    end_tag = f"</{root}>".encode()
    body = tail.rstrip()
    if not body.endswith(end_tag):
        return None
    line_start = body.rfind(b"\n", 0, len(body) - len(end_tag)) + 1
    if line_start == 0 or body[line_start:len(body) - len(end_tag)].strip():
        return None
    return size - len(tail) + line_start


def _cuts(path: Path, start: int, end: int, range_bytes: int) -> tuple[int, ...]:
    cuts = [start]
    with open(path, "rb") as fh:
        while cuts[-1] + range_bytes < end:
            fh.seek(cuts[-1] + range_bytes)
            chunk = b""
            while b"\n" not in chunk and fh.tell() < end:
                chunk += fh.read(1 << 16)
            nl = chunk.find(b"\n")
            cut = cuts[-1] + range_bytes + nl + 1 if nl >= 0 else end
            if cut >= end:
                break
            cuts.append(cut)
    cuts.append(end)
    return tuple(cuts)


def plan(source: Path, runtime: Runtime, range_bytes: int | None = None) -> Plan | None:
    """The ranges (of about range_bytes, default RANGE_BYTES) to parse in parallel, or None: read
    serially (one local worker, a small file, or a layout other than one row a line)."""
    range_bytes = range_bytes or RANGE_BYTES
    if runtime.executor == "local" and (runtime.workers < 2 or not LOCAL_POOL):
        return None
    size = source.stat().st_size
    if size < 2 * range_bytes:
        return None
    found = _root_and_content_start(source)
    if found is None:
        return None
    root, start = found
    end = _content_end(source, root, size)
    if end is None or end <= start:
        return None
    cuts = _cuts(source, start, end, range_bytes)
    if len(cuts) < 3:
        return None
    with open(source, "rb") as fh:
        head = fh.read(start)
        fh.seek(end)
        tail = fh.read()
    return Plan(str(source), head, tail, cuts)


# ----------------------------------------------------------------------------- one range (in a worker)
def parse_range(job: Job) -> tuple[np.ndarray, dict[str, dict[str, pa.Array]], tuple[str, ...]] | str:
    """A range's rows: a table code per row (index into TABLES), each table's columns and the
    attribute names met (the audit names the ignored ones), or the parse error (a string) when
    the range does not parse alone."""
    from defusedxml.ElementTree import iterparse

    with open(job.path, "rb") as fh:
        fh.seek(job.start)
        body = fh.read(job.end - job.start)
    cols = {"questions": job.columns["questions"], "answers": job.columns["answers"], "other": ["Id", "PostTypeId"]}
    rows: dict[str, dict[str, list]] = {t: {c: [] for c in cs} for t, cs in cols.items()}
    kinds: list[int] = []
    names: set[str] = set()
    try:
        # The serial parse's settings (ingest.read_posts_xml).
        for _, el in iterparse(io.BytesIO(job.head + body + job.tail), events=("end",), forbid_dtd=False,
                               forbid_entities=True, forbid_external=True):
            if el.tag != "row":
                continue
            a = el.attrib
            names.update(a)
            kind = a.get("PostTypeId")
            table = "questions" if kind == "1" else "answers" if kind == "2" else "other"
            kinds.append(TABLES.index(table))
            if table == "other":
                rows[table]["Id"].append(a.get("Id"))
                rows[table]["PostTypeId"].append(kind)
            else:
                for c in cols[table]:
                    rows[table][c].append(a.get(c, ""))
            el.clear()
    except Exception as exc:        # merged with the next range by the driver; the serial parse judges
        return f"{type(exc).__name__}: {exc}"
    return (np.array(kinds, np.int8),
            {t: {c: pa.array(v, pa.string()) for c, v in r.items()} for t, r in rows.items()}, tuple(sorted(names)))


# ----------------------------------------------------------------------------- the driver
class _Batcher:
    """Cuts the rows of consecutive ranges into the serial reader's batches."""

    def __init__(self, batch_rows: int):
        self.batch_rows = batch_rows
        self.held: dict[str, list[dict[str, pa.Array]]] = {t: [] for t in TABLES}
        self.count = dict.fromkeys(TABLES, 0)

    def _take(self, table: str) -> tuple[str, dict[str, pa.Array]]:
        pieces = self.held[table]
        out = {c: pa.concat_arrays([p[c] for p in pieces]) for c in pieces[0]}
        self.held[table], self.count[table] = [], 0
        return table, out

    def add(self, kinds: np.ndarray, tables: dict[str, dict[str, pa.Array]]) -> Iterator[tuple[str, dict[str, pa.Array]]]:
        events = []                 # (row in the range, table, rows of that table up to it) where a batch fills
        for code, t in enumerate(TABLES):
            where = np.flatnonzero(kinds == code)
            first = self.batch_rows - self.count[t] - 1
            events += [(int(where[j]), t, j + 1) for j in range(first, len(where), self.batch_rows)]
        taken = dict.fromkeys(TABLES, 0)
        for _, t, upto in sorted(events):
            self.held[t].append({c: a.slice(taken[t], upto - taken[t]) for c, a in tables[t].items()})
            taken[t] = upto
            yield self._take(t)
        for t in TABLES:
            n = len(tables[t]["Id"]) - taken[t]
            if n:
                self.held[t].append({c: a.slice(taken[t]) for c, a in tables[t].items()})
                self.count[t] += n

    def finish(self) -> Iterator[tuple[str, dict[str, pa.Array]]]:
        for t in TABLES:            # questions, answers, then other: the serial reader's order
            if self.count[t]:
                yield self._take(t)


def read(p: Plan, runtime: Runtime, columns: Columns, serial: Callable[[], Iterable[Any]],
         attributes: set[str] | None = None) -> Iterator[tuple[str, dict[str, pa.Array]]]:
    """(table, columns) batches as ingest.read_posts_xml yields them ("other": neither question nor
    answer). `serial` is that reader, run for its exact error when the file does not parse."""
    ranges = list(zip(p.cuts[:-1], p.cuts[1:]))
    jobs = [Job(p.path, p.head, p.tail, s, e, columns) for s, e in ranges]
    batcher = _Batcher(runtime.batch_rows)
    executor = executor_for(runtime)
    try:
        results = executor.map(parse_range, jobs)
        i = 0
        for res in results:
            k = i
            while isinstance(res, str):            # a construct spans the cut: merge with the next range
                k += 1
                if k == len(ranges):
                    for _ in serial():             # raises the serial parse's error
                        pass
                    raise RuntimeError(f"{p.path}: range parse failed where the serial parse did not ({res})")
                res = parse_range(Job(p.path, p.head, p.tail, ranges[i][0], ranges[k][1], columns))
            for _ in range(k - i):                 # the ranges merged in: their own results are moot
                next(results)
            i = k + 1
            if attributes is not None:
                attributes.update(res[2])
            yield from batcher.add(*res[:2])
        yield from batcher.finish()
    finally:
        executor.close()
