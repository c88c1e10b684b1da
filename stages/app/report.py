"""The `report` stage: one static, offline HTML quality report under reports/.

It reads what the data stages left behind: their audits (metrics/audit), their quality results
(metrics/quality), their rejected rows (data/rejects) and the curated data, and writes

  reports/index.html         the funnel (where rows were lost, by reason, with example rows; a
                             stage whose audit is missing says so), each stage's expectation
                             results, text length and score distributions, split sizes, the
                             model's scores and its answers to the human-eval questions (under
                             the toy-model caution); inline CSS and SVG, no script, no CDN
  reports/data_docs/<stage>.html   GX Data Docs of each stage's validation, rendered offline
                             (GX's page templates pull bootstrap/jquery/vega from CDNs: those
                             tags are removed; GX's own stylesheet and ours for the bootstrap
                             classes it uses are inlined). No run time: the pages are rebuilt
                             from stored results, and the same results give the same bytes
  reports/report.json        the numbers behind the page

Big inputs are never read whole: rejects are streamed for their first examples, texts for
their lengths, and only the needed columns are read.
"""
from __future__ import annotations

import html
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow.compute as pc

from stages.app.funnel import DATA_STAGES, RECOVER, print_funnel, unit, units_note
from stages.core.outputs import DATA, METRICS, atomic_path
from stages.core.params import load_params
from stages.core.parquet import iter_parquet

REPORTS = Path("reports")
EXAMPLES_PER_REASON = 3
STAGE_OUTPUT = {"ingest": "data/raw", "strip_html": "data/stripped", "validate_utf": "data/utf8",
                "filter_upvotes": "data/filtered", "top_answers": "data/top2", "split": "data/split",
                "shard": "data/shards"}
# Histogram bins: text lengths in characters (log-spaced) and scores (SO scores are heavy-tailed).
LENGTH_BINS = [0, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, math.inf]
SCORE_BINS = [-math.inf, 0, 1, 2, 3, 5, 10, 20, 50, 100, math.inf]


# ----------------------------------------------------------------------------- gathering the numbers
def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def reject_examples(path: Path, reasons: Iterable[str] = (), per_reason: int = EXAMPLES_PER_REASON
                    ) -> dict[str, list[dict[str, Any]]]:
    """The first few rejected rows of each reason, streamed (a reject file can be large); reading
    stops once every reason in `reasons` (the audit's) has its examples."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not path.exists():
        return {}
    wanted = set(reasons)
    for batch in iter_parquet(path, 20000, columns=["table", "id", "source_id", "reason", "detail"]):
        for row in batch.to_pylist():
            ex = out[row["reason"]]
            if len(ex) < per_reason:
                ex.append(row)
        if wanted and all(len(out.get(r, ())) >= per_reason for r in wanted):
            break
    return dict(out)


def histogram(values: Iterable[float], edges: list[float]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]); values outside all bins are not counted."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    idx = np.searchsorted(np.asarray(edges, dtype=float), v, side="right") - 1
    idx = idx[(idx >= 0) & (idx < len(edges) - 1)]
    return np.bincount(idx, minlength=len(edges) - 1).tolist()


def column_histogram(paths: list[Path], column: str, edges: list[float], length: bool = False) -> list[int]:
    """Histogram of a numeric column, or of a text column's lengths in characters, streamed."""
    total = [0] * (len(edges) - 1)
    for p in paths:
        if not p.exists():
            continue
        for b in iter_parquet(p, 20000, columns=[column]):
            col = b.column(0)
            vals = (pc.utf8_length(col) if length else col).drop_null().to_numpy(zero_copy_only=False)
            total = [a + c for a, c in zip(total, histogram(vals, edges))]
    return total


def gather(params: dict[str, Any]) -> dict[str, Any]:
    audits = {s: a for s in DATA_STAGES if (a := _read_json(METRICS / "audit" / f"{s}.json"))}
    model = {"metrics": _read_json(METRICS / "eval.json"), "human_eval": _read_json(DATA / "eval" / "human_eval.json")}
    quality = {s: q for s in DATA_STAGES if (q := _read_json(METRICS / "quality" / f"{s}.json"))}
    examples = {s: reject_examples(DATA / "rejects" / f"{s}.parquet", a.get("rejected_by_reason", {}))
                for s, a in audits.items()}
    pairs = [DATA / "top2" / "pairs.parquet"]
    dist = {
        "lengths": {
            "question (top2 pairs)": column_histogram(pairs, "question", LENGTH_BINS, length=True),
            "answer (top2 pairs)": column_histogram(pairs, "answer", LENGTH_BINS, length=True),
        },
        "scores": {
            "answers at ingest": column_histogram([DATA / "raw" / "answers.parquet"], "score", SCORE_BINS),
            "answers kept (top2)": column_histogram(pairs, "answer_score", SCORE_BINS),
            "questions kept (top2)": column_histogram(pairs, "question_score", SCORE_BINS),
        },
    }
    split = audits.get("split", {})
    return {"audits": audits, "quality": quality, "examples": examples, "distributions": dist, "model": model,
            "dedup": dedup_clusters(),
            "split_rows": split.get("split_rows", {}), "split_questions": split.get("split_questions", {}),
            "params": {"min_score": params.get("filter", {}).get("min_score"),
                       "k": params.get("top_answers", {}).get("k"),
                       "shard_size": params.get("shard", {}).get("size"),
                       "source": params.get("ingest", {}).get("source")}}


