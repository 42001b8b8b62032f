"""One self-contained HTML report of an eval run or sweep directory (``mmrag report RUN_DIR``).

The page opens offline: Plotly's JavaScript is inlined once, image thumbnails are ``data:`` URIs
read from the index's ``image_blobs.thumbnail_png``, styles are inline. Every value goes through
Jinja2 with autoescaping, so article text holding ``<script>`` shows as text.

Sections: run header (corpus fingerprint, embedder, table versions, commit), metric table with
significance markers against a baseline (``--baseline RUN_DIR``; for a sweep the best setting),
with a baseline the regressed queries per target (worst first, both runs' top hits side by side),
sweep plots (k × temperature heatmap, threshold curves, recall@k curves), per-query drill-down
(``<details>`` per query: retrieved snippets and thumbnails, relevant items marked), LLM answers
side by side (``answers.parquet``), the index run's failures and the ``eval_history`` trend.

Reading (:func:`collect_report_data`) and rendering (:func:`render_report`) are separate; the
figure builders are pure functions of rows.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pyarrow.parquet as pq
from markupsafe import Markup

from mmrag.eval.diff import DEFAULT_METRIC, query_diff
from mmrag.eval.results import load_run, read_history
from mmrag.eval.significance import compare_per_query
from mmrag.pipelines.store import DOCUMENTS, IMAGE_BLOBS, IndexStore, open_if_exists

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
SHOW_METRICS = ("recall@1", "recall@3", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "hit_rate@5", "mrr")


# --------------------------------------------------------------------------- reading


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if path.is_file() else []


def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _open_db(db_uri: str | None) -> IndexStore | None:
    """The index database, or None when there is none: a report without the index still renders."""
    if not db_uri:
        return None
    try:
        return open_if_exists(db_uri)
    except Exception:  # noqa: BLE001 - an unreadable database leaves its sections out of the report
        return None


def load_thumbnails(db_uri: str | None, sha256s: Sequence[str]) -> dict[str, str]:
    """``{sha256: data:image/png;base64,…}`` of the thumbnails in ``image_blobs`` (missing ones left out)."""
    wanted = sorted({s for s in sha256s if s})
    store = _open_db(db_uri)
    if not wanted or store is None:
        return {}
    rows = store.read_where(IMAGE_BLOBS, ["sha256", "thumbnail_png"], "sha256", wanted).to_pylist()
    return {row["sha256"]: "data:image/png;base64," + base64.b64encode(row["thumbnail_png"]).decode("ascii")
            for row in rows if row.get("thumbnail_png")}


def load_failures(db_uri: str | None, image_table: str | None = None, *, limit: int = 500) -> list[dict[str, Any]]:
    """The index's failures: ``documents`` rows with status other than ok/not_modified/gone, and failed image rows."""
    store = _open_db(db_uri)
    if store is None:
        return []
    out: list[dict[str, Any]] = []
    if store.has_table(DOCUMENTS):
        rows = store.read_table(DOCUMENTS, ["url", "status", "error", "http_status"],
                                where="status NOT IN ('ok', 'not_modified', 'gone')").to_pylist()
        out += [{"kind": "document", "url": r["url"], "status": r["status"], "error": r.get("error") or "",
                 "http_status": r.get("http_status")} for r in rows]
    if image_table and store.has_table(image_table):
        rows = store.read_table(image_table, ["doc_url", "src_url", "status", "error", "http_status"],
                                where="status IS NOT NULL AND status != 'ok'").to_pylist()
        out += [{"kind": "image", "url": r.get("src_url") or "", "doc_url": r["doc_url"], "status": r["status"],
                 "error": r.get("error") or "", "http_status": r.get("http_status")} for r in rows]
    return out[:limit]


def load_history(history_uri: str | None) -> list[dict[str, Any]]:
    """``eval_history`` rows (oldest first) as plain dicts; empty when there is none."""
    if not history_uri:
        return []
    try:
        frame = read_history(history_uri)
    except Exception:  # noqa: BLE001 - the history is optional in a report
        return []
    if frame.empty:
        return []
    return frame.to_dict(orient="records")


