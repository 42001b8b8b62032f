"""Ranking metrics of an eval run, computed by ranx, per query and aggregated (overall and per kind, per target).

Metric names are ranx's: ``recall@k``, ``precision@k``, ``ndcg@k``, ``hit_rate@k`` for each cutoff
k, and ``mrr`` (over the whole retrieved list, i.e. MRR@search-k). Relevance is binary.

* **Qrels** per target: ``{query id: {relevant id: 1}}`` over *all* rows of the index the labels
  match (:mod:`mmrag.eval.labels`), so recall's denominator is every relevant chunk (or image) in the
  index, not only the retrieved ones.
* **Run** per target: ``{query id: {hit id: 1 / rank}}`` -- the search's own order, whatever score
  ranked it (softmax, cosine or a reranker's), with no ties.
* A query is scored on a target when it has labels for it that match at least one row; queries
  whose labels match nothing are reported apart (a labelling error, not a zero score).

Results are plain tables (lists of dicts) with ``metric@k`` columns: :func:`per_query_rows` one row
per (query, target), :func:`aggregate_rows` one row per (target, kind) with ``kind="all"`` overall.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

TARGET_NAMES = ("text", "image")
RANK_METRICS = ("recall", "precision", "ndcg", "hit_rate")
ALL_KINDS = "all"
EMPTY_PLACEHOLDER = "\x00nothing-retrieved"


def metric_names(cutoffs: Iterable[int] = (1, 3, 5, 10)) -> list[str]:
    """The ranx metric names of an eval run: ``recall@k``, ``precision@k``, ``ndcg@k``, ``hit_rate@k`` per cutoff, then ``mrr``."""
    ks = sorted({int(k) for k in cutoffs})
    if not ks or ks[0] < 1:
        raise ValueError(f"cutoffs must be positive integers, got {list(cutoffs)}")
    return [f"{m}@{k}" for m in RANK_METRICS for k in ks] + ["mrr"]


def build_qrels(relevant: Mapping[str, Iterable[str]]):
    """A ranx ``Qrels`` (binary relevance) from ``{query id: relevant ids}``; queries without ids are left out."""
    from ranx import Qrels

    data = {qid: {doc: 1 for doc in sorted(ids)} for qid, ids in relevant.items() if ids}
    return Qrels(data)


def build_run(ranked: Mapping[str, Sequence[str]], *, name: str = "run"):
    """A ranx ``Run`` from ``{query id: hit ids best first}``, scored ``1 / rank`` (repeated ids keep their best rank).

    A query that retrieved nothing gets one placeholder id that is never relevant (ranx needs one).
    """
    from ranx import Run

    data: dict[str, dict[str, float]] = {}
    for qid, ids in ranked.items():
        scores: dict[str, float] = {}
        for rank, doc in enumerate(ids, 1):
            scores.setdefault(doc, 1.0 / rank)
        # ranx cannot build a run in which no query retrieved anything; a never-relevant placeholder
        # changes no metric (precision@k divides by k, not by the number retrieved).
        data[qid] = scores or {EMPTY_PLACEHOLDER: 0.0}
    return Run(data, name=name)


def score_queries(
    relevant: Mapping[str, Iterable[str]],
    ranked: Mapping[str, Sequence[str]],
    metrics: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per-query ranx scores: ``{query id: {metric: value}}`` for queries with at least one relevant id.

    Queries missing from ``ranked`` count as having retrieved nothing (ranx ``make_comparable``).
    """
    from ranx import evaluate

    qrels = build_qrels(relevant)
    qids = list(qrels.keys())
    if not qids:
        return {}
    run = build_run({q: ranked.get(q, ()) for q in qids}).make_comparable(qrels)
    values = evaluate(qrels, run, list(metrics), return_mean=False, save_results_in_run=True)
    if len(metrics) == 1:
        values = {metrics[0]: values}
    order = list(run.get_query_ids())
    return {qid: {m: float(np.asarray(values[m])[i]) for m in metrics} for i, qid in enumerate(order)}


def first_relevant_rank(ids: Sequence[str], relevant: Iterable[str]) -> int | None:
    """Rank (1-based) of the first relevant id in ``ids``, or None."""
    wanted = set(relevant)
    return next((rank for rank, doc in enumerate(ids, 1) if doc in wanted), None)


def per_query_rows(
    queries: Sequence[Mapping[str, Any]],
    relevant: Mapping[str, Mapping[str, Iterable[str]]],
    ranked: Mapping[str, Mapping[str, Sequence[str]]],
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per scored (query, target): ``query_id, kind, target, query, n_relevant, n_retrieved,
    n_relevant_retrieved, first_relevant_rank`` and one column per metric.

    ``queries``: dicts with ``id``, ``kind``, ``query``. ``relevant[target][query id]``: relevant
    ids; ``ranked[target][query id]``: retrieved ids best first.
    """
    rows: list[dict[str, Any]] = []
    info = {q["id"]: q for q in queries}
    for target in TARGET_NAMES:
        rel = {qid: set(ids) for qid, ids in relevant.get(target, {}).items() if qid in info and ids}
        if not rel:
            continue
        got = ranked.get(target, {})
        scores = score_queries(rel, got, metrics)
        for q in queries:
            if q["id"] not in scores:
                continue
            ids = list(got.get(q["id"], ()))
            rows.append(
                {
                    "query_id": q["id"],
                    "kind": q.get("kind", "text"),
                    "target": target,
                    "query": q.get("query"),
                    "n_relevant": len(rel[q["id"]]),
                    "n_retrieved": len(ids),
                    "n_relevant_retrieved": len(set(ids) & rel[q["id"]]),
                    "first_relevant_rank": first_relevant_rank(ids, rel[q["id"]]),
                    **scores[q["id"]],
                }
            )
    return rows


def aggregate_rows(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Mean of each metric per target, overall (``kind="all"``) then per kind (sorted): ``target, kind, n_queries, metric…``."""
    out: list[dict[str, Any]] = []
    for target in TARGET_NAMES:
        of_target = [r for r in rows if r["target"] == target]
        if not of_target:
            continue
        kinds = [ALL_KINDS, *sorted({r["kind"] for r in of_target})]
        for kind in kinds:
            group = of_target if kind == ALL_KINDS else [r for r in of_target if r["kind"] == kind]
            out.append(
                {
                    "target": target,
                    "kind": kind,
                    "n_queries": len(group),
                    **{m: float(np.mean([r[m] for r in group])) for m in metrics},
                }
            )
    return out


def summary_view(aggregates: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Aggregates as nested dicts: ``{"overall": {target: {n_queries, metric…}}, "by_kind": {kind: {target: {…}}}}``."""
    overall: dict[str, Any] = {}
    by_kind: dict[str, dict[str, Any]] = {}
    for row in aggregates:
        values = {"n_queries": row["n_queries"], **{m: row[m] for m in metrics}}
        if row["kind"] == ALL_KINDS:
            overall[row["target"]] = values
        else:
            by_kind.setdefault(row["kind"], {})[row["target"]] = values
    return {"overall": overall, "by_kind": by_kind}