# ----------------------------------------------------------------------------- SVG charts (no script)
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def funnel_svg(audits: dict[str, dict[str, Any]]) -> str:
    """One bar per stage: rows kept (blue) and rows rejected there (red), on one scale."""
    rows = list(audits.values())
    if not rows:
        return "<p>No audits yet.</p>"
    top = max(a["rows_in"] for a in rows) or 1
    w, label_w, bar_h, gap = 860, 130, 26, 10
    scale = (w - label_w - 250) / top      # room on the right for the "kept · lost" label
    parts = []
    for i, a in enumerate(rows):
        y = i * (bar_h + gap)
        kept_w, rej_w = a["rows_out"] * scale, a["rejected"] * scale
        lost = 100 * a["rejected"] / a["rows_in"] if a["rows_in"] else 0
        parts.append(
            f"<text x='{label_w - 8}' y='{y + 18}' text-anchor='end' class='lbl'>{_e(a['stage'])}</text>"
            f"<rect x='{label_w}' y='{y}' width='{kept_w:.1f}' height='{bar_h}' class='kept'>"
            f"<title>{_e(a['stage'])}: {a['rows_out']} kept</title></rect>"
            f"<rect x='{label_w + kept_w:.1f}' y='{y}' width='{rej_w:.1f}' height='{bar_h}' class='rej'>"
            f"<title>{_e(a['stage'])}: {a['rejected']} rejected</title></rect>"
            f"<text x='{label_w + kept_w + rej_w + 6:.1f}' y='{y + 18}' class='num'>{a['rows_out']:,} kept"
            + (f" · {a['rejected']:,} lost ({lost:.0f}%)" if a["rejected"] else "") + "</text>")
    h = len(rows) * (bar_h + gap)
    return (f"<svg class='chart' viewBox='0 0 {w} {h}' width='{w}' height='{h}' role='img' "
            f"aria-label='rows kept and rejected per stage'>{''.join(parts)}</svg>")


def bars_svg(labels: list[str], series: dict[str, list[int]], title: str) -> str:
    """Grouped vertical bars (one group per bin), each series scaled to its own total (shares)."""
    w, h, pad_l, pad_b = 860, 220, 40, 44
    names = list(series)
    shares = {n: [c / (sum(v) or 1) for c in v] for n, v in series.items()}
    top = max((x for v in shares.values() for x in v), default=0) or 1
    group_w = (w - pad_l) / max(len(labels), 1)
    bar_w = (group_w - 8) / max(len(names), 1)
    parts = [f"<line x1='{pad_l}' y1='{h - pad_b}' x2='{w}' y2='{h - pad_b}' class='axis'/>"]
    for j, lab in enumerate(labels):
        gx0 = pad_l + j * group_w + 4
        for k, n in enumerate(names):
            s, c = shares[n][j], series[n][j]
            bh = (h - pad_b - 10) * s / top
            parts.append(f"<rect x='{gx0 + k * bar_w:.1f}' y='{h - pad_b - bh:.1f}' width='{bar_w - 1:.1f}' "
                         f"height='{bh:.1f}' class='s{k}'><title>{_e(n)}, {_e(lab)}: {c} rows "
                         f"({100 * s:.1f}%)</title></rect>")
        parts.append(f"<text x='{gx0 + group_w / 2 - 4:.1f}' y='{h - pad_b + 16}' text-anchor='middle' "
                     f"class='tick'>{_e(lab)}</text>")
    legend = "".join(f"<span class='key s{k}'></span>{_e(n)} ({sum(series[n]):,} rows) " for k, n in enumerate(names))
    return (f"<figure><figcaption>{_e(title)}</figcaption><svg class='chart' viewBox='0 0 {w} {h}' width='{w}' "
            f"height='{h}' role='img' aria-label='{_e(title)}'>{''.join(parts)}</svg>"
            f"<div class='legend'>{legend}</div></figure>")


def _bin_labels(edges: list[float], integer: bool) -> list[str]:
    out = []
    for lo, hi in zip(edges, edges[1:]):
        if lo == -math.inf:
            out.append(f"<{hi:g}")
        elif hi == math.inf:
            out.append(f"≥{lo:g}")
        elif integer and hi - lo == 1:
            out.append(f"{lo:g}")
        else:
            out.append(f"{lo:g}–{hi - (1 if integer else 0):g}" if integer else f"{lo:g}–{hi:g}")
    return out