def collect_report_data(
    run_dir: str | Path,
    *,
    baseline_dir: str | Path | None = None,
    db_uri: str | None = None,
    history_uri: str | None = None,
    max_queries: int = 500,
) -> dict[str, Any]:
    """Everything the report shows, read from ``run_dir`` (and the index at ``db_uri``, default the run's)."""

    record = load_run(run_dir)
    path = record.path
    manifest = record.manifest
    db_uri = db_uri or manifest.get("db_uri")
    history_uri = history_uri or (manifest.get("config") or {}).get("eval", {}).get("history_uri") or db_uri
    hits = _read_parquet(path / "hits.parquet")
    answers = _read_parquet(path / "answers.parquet")
    sweep_rows = _read_parquet(path / "sweep.parquet")
    sweep_info = _read_json(path / "sweep.json", {})
    baseline = None
    baseline_hits: list[dict[str, Any]] = []
    if baseline_dir is not None:
        baseline = load_run(baseline_dir)
        baseline_hits = _read_parquet(baseline.path / "hits.parquet")
    tables = (manifest.get("setting") or {}).get("tables") or {}
    image_sha = [h.get("image_sha256") for h in (*hits, *baseline_hits) if h.get("target") == "image"]
    return {
        "run_dir": str(path),
        "manifest": manifest,
        "metrics": _read_json(path / "metrics.json", {}),
        "per_query": record.per_query,
        "aggregates": record.aggregates,
        "hits": hits,
        "queries": _read_jsonl(path / "queries.jsonl")[:max_queries],
        "qrels": _read_json(path / "qrels.json", {}),
        "answers": answers,
        "sweep_rows": sweep_rows,
        "sweep_info": sweep_info,
        "baseline": baseline,
        "baseline_hits": baseline_hits,
        "thumbnails": load_thumbnails(db_uri, image_sha),
        "failures": load_failures(db_uri, tables.get("image")),
        "history": load_history(history_uri),
    }


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- pure building blocks


def significance_marker(delta: float, p_value: float, *, max_p: float = 0.05) -> str:
    """``▲``/``▼`` for a significant rise/drop (p < ``max_p``), ``·`` for a difference that is not significant, ``""`` for none."""
    if delta == 0 or (isinstance(delta, float) and math.isnan(delta)):
        return ""
    if p_value < max_p:
        return "▲" if delta > 0 else "▼"
    return "·"


def metric_table(
    aggregates: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    per_query: Sequence[Mapping[str, Any]] = (),
    baseline_per_query: Sequence[Mapping[str, Any]] | None = None,
    max_p: float = 0.05,
) -> dict[str, Any]:
    """Rows ``{target, kind, n_queries, cells: [{metric, value, delta, p_value, marker}]}`` of the overall aggregates.

    With ``baseline_per_query`` each overall cell carries the paired test (mmrag.eval.significance) against it.
    """

    tests: dict[tuple[str, str], dict[str, Any]] = {}
    if baseline_per_query:
        shared = [m for m in metrics if per_query and baseline_per_query and m in per_query[0] and m in baseline_per_query[0]]
        for row in compare_per_query(baseline_per_query, per_query, shared, max_p=max_p):
            tests[(row["target"], row["metric"])] = row
    rows = []
    for agg in aggregates:
        cells = []
        for m in metrics:
            test = tests.get((agg["target"], m)) if agg.get("kind") == "all" else None
            cell = {"metric": m, "value": agg.get(m), "delta": None, "p_value": None, "marker": ""}
            if test:
                cell.update(delta=test["delta"], p_value=test["p_value"],
                            marker=significance_marker(test["delta"], test["p_value"], max_p=max_p))
            cells.append(cell)
        rows.append({"target": agg["target"], "kind": agg["kind"], "n_queries": agg.get("n_queries"), "cells": cells})
    rows.sort(key=lambda r: (r["target"], r["kind"] != "all", r["kind"]))
    return {"metrics": list(metrics), "rows": rows, "has_baseline": bool(tests)}