# ----------------------------------------------------------------------------- the page
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7fb}
header{background:#1d2433;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d1e4}main{padding:8px 32px 40px;max-width:1100px}
section{background:#fff;border:1px solid #e1e5ef;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{font-size:18px;margin:0 0 10px}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{border-bottom:1px solid #e8ebf3;padding:5px 8px;
text-align:left;vertical-align:top}th{background:#f0f2f8;font-weight:600}td.n,th.n{text-align:right;
font-variant-numeric:tabular-nums}.pass{color:#0a7d32;font-weight:600}.fail{color:#b3261e;font-weight:700}
.worst{background:#fff1f0}code,.mono{font:12px ui-monospace,Menlo,Consolas,monospace}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{flex:1;min-width:150px;background:#f0f2f8;border-radius:8px;
padding:10px 14px}.card b{display:block;font-size:22px}.card.bad{background:#fde7e5}
svg.chart{max-width:100%;height:auto}.chart .lbl,.chart .num,.chart .tick{font-size:12px;fill:#1d2433}
.kept{fill:#3b6fd8}.rej{fill:#d9463b}.axis{stroke:#999}.s0{fill:#3b6fd8;background:#3b6fd8}
.s1{fill:#f0a030;background:#f0a030}.s2{fill:#4aa36b;background:#4aa36b}
.legend{font-size:12px}.key{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:2px}
figure{margin:10px 0}figcaption{font-weight:600;margin-bottom:4px}.why{color:#555}
details summary{cursor:pointer;color:#3b6fd8}table.exp td:nth-child(2){width:34%;overflow-wrap:anywhere}
table.exp td:nth-child(3){width:40%}
.caution{background:#fff4d6;border:1px solid #e8c15a;border-radius:6px;padding:8px 12px;font-weight:600}
pre.answer{background:#f6f7fb;border:1px solid #e1e5ef;border-radius:6px;padding:8px;white-space:pre-wrap;
max-height:16em;overflow:auto;font:12px ui-monospace,Menlo,Consolas,monospace}h4{margin:12px 0 4px}
table.rej{table-layout:fixed}table.rej th:nth-child(1){width:14%}table.rej th:nth-child(2){width:14%}.detail{color:#555;max-width:520px;overflow-wrap:anywhere}
"""


def _quality_badge(q: dict[str, Any] | None) -> str:
    if not q:
        return "<span class='fail'>not run</span>"
    cls = "pass" if q["success"] else "fail"
    return f"<span class='{cls}'>{q['successful']}/{q['evaluated']} passed</span>"


def render(data: dict[str, Any], docs: dict[str, str]) -> str:
    audits, quality = data["audits"], data["quality"]
    first = audits.get("ingest")
    pairs = data["split_rows"]
    lost = {s: a["rejected"] for s, a in audits.items()}
    worst = max(lost, key=lost.get) if any(lost.values()) else None
    n_exp = sum(q["evaluated"] for q in quality.values())
    n_ok = sum(q["successful"] for q in quality.values())
    p = data["params"]
    cards = [
        ("posts ingested", f"{first['rows_out']:,}" if first else "-", ""),
        ("train / val / test pairs", " / ".join(f"{pairs.get(s, 0):,}" for s in ("train", "val", "test")), ""),
        ("most rows lost at", f"{worst} ({lost[worst]:,})" if worst else "nowhere", ""),
        ("expectations passed", f"{n_ok}/{n_exp}", "" if n_ok == n_exp and n_exp else "bad"),
    ]
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>soqa quality report</title>"
           f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>",
           "<header><h1>soqa quality report</h1>"
           f"<p>source <code>{_e(p['source'])}</code> · filter.min_score {_e(p['min_score'])} · top_answers.k "
           f"{_e(p['k'])} · shard.size {_e(p['shard_size'])}</p></header><main>",
           "<section><div class='cards'>" + "".join(
               f"<div class='card {c}'>{_e(t)}<b>{_e(v)}</b></div>" for t, v, c in cards) + "</div></section>"]

    # Funnel
    missing = [s for s in DATA_STAGES if s not in audits]
    out.append("<section id='funnel'><h2>Funnel: where rows were lost</h2>" + funnel_svg(audits)
               + f"<p class='why'>{_e(units_note(list(audits.values())).capitalize())}.</p>")
    if missing:
        out.append(f"<p class='fail'>Audit missing for {_e(', '.join(missing))}: its stage failed or never ran, "
                   f"so this funnel is incomplete. {_e(RECOVER[0].upper() + RECOVER[1:])}.</p>")
    out.append("<table><tr><th>stage</th><th>unit</th><th class='n'>rows in</th><th class='n'>rows out</th>"
               "<th class='n'>rejected</th><th class='n'>kept %</th><th>rejected by reason</th><th>repaired</th>"
               "<th>quality</th></tr>")
    for s in DATA_STAGES:
        if s not in audits:
            out.append(f"<tr class='worst'><td>{_e(s)}</td><td></td><td class='fail' colspan='7'>audit missing "
                       f"(no <code>metrics/audit/{_e(s)}.json</code>)</td></tr>")
            continue
        a = audits[s]
        # Rounded down, so a stage that lost 30 of 150k rows does not read "100.0".
        share = f"{math.floor(1000 * a['rows_out'] / a['rows_in']) / 10:.1f}" if a["rows_in"] else "-"
        reasons = "<br>".join(f"{_e(k)}: {v:,}" for k, v in a.get("rejected_by_reason", {}).items()) or "–"
        repaired = "<br>".join(f"{_e(k)}: {v:,}" for k, v in a.get("repaired_by_kind", {}).items()) or "–"
        cls = " class='worst'" if s == worst else ""
        joined = f" ({a['pairs']:,} pairs)" if "pairs" in a and unit(a) == "posts" else ""
        out.append(f"<tr{cls}><td><a href='#stage-{_e(s)}'>{_e(s)}</a></td><td>{unit(a)}</td>"
                   f"<td class='n'>{a['rows_in']:,}</td><td class='n'>{a['rows_out']:,}{joined}</td><td class='n'>{a['rejected']:,}</td><td class='n'>{share}</td>"
                   f"<td>{reasons}</td><td>{repaired}</td><td>{_quality_badge(quality.get(s))}</td></tr>")
    out.append("</table></section>")

    # Rejected rows by reason, with examples
    out.append("<section id='rejects'><h2>Rejected rows by reason (first examples)</h2>")
    any_rej = False
    for s, ex in data["examples"].items():
        counts = audits[s].get("rejected_by_reason", {})
        for reason, rows in ex.items():
            any_rej = True
            out.append(f"<h3>{_e(s)} · {_e(reason)} <small>({counts.get(reason, len(rows)):,} rows, "
                       f"all in <code>data/rejects/{_e(s)}.parquet</code>)</small></h3><table class='rej'>"
                       "<tr><th>table</th><th>id</th><th>detail</th></tr>")
            for r in rows:
                rid = r["id"] if r["id"] is not None else f"unreadable: {r['source_id']}"
                out.append(f"<tr><td>{_e(r['table'])}</td><td class='mono'>{_e(rid)}</td>"
                           f"<td class='detail mono'>{_e((r['detail'] or '')[:240])}</td></tr>")
            out.append("</table>")
    if not any_rej:
        out.append("<p>No row was rejected.</p>")
    out.append("</section>")

    # Expectations per stage
    out.append("<section id='quality'><h2>Quality gates (Great Expectations)</h2>"
               "<p>Each data stage validates its output before committing it; a failed expectation stops "
               "<code>dvc repro</code> at that stage. Full GX Data Docs are linked per stage.</p>")
    for s in audits:
        q = quality.get(s)
        link = f" · <a href='{_e(docs[s])}'>GX Data Docs</a>" if s in docs else ""
        out.append(f"<h3 id='stage-{_e(s)}'>{_e(s)} → <code>{_e(STAGE_OUTPUT.get(s, ''))}</code> · "
                   f"{_quality_badge(q)}{link}</h3>")
        if not q:
            continue
        # Passed suites fold away so a failure stands out; a failed one is shown open.
        out.append(f"<details{'' if q['success'] else ' open'}><summary>{q['evaluated']} expectations"
                   f"</summary><table class='exp'><tr><th></th><th>expectation</th><th>why</th>"
                   "<th class='n'>rows checked</th><th class='n'>failed</th><th>observed</th></tr>")
        for r in q["results"]:
            mark = "<span class='pass'>✓</span>" if r["success"] else "<span class='fail'>✗</span>"
            obs = r.get("observed_value")
            obs = "" if obs is None else (f"{obs:.4g}" if isinstance(obs, float) else str(obs))
            out.append(f"<tr><td>{mark}</td><td class='mono'>{_e(r['name'])}</td><td class='why'>{_e(r['why'])}</td>"
                       f"<td class='n'>{r['element_count']:,}</td><td class='n'>{r['unexpected_count']:,}</td>"
                       f"<td class='mono'>{_e(obs[:80])}</td></tr>")
        out.append("</table></details>")
    out.append("</section>")

    # Distributions
    d = data["distributions"]
    out.append("<section id='distributions'><h2>Distributions</h2>"
               + bars_svg(_bin_labels(LENGTH_BINS, False), d["lengths"], "Text length in characters (share of rows)")
               + bars_svg(_bin_labels(SCORE_BINS, True), d["scores"],
                          f"Scores (share of rows); answers need score ≥ {p['min_score']} to stay")
               + "</section>")

    # Split sizes
    sq = data["split_questions"]
    out.append("<section id='split'><h2>Split sizes</h2><table><tr><th>split</th><th class='n'>pairs</th>"
               "<th class='n'>questions</th><th class='n'>share of pairs</th></tr>")
    total = sum(pairs.values()) or 1
    for s in ("train", "val", "test"):
        out.append(f"<tr><td>{s}</td><td class='n'>{pairs.get(s, 0):,}</td><td class='n'>{sq.get(s, 0):,}</td>"
                   f"<td class='n'>{100 * pairs.get(s, 0) / total:.1f}%</td></tr>")
    shard = audits.get("shard", {})
    out.append(f"</table><p>train is stored in {shard.get('shards', 0)} shard(s) of up to {_e(p['shard_size'])} "
               f"pairs: {', '.join(str(x) for x in shard.get('shard_rows', []))}.</p></section>")
    out.append(dedup_section(data.get("dedup")))
    out.append(model_section(data.get("model") or {}))
    out.append("</main></body></html>")
    return "".join(out)


# ----------------------------------------------------------------------------- near-duplicates (stage dedup)
DEDUP_CLUSTERS_SHOWN = 12
DEDUP_EVAL_SHOWN = 30


def dedup_clusters(shown: int = DEDUP_CLUSTERS_SHOWN) -> dict[str, Any] | None:
    """The dedup audit, the largest clusters (members with their titles and sides, the edges between
    them) and the human-eval matches; None before the dedup stage has run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    audit = _read_json(METRICS / "audit" / "dedup.json")
    folder = DATA / "dedup"
    if audit is None or not (folder / "clusters.parquet").exists():
        return None
    cl = pq.read_table(folder / "clusters.parquet").to_pandas()
    sizes = cl.groupby("cluster").size()
    top = sizes[sizes > 1].reset_index(name="n").sort_values(["n", "cluster"], ascending=[False, True])
    top = top.head(shown)["cluster"].tolist()
    members = cl[cl["cluster"].isin(top)]
    evals = cl[cl["eval_question"].notna()].head(DEDUP_EVAL_SHOWN)
    wanted = pa.array(sorted(set(members["question_id"]) | set(evals["question_id"])), pa.int64())
    titles: dict[int, str] = {}
    for b in iter_parquet(DATA / "utf8" / "questions.parquet", 65536, columns=["id", "title"]):
        b = b.filter(pc.is_in(b.column("id"), value_set=wanted))
        titles.update(zip(b.column("id").to_pylist(), b.column("title").to_pylist()))
    side = _question_sides()
    edges = pq.read_table(folder / "edges.parquet").to_pandas()
    edges = edges[edges["a"].isin(members["question_id"]) | edges["b"].isin(members["question_id"])]

    of = dict(zip(members["question_id"].tolist(), members["cluster"].tolist()))
    by_cluster: dict[int, list[int]] = defaultdict(list)
    for q, c in of.items():
        by_cluster[c].append(q)
    edge_rows = [{"a": a, "b": b, "kind": k, "jaccard": None if j != j else round(j, 3), "joined": o}
                 for a, b, k, j, o in zip(edges["a"].tolist(), edges["b"].tolist(), edges["kind"].tolist(),
                                          edges["jaccard"].tolist(), edges["joined"].tolist())]

    def member(q: int) -> dict[str, Any]:
        return {"id": q, "title": titles.get(q, ""), "side": side.get(q, "not in the pairs")}

    return {
        "audit": {k: audit.get(k) for k in ("candidate_pairs", "pairs", "clusters", "questions_in_clusters",
                                            "largest_cluster", "capped_clusters", "edges_refused", "eval_matches")},
        "split": {k: (_read_json(METRICS / "audit" / "split.json") or {}).get(k)
                  for k in ("mode", "moved_questions", "questions_removed")},
        "clusters": [{"cluster": c, "members": [member(q) for q in sorted(by_cluster[c])],
                      "edges": [e for e in edge_rows if of.get(e["a"]) == c]} for c in top],
        "eval_matches": [{**member(int(q)), "eval_question": e, "similarity": float(s)}
                         for q, e, s in zip(evals["question_id"], evals["eval_question"], evals["eval_similarity"])],
    }


def _question_sides() -> dict[int, str]:
    """question id -> train/val/test, or the reason split removed it."""
    import pyarrow.parquet as pq

    side: dict[int, str] = {}
    for s in ("train", "val", "test"):
        path = DATA / "split" / f"{s}.parquet"
        if path.exists():
            side.update(dict.fromkeys(pq.read_table(path, columns=["question_id"]).column(0).to_pylist(), s))
    rej = DATA / "rejects" / "split.parquet"
    if rej.exists():
        r = pq.read_table(rej, columns=["detail", "reason"]).to_pandas()
        for d, why in zip(r["detail"], r["reason"]):
            m = re.match(r"question (\d+):", d or "")
            if m:
                side.setdefault(int(m.group(1)), f"removed: {why}")
    return side


def dedup_section(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    a, sp = d["audit"], d["split"]
    pairs = ", ".join(f"{k} {v:,}" for k, v in (a.get("pairs") or {}).items())
    removed = ", ".join(f"{k} {v:,}" for k, v in (sp.get("questions_removed") or {}).items())
    out = ["<section id='dedup'><h2>Near-duplicates and leakage</h2>",
           f"<p>{a.get('clusters', 0):,} clusters hold {a.get('questions_in_clusters', 0):,} questions (largest "
           f"{a.get('largest_cluster', 0)}; {a.get('capped_clusters', 0)} capped, {a.get('edges_refused', 0)} edges "
           f"refused). Edges: {_e(pairs)} ({a.get('candidate_pairs', 0):,} MinHash candidates checked). "
           f"Split keeps each cluster on one side (mode {_e(sp.get('mode'))}): {sp.get('moved_questions') or 0:,} "
           f"questions moved side against title-only grouping; removed: {_e(removed or 'none')}.</p>"]
    if d["clusters"]:
        out.append("<h3>Largest clusters</h3><table class='dups'>")
        for c in d["clusters"]:
            cells = "".join(f"<td><b>{m['id']}</b> <span class='why'>{_e(m['side'])}</span><br>{_e(m['title'])}</td>"
                            for m in c["members"])
            ev = "; ".join(f"{e['a']}–{e['b']} {e['kind']}" + (f" {e['jaccard']:.2f}" if e["jaccard"] is not None
                                                               else "") + ("" if e["joined"] else " (refused)")
                           for e in c["edges"][:8])
            out.append(f"<tr><th>{c['cluster']}<br><span class='why'>{len(c['members'])} questions</span></th>{cells}"
                       f"</tr><tr><td></td><td colspan='{len(c['members'])}' class='detail'>{_e(ev)}</td></tr>")
        out.append("</table>")
    if d["eval_matches"]:
        out.append("<h3>Questions matching a human-eval question</h3><table><tr><th>id</th><th>title</th>"
                   "<th>human-eval question</th><th class='n'>similarity</th><th>side</th></tr>")
        for m in d["eval_matches"]:
            out.append(f"<tr><td>{m['id']}</td><td>{_e(m['title'])}</td><td>{_e(m['eval_question'])}</td>"
                       f"<td class='n'>{m['similarity']:.2f}</td><td>{_e(m['side'])}</td></tr>")
        out.append("</table>")
    return "".join(out) + "</section>"


MODEL_METRICS = ("rouge1", "rouge2", "rougeL", "test_loss", "gen_len", "repetition_rate", "empty_rate")


def model_section(model: dict[str, Any]) -> str:
    """The evaluate stage's scores (trained vs initial) and the model's answers to the human-eval
    questions, under the toy-model caution when it applies."""
    metrics, answers = model.get("metrics"), model.get("human_eval")
    out = ["<section id='model'><h2>Model: <code>models/qa-t5</code> on the test split</h2>"]
    if not metrics or not answers:
        return out[0] + "<p>Not evaluated yet (<code>dvc repro evaluate</code>).</p></section>"
    if answers.get("caution"):
        out.append(f"<p class='caution'>{_e(answers['caution'][0].upper() + answers['caution'][1:])}</p>")
    initial = metrics.get("initial") or {}
    out.append(f"<p>{metrics['examples']:,} of {metrics['test_pairs']:,} test pairs; generation "
               + ", ".join(f"{_e(k)}={_e(v)}" for k, v in answers.get("settings", {}).items())
               + ".</p><table><tr><th>metric</th><th class='n'>trained</th><th class='n'>initial</th></tr>")
    for k in MODEL_METRICS:
        if k in metrics:
            before = f"{initial[k]:.4g}" if k in initial else "–"
            out.append(f"<tr><td>{k}</td><td class='n'>{metrics[k]:.4g}</td><td class='n'>{before}</td></tr>")
    out.append("</table><h3>Answers to the human-evaluation questions</h3>")
    for item in answers.get("answers", []):
        out.append(f"<h4>{_e(item['question'])}</h4><pre class='answer'>{_e(item['answer'].strip()) or '(empty)'}"
                   "</pre>")
    out.append("</section>")
    return "".join(out)


# ----------------------------------------------------------------------------- GX Data Docs, offline
_EXTERNAL_TAG = re.compile(r"<(?:link|img)\b[^>]*(?:href|src)\s*=\s*['\"](?:https?:)?//[^>]*>|"
                           r"<link\b[^>]*rel=['\"]shortcut icon['\"][^>]*>", re.IGNORECASE)
_SCRIPT = re.compile(r"<script\b.*?</script>", re.IGNORECASE | re.DOTALL)
_CSS_URL = re.compile(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)", re.IGNORECASE)
_FOOTER = re.compile(r"<footer\b.*?</footer>", re.IGNORECASE | re.DOTALL)   # a newsletter form
# The suite pages GX links to are not built (the suites live in the stages/curate modules): link our report.
_SUITE_LINK = re.compile(r"href=\"(?:\.\./)+expectations/[^\"]*\"")
_HOME_LINK = re.compile(r"href=\"(?:\.\./)+index\.html\"")       # GX's site index: ours is one folder up
# GX's pages are laid out with bootstrap 4 classes, fetched from a CDN: the classes they use, styled
# here (in the report's colours), so the pages look right offline. The "Show all / Failed only" and
# "Show more info" controls need bootstrap's JavaScript: hidden, their content always shown.
DOCS_CSS = """*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7fb}
a{color:#3b6fd8}h4{font-size:18px;margin:0 0 4px}h5{font-size:15px}h6,.h6{font-size:13px;font-weight:600;margin:0}
.lead{color:#555;margin:0 0 12px}.m-0{margin:0}.mb-1{margin-bottom:4px}.mt-1{margin-top:4px}.mb-3{margin-bottom:16px}
.navbar.sticky-top{background:#1d2433;height:auto!important;padding:14px 32px;display:flex;align-items:center}
.navbar-brand{display:none}.breadcrumb{display:flex!important;flex-wrap:wrap;list-style:none;margin:0;padding:0;
background:none!important;color:#c9d1e4}.breadcrumb-item a{color:#fff;font-weight:600}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding:0 8px;color:#8a94ad}
.container-fluid{width:100%;padding:8px 16px}.ge-section.container-fluid{padding:0}
.row{display:flex;flex-wrap:wrap;margin:0 -8px}[class*="col-"]{padding:0 8px;min-width:0}
.col-12{flex:0 0 100%;max-width:100%}.col-6{flex:0 0 50%;max-width:50%}.col-4{flex:0 0 33.3%;max-width:33.3%}
.col-md-2{flex:0 0 20%;max-width:20%}.col-md-10{flex:0 0 80%;max-width:80%}
.card{background:#fff;border:1px solid #e1e5ef;border-radius:8px;margin-bottom:16px;overflow:hidden}
.card-header{background:#f0f2f8;padding:8px 12px;border-bottom:1px solid #e1e5ef}.card-body{padding:8px 12px}
.sticky{position:sticky;top:12px}.sticky>.card.mb-3{display:none}a[data-toggle="collapse"]{display:none}
.collapse{display:block}.card.collapse{margin:8px 0}
.nav{list-style:none;margin:0;padding:0;display:block}.nav-item{display:block}
.nav-link{display:block;padding:3px 6px;text-decoration:none;border-radius:4px}.nav-link:hover{background:#f0f2f8}
.ge-section{background:#fff;border:1px solid #e1e5ef;border-radius:8px;padding:12px 16px!important;margin:0 0 16px}
.alert{padding:0;margin:0 0 8px;background:none;border:0}.alert h5{font-size:17px;margin:0 0 6px}
.table{width:100%;border-collapse:collapse;margin:6px 0}.table td,.table th{border:0;border-bottom:1px solid #e8ebf3;
padding:5px 8px;text-align:left;vertical-align:top}.table th{background:#f0f2f8;font-weight:600}
.table-responsive{overflow-x:auto}.show-scrollbars{overflow-wrap:anywhere}
.text-success{color:#0a7d32}.text-danger,.alert-danger{color:#b3261e}.text-muted{color:#6b7280}
.badge{display:inline-block;padding:1px 6px;border-radius:4px;background:#f0f2f8;font-size:12px}
.hide-succeeded-validations-column-section{display:none}.d-none{display:none}
@media (min-width:768px){.d-md-block{display:block!important}}
@media (max-width:767px){.col-md-2,.col-md-10,.col-6{flex:0 0 100%;max-width:100%}}
.fas{font-style:normal}.fa-check-circle::before{content:"\\2714"}.fa-times::before,.fa-times-circle::before{content:"\\2716"}
.fa-exclamation-triangle::before{content:"\\26A0"}"""
_JINJA = re.compile(r"\{%.*?%\}", re.DOTALL)
# GX renders a missing run time as "__none__": the pages are rebuilt from stored results, so the
# validation's own time is not kept (a fixed fake one read as 1970-01-01); the info table says so.
_NO_RUN_TIME = re.compile(r"(Run Time</div></td><td[^>]*><div class=\"show-scrollbars\">)__none__")
NO_RUN_TIME = "not recorded: the run is the commit whose dvc.lock holds this data version"


def offline_page(page: str) -> str:
    """Drop every tag that would fetch from the network (and all scripts: they need jQuery)."""
    page = _SCRIPT.sub("", page)
    page = _EXTERNAL_TAG.sub("", page)
    page = _CSS_URL.sub("none", page)
    page = _FOOTER.sub("", page)
    page = _SUITE_LINK.sub('href="../index.html#quality"', page)
    page = _HOME_LINK.sub('href="../index.html"', page)
    page = _NO_RUN_TIME.sub(lambda m: m.group(1) + NO_RUN_TIME, page).replace(" / __none__", "")
    gx_css = _JINJA.sub("", _gx_default_css())
    return page.replace("</head>", f"<style>{_CSS_URL.sub('none', gx_css)}\n{DOCS_CSS}</style></head>", 1)


def _gx_default_css() -> str:
    import great_expectations

    p = Path(great_expectations.__file__).parent / "render" / "view" / "static" / "styles" / \
        "data_docs_default_styles.css"
    return p.read_text(encoding="utf-8") if p.exists() else ""


def build_data_docs(quality: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, str]:
    """GX Data Docs (validation result pages) rendered from the stages' stored results."""
    if not quality:
        return {}
    from stages.core.gx_import import import_gx   # quiet GX import: analytics off, no progress bars

    gx, _, _ = import_gx()
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    out_dir.mkdir(parents=True, exist_ok=True)
    links = {}
    for stage, q in quality.items():
        results = []
        for r in q["results"]:
            # Columns are shown table-qualified (questions.body, answers.body): a stage checks several frames.
            qualify = not r["expectation"].startswith("expect_table_")
            kwargs = {k: (f"{r['table']}.{v}" if qualify and k in ("column", "column_A", "column_B") else
                          [f"{r['table']}.{c}" for c in v] if qualify and k == "column_list" else v)
                      for k, v in r["kwargs"].items()}
            cfg = ExpectationConfiguration(type=r["expectation"], kwargs=kwargs,
                                           meta={"why": r["why"], "table": r["table"]})
            res = {"element_count": r["element_count"], "unexpected_count": r["unexpected_count"],
                   "missing_count": r["missing_count"], "partial_unexpected_list": r["unexpected_values"]}
            if r["element_count"]:
                res["unexpected_percent"] = 100 * r["unexpected_count"] / r["element_count"]
                res["missing_percent"] = 100 * r["missing_count"] / r["element_count"]
                counted = r["element_count"] - r["missing_count"]
                res["unexpected_percent_nonmissing"] = 100 * r["unexpected_count"] / counted if counted else 0.0
            if "observed_value" in r:
                res["observed_value"] = r["observed_value"]
            results.append(ExpectationValidationResult(success=r["success"], expectation_config=cfg, result=res))
        suite_result = ExpectationSuiteValidationResult(
            success=q["success"], results=results, suite_name=f"soqa.{stage}",
            statistics={"evaluated_expectations": q["evaluated"], "successful_expectations": q["successful"],
                        "unsuccessful_expectations": q["unsuccessful"],
                        "success_percent": 100 * q["successful"] / q["evaluated"] if q["evaluated"] else 100.0},
            meta={"great_expectations_version": gx.__version__,
                  "batch_spec": {"data_asset_name": STAGE_OUTPUT.get(stage, stage)},
                  "active_batch_definition": {"datasource_name": "soqa", "data_connector_name": "dvc",
                                              "data_asset_name": STAGE_OUTPUT.get(stage, stage),
                                              "batch_identifiers": {}},
                  "run_id": {"run_name": f"dvc repro: {stage}"}})
        page = _numbered_view(DefaultJinjaPageView).render(ValidationResultsPageRenderer().render(suite_result))
        (out_dir / f"{stage}.html").write_text(offline_page(page), encoding="utf-8")
        links[stage] = f"{out_dir.name}/{stage}.html"
    return links


def _numbered_view(view_class: type) -> Any:
    """A GX page view whose element ids count up: GX's own are random uuid4s, and with them the same
    results rendered to new bytes every time (a rebuilt report looked like a new version to DVC)."""

    class NumberedView(view_class):
        def generate_html_element_uuid(self, prefix: str | None = None) -> str:
            self._element_count = getattr(self, "_element_count", 0) + 1
            return f"{prefix or ''}element-{self._element_count}"

    return NumberedView()


def build_report(out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the report folder's files into `out`; returns the numbers behind it."""
    out.mkdir(parents=True, exist_ok=True)
    data = gather(params)
    docs = build_data_docs(data["quality"], out / "data_docs")
    (out / "index.html").write_text(render(data, docs), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                                     encoding="utf-8")
    return data


# ----------------------------------------------------------------------------- `soqa report` (rich)
def quality_table(quality: dict[str, dict[str, Any]]):
    from rich.table import Table

    t = Table(title="soqa quality gates (Great Expectations)")
    t.add_column("stage")
    t.add_column("passed", justify="right")
    t.add_column("rows checked", justify="right")
    t.add_column("failed expectations")
    for stage, q in quality.items():
        ok = q["success"]
        rows = ", ".join(f"{k} {v:,}" for k, v in q.get("rows_checked", {}).items())
        failed = "\n".join(f"{r['name']}: {r['unexpected_count']} rows" for r in q["results"] if not r["success"])
        t.add_row(stage, f"[{'green' if ok else 'bold red'}]{q['successful']}/{q['evaluated']}[/]", rows, failed or "-")
    return t


def print_report(metrics_dir: Path = METRICS) -> int:
    """The funnel and the quality gates as rich tables, and where the HTML report is."""
    from stages.core.console import console, console_err

    rc = print_funnel(metrics_dir / "audit")
    quality = {s: q for s in DATA_STAGES if (q := _read_json(metrics_dir / "quality" / f"{s}.json"))}
    if not quality:
        console_err().print(f"no quality results under {metrics_dir / 'quality'}: run `dvc repro` first")
        return 1
    console().print(quality_table(quality))
    page = REPORTS / "index.html"
    console().print(f"HTML report: {page}" if page.exists() else "HTML report: not built yet (`dvc repro report`)")
    return rc if all(q["success"] for q in quality.values()) else 1


def main() -> None:
    from stages.core.console import console_err

    params = load_params()
    with atomic_path(REPORTS) as tmp:
        build_report(tmp, params)
    console_err().print(f"report: {REPORTS / 'index.html'} (GX Data Docs in {REPORTS / 'data_docs'})")


if __name__ == "__main__":
    main()