def drilldown(
    queries: Sequence[Mapping[str, Any]],
    per_query: Sequence[Mapping[str, Any]],
    hits: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, str],
    *,
    answers: Sequence[Mapping[str, Any]] = (),
    metrics: Sequence[str] = ("recall@5", "mrr"),
    snippet_chars: int = 400,
) -> list[dict[str, Any]]:
    """One item per query: its scores per target, retrieved hits (snippet, thumbnail key, relevant flag), answers.

    ``thumbnail`` is the first 16 hex digits of the image's sha256 (the page defines each thumbnail
    once, as a CSS class, however many hits show it) or None.
    """
    scores: dict[str, list[dict[str, Any]]] = {}
    for row in per_query:
        scores.setdefault(row["query_id"], []).append(
            {"target": row["target"], "n_relevant": row.get("n_relevant"),
             "vals": [(m, row.get(m)) for m in metrics if m in row]})
    by_query: dict[str, list[dict[str, Any]]] = {}
    for hit in sorted(hits, key=lambda h: (h["query_id"], h["target"], h["rank"])):
        text = hit.get("text") or ""
        by_query.setdefault(hit["query_id"], []).append(
            {**hit, "snippet": text[:snippet_chars] + ("…" if len(text) > snippet_chars else ""),
             "thumbnail": (hit.get("image_sha256") or "")[:16] if hit.get("image_sha256") in thumbnails else None})
    by_answer: dict[str, list[Mapping[str, Any]]] = {}
    for a in answers:
        by_answer.setdefault(a["query_id"], []).append(a)
    out = []
    for q in queries:
        qid = q["id"]
        q_hits = by_query.get(qid, [])
        out.append({
            "id": qid, "query": q.get("query", ""), "kind": q.get("kind", ""), "reference_answer": q.get("reference_answer"),
            "scores": scores.get(qid, []), "hits": q_hits, "n_relevant_hits": sum(bool(h.get("relevant")) for h in q_hits),
            "answers": by_answer.get(qid, []),
        })
    return out


def diff_metric(metrics: Sequence[str], per_query: Sequence[Mapping[str, Any]],
                baseline_per_query: Sequence[Mapping[str, Any]]) -> str | None:
    """The metric the "Regressed queries" section compares: ``recall@5`` when both runs have it, else the first shown metric both have."""
    have = set(per_query[0]) & set(baseline_per_query[0]) if per_query and baseline_per_query else set()
    for m in (DEFAULT_METRIC, *metrics):
        if m in have:
            return m
    return None


def regressed_queries(
    per_query: Sequence[Mapping[str, Any]],
    baseline_per_query: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    hits: Sequence[Mapping[str, Any]] = (),
    baseline_hits: Sequence[Mapping[str, Any]] = (),
    thumbnails: Mapping[str, str] | None = None,
    n_hits: int = 3,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Per target, the queries whose ``metric`` dropped from the baseline to this run, worst first (:func:`mmrag.eval.diff.query_diff`).

    ``[{target, metric, n_regressed, shown: [{query_id, kind, query, a, b, delta, hits_a, hits_b}]}]`` (targets with
    no regression left out; at most ``limit`` queries each). Each side's top ``n_hits`` hits carry ``rank, relevant,
    doc_url, section, src_url, snippet`` and ``thumbnail`` (key of the image's thumbnail in ``thumbnails``, or None).
    """
    thumbnails = thumbnails or {}
    sha_of = {(h["target"], h["query_id"], h["id"]): h.get("image_sha256") for h in (*hits, *baseline_hits)}
    targets = sorted({r["target"] for r in per_query} & {r["target"] for r in baseline_per_query})
    out = []
    for target in targets:
        table = query_diff(baseline_per_query, per_query, metric=metric, target=target, hits_a=baseline_hits, hits_b=hits,
                           n_hits=n_hits)
        worse = table[table["delta"] < 0]
        if worse.empty:
            continue
        shown = []
        for r in worse.head(limit).to_dict(orient="records"):
            sides = {}
            for side in ("hits_a", "hits_b"):
                sides[side] = []
                for h in r[side]:
                    sha = sha_of.get((target, r["query_id"], h["id"])) or ""
                    sides[side].append({**h, "thumbnail": sha[:16] if sha in thumbnails else None})
            shown.append({"query_id": r["query_id"], "kind": r["kind"], "query": r["query"], "a": r[f"{metric}_a"],
                          "b": r[f"{metric}_b"], "delta": r["delta"], **sides})
        out.append({"target": target, "metric": metric, "n_regressed": len(worse), "shown": shown})
    return out


def answer_table(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Answers side by side: ``{"models": [llm…], "score_columns": […], "rows": [{query_id, query, cells: {llm: row}}]}``.

    Every numeric column is a score column (non-LLM and judged metrics, latency, tokens, judge time) but a judged
    metric's spread over repeats, ``spread`` maps ``{metric: "<metric>_std"}`` (shown as ``mean ± std``);
    ``judges`` names the judge models and endpoints, ``judge_failures`` counts answers with a failed judged metric.
    """
    models = sorted({a["llm"] for a in answers})
    skip = {"query_id", "llm", "query", "answer", "error", "reference_answer", "run_id", "contexts", "setting_json"}
    numeric = [k for k in (answers[0] if answers else {}) if k not in skip
               and any(isinstance(a.get(k), (int, float)) and not isinstance(a.get(k), bool) for a in answers)]
    # A judged metric's spread over repeats (``<metric>_std``) is shown beside its mean (``0.75 ± 0.29``), not as a column.
    spread = {k.removesuffix("_std"): k for k in numeric if k.endswith("_std") and k.removesuffix("_std") in numeric}
    numeric = [k for k in numeric if k not in spread.values()]
    rows: dict[str, dict[str, Any]] = {}
    for a in answers:
        row = rows.setdefault(a["query_id"], {"query_id": a["query_id"], "query": a.get("query", ""),
                                              "reference_answer": a.get("reference_answer"), "cells": {}})
        row["cells"][a["llm"]] = a
    means = {m: {c: _mean([a.get(c) for a in answers if a["llm"] == m]) for c in (*numeric, *spread.values())} for m in models}
    failures = {m: sum(1 for a in answers if a["llm"] == m and a.get("error")) for m in models}
    judge_failures = {m: sum(1 for a in answers if a["llm"] == m and a.get("judge_error")) for m in models}
    judges = sorted({a["judge"] for a in answers if a.get("judge")})
    return {"models": models, "score_columns": numeric, "spread": spread, "rows": list(rows.values()), "means": means,
            "failures": failures, "judges": judges, "judge_failures": judge_failures}


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))]
    return sum(nums) / len(nums) if nums else None


# --------------------------------------------------------------------------- figures


def _fig_html(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def sweep_figures(rows: Sequence[Mapping[str, Any]], *, metric: str = "text_recall@5", target: str = "text") -> list[dict[str, str]]:
    """Plotly divs of a sweep: k × temperature heatmap of ``metric``, threshold curves, recall@k curves per setting."""
    import plotly.graph_objects as go

    if not rows or metric not in rows[0]:
        return []
    figs: list[dict[str, str]] = []
    k_col, t_col, th_col = f"{target}_k", f"{target}_temperature", f"{target}_threshold"
    ks = sorted({r[k_col] for r in rows if r.get(k_col) is not None})
    temps = sorted({r[t_col] for r in rows if r.get(t_col) is not None})
    if ks and temps:
        z = []
        for t in temps:
            line = []
            for k in ks:
                vals = [r[metric] for r in rows if r.get(k_col) == k and r.get(t_col) == t and r.get(metric) is not None]
                line.append(max(vals) if vals else None)
            z.append(line)
        fig = go.Figure(go.Heatmap(z=z, x=[str(k) for k in ks], y=[str(t) for t in temps], colorscale="Viridis",
                                   colorbar={"title": metric}))
        fig.update_layout(title=f"{metric}: k × temperature (best over other settings)", xaxis_title="k",
                          yaxis_title="temperature", height=380, margin={"l": 60, "r": 20, "t": 50, "b": 50})
        figs.append({"title": "k × temperature", "html": _fig_html(fig)})
    thresholds = sorted({r[th_col] for r in rows if r.get(th_col) is not None})
    if len(thresholds) > 1:
        fig = go.Figure()
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            groups.setdefault(f"mode={r.get('mode')} k={r.get(k_col)}", []).append(r)
        for name, group in sorted(groups.items()):
            pts = sorted((g[th_col], g[metric]) for g in group if g.get(th_col) is not None and g.get(metric) is not None)
            best: dict[float, float] = {}
            for x, y in pts:
                best[x] = max(y, best.get(x, y))
            fig.add_trace(go.Scatter(x=list(best), y=list(best.values()), mode="lines+markers", name=name))
        fig.update_layout(title=f"{metric} by threshold", xaxis_title="threshold", yaxis_title=metric, height=380,
                          margin={"l": 60, "r": 20, "t": 50, "b": 50})
        figs.append({"title": "threshold curves", "html": _fig_html(fig)})
    recall_cols = sorted((c for c in rows[0] if c.startswith(f"{target}_recall@")), key=lambda c: int(c.split("@")[1]))
    if recall_cols:
        fig = go.Figure()
        ranked = sorted(rows, key=lambda r: -(r.get(metric) or 0))[:10]
        for r in ranked:
            fig.add_trace(go.Scatter(x=[int(c.split("@")[1]) for c in recall_cols], y=[r.get(c) for c in recall_cols],
                                     mode="lines+markers", name=str(r.get("setting_id", ""))))
        fig.update_layout(title=f"{target} recall@k (top {len(ranked)} settings by {metric})", xaxis_title="k",
                          yaxis_title="recall", height=380, margin={"l": 60, "r": 20, "t": 50, "b": 50})
        figs.append({"title": "recall@k curves", "html": _fig_html(fig)})
    return figs


def history_figure(history: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] = ("text_recall@5", "text_mrr", "image_recall@5")) -> str | None:
    """A Plotly line chart of ``metrics`` over the eval history (None when fewer than one row has them)."""
    import plotly.graph_objects as go

    shown = [m for m in metrics if any(h.get(m) is not None for h in history)]
    if not history or not shown:
        return None
    fig = go.Figure()
    for m in shown:
        pts = [(h["created_at"], h[m]) for h in history if h.get(m) is not None and not _isnan(h.get(m))]
        fig.add_trace(go.Scatter(x=[str(x) for x, _ in pts], y=[y for _, y in pts], mode="lines+markers", name=m))
    fig.update_layout(title="eval history", xaxis_title="run time", yaxis_title="score", height=340,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return _fig_html(fig)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --------------------------------------------------------------------------- rendering


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the report: templates/ with autoescaping on for everything."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=3: "" if v is None or _isnan(v) else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    env.filters["short"] = lambda v, n=12: "" if v is None else str(v)[:n]
    return env


def render_report(data: Mapping[str, Any], *, plotly_js: str | None = None) -> str:
    """The report HTML of ``data`` (from :func:`collect_report_data`); ``plotly_js`` defaults to Plotly's bundled script."""

    manifest = data["manifest"]
    metrics = [m for m in SHOW_METRICS if m in manifest.get("metrics", [])] or list(manifest.get("metrics", []))[:8]
    baseline = data.get("baseline")
    sweep_rows = data.get("sweep_rows") or []
    sweep_info = data.get("sweep_info") or {}
    table = metric_table(data["aggregates"], metrics, per_query=data["per_query"],
                         baseline_per_query=baseline.per_query if baseline is not None else None)
    regressed = None
    if baseline is not None:
        metric = diff_metric(metrics, data["per_query"], baseline.per_query)
        regressed = regressed_queries(data["per_query"], baseline.per_query, metric=metric, hits=data["hits"],
                                      baseline_hits=data.get("baseline_hits") or [], thumbnails=data["thumbnails"]) if metric else []
    sweep_metric = sweep_info.get("primary_metric") or "text_recall@5"
    figures = [{"title": f["title"], "html": Markup(f["html"])} for f in sweep_figures(sweep_rows, metric=sweep_metric)]
    hist = history_figure(data.get("history") or [])
    if plotly_js is None and (figures or hist):
        import plotly.offline

        plotly_js = plotly.offline.get_plotlyjs()
    sweep_cols = []
    if sweep_rows:
        setting_cols = [c for c in sweep_info.get("setting_columns", []) if len({str(r.get(c)) for r in sweep_rows}) > 1]
        metric_cols = [c for c in sweep_rows[0] if "@" in c or c.endswith("_mrr")]
        metric_cols = [c for c in metric_cols if any(c.endswith(m) for m in metrics)]
        sweep_cols = ["setting_id", *setting_cols, *metric_cols]
    env = template_environment()
    return env.get_template(TEMPLATE_NAME).render(
        manifest=manifest,
        run_dir=data["run_dir"],
        table=table,
        baseline=baseline.manifest if baseline is not None else None,
        regressed=regressed,
        sweep_rows=sweep_rows,
        sweep_cols=sweep_cols,
        sweep_info=sweep_info,
        figures=figures,
        history_html=Markup(hist) if hist else None,
        history_rows=(data.get("history") or [])[-20:],
        queries=drilldown(data["queries"], data["per_query"], data["hits"], data["thumbnails"],
                          answers=data.get("answers") or [], metrics=metrics[:4]),
        answers=answer_table(data.get("answers") or []) if data.get("answers") else None,
        thumbnails={sha[:16]: uri for sha, uri in data["thumbnails"].items()},
        failures=data.get("failures") or [],
        plotly_js=Markup(plotly_js) if plotly_js else None,
    )


def write_report(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    baseline_dir: str | Path | None = None,
    db_uri: str | None = None,
    history_uri: str | None = None,
) -> Path:
    """Render the report of ``run_dir`` into ``out`` (default ``<run_dir>/index.html``); returns the file written."""
    data = collect_report_data(run_dir, baseline_dir=baseline_dir, db_uri=db_uri, history_uri=history_uri)
    path = Path(out) if out else Path(run_dir) / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    return path
