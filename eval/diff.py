"""Per-query differences between two eval runs: which queries got worse or better, and what each run retrieved.

Why: an aggregate drop says *that* retrieval got worse, not *where*. :func:`diff_runs` pairs two
run directories' per-query values of one metric and target by query id and lists the queries
whose value changed -- worst regressions first, then improvements, biggest first -- each with
its text, ``A -> B`` and both runs' top hits (chunk snippet, or image URL and caption; relevant
ones marked), plus the aggregate change with ranx's paired test (:mod:`mmrag.eval.significance`).

The table is a pandas DataFrame with ``metric@k``-named columns (``recall@5_a``, ``recall@5_b``,
``delta``); :func:`format_diff` renders it as text for the CLI. :func:`worst_regressions` is the
small form the gate prints on failure: the ``n`` worst regressed queries by id and text, from a
run and a baseline file (per-query values only) or two runs.

Runs over different corpora or eval sets can be diffed (pairing is by query id) but a warning says
so; different chunkings are fine (per-query values do not depend on chunk ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from mmrag.eval.results import RunRecord, load_run
from mmrag.eval.significance import compare_per_query

DEFAULT_METRIC = "recall@5"
SNIPPET_CHARS = 100


class DiffError(ValueError):
    """Two runs cannot be diffed as asked (metric or target missing from one side)."""


@dataclass
class RunDiff:
    """The diff of run B against run A on one metric and target: changed queries, aggregate test, warnings."""

    run_a: str
    run_b: str
    metric: str
    target: str
    queries: pd.DataFrame
    aggregate: dict[str, Any]
    setting_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (queries as a list of records)."""
        records = json.loads(self.queries.to_json(orient="records", force_ascii=False)) if len(self.queries) else []
        return {"run_a": self.run_a, "run_b": self.run_b, "metric": self.metric, "target": self.target,
                "aggregate": self.aggregate, "setting_changes": {k: list(v) for k, v in self.setting_changes.items()},
                "warnings": self.warnings, "queries": records}


# --------------------------------------------------------------------------- pure building blocks


def hit_snippet(hit: Mapping[str, Any], *, chars: int = SNIPPET_CHARS) -> str:
    """One line for a hit: an image's source URL (and caption), or the start of a chunk's text."""
    text = " ".join(str(hit.get("text") or "").split())
    if len(text) > chars:
        text = text[: chars - 1].rstrip() + "…"
    if hit.get("target") == "image":
        return f"{hit.get('src_url') or hit.get('id')}" + (f" — {text}" if text else "")
    return text or str(hit.get("id"))


def top_hits(hits: Iterable[Mapping[str, Any]], *, n: int = 3, chars: int = SNIPPET_CHARS) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(target, query id): [top n hits]}``, each ``rank, id, relevant, doc_url, section, snippet``."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for hit in hits:
        grouped.setdefault((hit["target"], hit["query_id"]), []).append(hit)
    return {
        key: [
            {"rank": int(h["rank"]), "id": h["id"], "relevant": bool(h.get("relevant")), "doc_url": h.get("doc_url"),
             "section": h.get("section"), "src_url": h.get("src_url"), "snippet": hit_snippet(h, chars=chars)}
            for h in sorted(rows, key=lambda h: int(h["rank"]))[:n]
        ]
        for key, rows in grouped.items()
    }


def _metric_rows(per_query: Iterable[Mapping[str, Any]], metric: str, target: str | None) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(r["target"], r["query_id"]): r for r in per_query if (target is None or r["target"] == target) and metric in r}


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    """Regressions (most negative delta first), then improvements (largest first); ties by target and query id."""
    if frame.empty:
        return frame
    delta = frame["delta"]
    group = (delta > 0).astype(int) + 2 * (delta == 0).astype(int)  # 0 regressed, 1 improved, 2 unchanged
    magnitude = delta.where(delta < 0, -delta)  # regressions: most negative first; improvements: largest first
    ordered = frame.assign(_group=group, _magnitude=magnitude).sort_values(["_group", "_magnitude", "target", "query_id"])
    return ordered.drop(columns=["_group", "_magnitude"]).reset_index(drop=True)


def query_diff(
    per_query_a: Iterable[Mapping[str, Any]],
    per_query_b: Iterable[Mapping[str, Any]],
    *,
    metric: str = DEFAULT_METRIC,
    target: str | None = "text",
    hits_a: Iterable[Mapping[str, Any]] = (),
    hits_b: Iterable[Mapping[str, Any]] = (),
    n_hits: int = 3,
    include_unchanged: bool = False,
) -> pd.DataFrame:
    """The queries scored in both runs whose ``metric`` changed, worst regression first (see :func:`_order`).

    Columns: ``target, query_id, kind, query, <metric>_a, <metric>_b, delta, change`` (``regressed`` /
    ``improved`` / ``same``), ``first_relevant_rank_a/_b``, ``hits_a/_b`` (top ``n_hits`` hits each,
    from hit rows; empty lists without them). ``target=None`` pairs every target.
    """
    a, b = _metric_rows(per_query_a, metric, target), _metric_rows(per_query_b, metric, target)
    tops_a, tops_b = top_hits(hits_a, n=n_hits), top_hits(hits_b, n=n_hits)
    rows = []
    for key in sorted(a.keys() & b.keys()):
        ra, rb = a[key], b[key]
        va, vb = float(ra[metric]), float(rb[metric])
        delta = vb - va
        if delta == 0 and not include_unchanged:
            continue
        rows.append({
            "target": key[0], "query_id": key[1], "kind": rb.get("kind") or ra.get("kind"),
            "query": rb.get("query") or ra.get("query"), f"{metric}_a": va, f"{metric}_b": vb, "delta": delta,
            "change": "regressed" if delta < 0 else ("improved" if delta > 0 else "same"),
            "first_relevant_rank_a": ra.get("first_relevant_rank"), "first_relevant_rank_b": rb.get("first_relevant_rank"),
            "hits_a": tops_a.get(key, []), "hits_b": tops_b.get(key, []),
        })
    columns = ["target", "query_id", "kind", "query", f"{metric}_a", f"{metric}_b", "delta", "change",
               "first_relevant_rank_a", "first_relevant_rank_b", "hits_a", "hits_b"]
    return _order(pd.DataFrame(rows, columns=columns))


def aggregate_diff(
    per_query_a: Sequence[Mapping[str, Any]],
    per_query_b: Sequence[Mapping[str, Any]],
    *,
    metric: str = DEFAULT_METRIC,
    target: str = "text",
    stat_test: str = "student",
    max_p: float = 0.05,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> dict[str, Any]:
    """Mean ``metric`` of A and B over the queries both scored on ``target``, the change and its paired p-value.

    Keys: ``n_queries, a, b, delta, p_value, significant, stat_test, better, same, worse, missing``.
    """
    rows = compare_per_query(per_query_a, per_query_b, [metric], targets=[target], stat_test=stat_test, max_p=max_p,
                             n_permutations=n_permutations, random_seed=random_seed)
    if not rows:
        raise DiffError(f"no query was scored on {target} in both runs")
    r = rows[0]
    return {"n_queries": r["n_queries"], "a": r["control"], "b": r["treatment"], "delta": r["delta"],
            "p_value": r["p_value"], "significant": r["significant"], "stat_test": r["stat_test"],
            "better": r["wins"], "same": r["ties"], "worse": r["losses"], "missing": r["missing"]}


def setting_changes(setting_a: Mapping[str, Any], setting_b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The retrieval-setting keys whose values differ between two runs: ``{key: (a, b)}`` (the ``tables`` map left out)."""
    keys = sorted((set(setting_a) | set(setting_b)) - {"tables"})
    return {k: (setting_a.get(k), setting_b.get(k)) for k in keys if setting_a.get(k) != setting_b.get(k)}


def comparability_warnings(manifest_a: Mapping[str, Any], manifest_b: Mapping[str, Any]) -> list[str]:
    """One line per fingerprint the two runs do not share (corpus, eval set): their numbers may not be comparable."""
    out = []
    for key, what in (("corpus_fingerprint", "corpus"), ("evalset_fingerprint", "eval set")):
        if manifest_a.get(key) != manifest_b.get(key):
            out.append(f"the runs' {what} differs ({key} {str(manifest_a.get(key))[:12]}… vs "
                       f"{str(manifest_b.get(key))[:12]}…): queries are paired by id only")
    return out


def check_metric(metric: str, target: str, per_query_a: Sequence[Mapping[str, Any]], per_query_b: Sequence[Mapping[str, Any]],
                 metrics_a: Sequence[str], metrics_b: Sequence[str]) -> None:
    """Raise :class:`DiffError` unless both runs have ``metric`` and scored queries on ``target``."""
    for side, names in (("A", metrics_a), ("B", metrics_b)):
        if metric not in names:
            raise DiffError(f"metric {metric!r} is not in run {side} (it has {', '.join(names)})")
    for side, rows in (("A", per_query_a), ("B", per_query_b)):
        scored = sorted({r["target"] for r in rows})
        if target not in scored:
            raise DiffError(f"run {side} scored no query on target {target!r} (it scored {', '.join(scored) or 'none'})")


# --------------------------------------------------------------------------- reading runs


def load_hits(run_dir: str | Path) -> list[dict[str, Any]]:
    """The hit rows of a run directory (``hits.parquet``; empty when the file is missing)."""
    path = Path(run_dir) / "hits.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else []


def diff_runs(
    run_a: str | Path | RunRecord,
    run_b: str | Path | RunRecord,
    *,
    metric: str = DEFAULT_METRIC,
    target: str = "text",
    n_hits: int = 3,
    stat_test: str = "student",
    max_p: float = 0.05,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> RunDiff:
    """Diff run B against run A (directories or loaded records) on ``metric`` and ``target``; see :class:`RunDiff`."""
    rec_a = run_a if isinstance(run_a, RunRecord) else load_run(run_a)
    rec_b = run_b if isinstance(run_b, RunRecord) else load_run(run_b)
    check_metric(metric, target, rec_a.per_query, rec_b.per_query, rec_a.manifest.get("metrics", []),
                 rec_b.manifest.get("metrics", []))
    table = query_diff(rec_a.per_query, rec_b.per_query, metric=metric, target=target,
                       hits_a=load_hits(rec_a.path), hits_b=load_hits(rec_b.path), n_hits=n_hits)
    aggregate = aggregate_diff(rec_a.per_query, rec_b.per_query, metric=metric, target=target, stat_test=stat_test,
                               max_p=max_p, n_permutations=n_permutations, random_seed=random_seed)
    return RunDiff(
        run_a=rec_a.run_id, run_b=rec_b.run_id, metric=metric, target=target, queries=table, aggregate=aggregate,
        setting_changes=setting_changes(rec_a.manifest.get("setting") or {}, rec_b.manifest.get("setting") or {}),
        warnings=comparability_warnings(rec_a.manifest, rec_b.manifest),
    )


PerQuerySource = str | Path | RunRecord | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def _per_query_of(run: PerQuerySource) -> list[Mapping[str, Any]]:
    if isinstance(run, RunRecord):
        return run.per_query
    if isinstance(run, Mapping):
        return list(run["per_query"])
    if isinstance(run, (str, Path)):
        return load_run(run).per_query
    return list(run)


def worst_regressions(
    run_a: PerQuerySource,
    run_b: PerQuerySource,
    metric: str,
    n: int = 5,
    *,
    target: str | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` queries whose ``metric`` dropped most from A (e.g. the gate's baseline) to B (the run).

    ``run_a``/``run_b``: run directories, :class:`RunRecord` s, baseline dicts (with ``per_query``) or
    per-query rows.
    ``metric`` may name a target (``text:recall@5``); otherwise ``target`` (default: every target).
    Rows: ``target, query_id, query, a, b, delta``, most negative delta first.
    """
    spec_target, sep, name = metric.partition(":")
    if sep:
        target, metric = spec_target.strip(), name.strip()
    table = query_diff(_per_query_of(run_a), _per_query_of(run_b), metric=metric, target=target)
    worst = table[table["delta"] < 0].head(n)
    return [{"target": r["target"], "query_id": r["query_id"], "query": r["query"], "a": r[f"{metric}_a"],
             "b": r[f"{metric}_b"], "delta": r["delta"]} for r in worst.to_dict(orient="records")]


# --------------------------------------------------------------------------- text rendering


def format_regressions(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """:func:`worst_regressions` rows as text lines (``query id  target  a -> b  query``)."""
    lines = [f"worst regressed queries on {metric}:"]
    for r in rows:
        lines.append(f"  {r['query_id']}  {r['target']}  {r['a']:.3f} -> {r['b']:.3f}  {r['query']}")
    return "\n".join(lines)


def _hit_lines(label: str, hits: Sequence[Mapping[str, Any]]) -> list[str]:
    if not hits:
        return [f"    {label}  (nothing retrieved)"]
    return [f"    {label if i == 0 else ' '} {h['rank']:>3}. {'*' if h['relevant'] else ' '} {h['snippet']}"
            for i, h in enumerate(hits)]


def format_diff(diff: RunDiff, *, limit: int | None = 20) -> str:
    """The diff as text: the aggregate line, setting changes, then each changed query with both runs' hits (``*`` = relevant)."""
    agg = diff.aggregate
    test = "paired t-test" if agg["stat_test"] == "student" else "Fisher randomization test"
    lines = [
        f"run A {diff.run_a} -> run B {diff.run_b}: {diff.target} {diff.metric} {agg['a']:.4f} -> {agg['b']:.4f} "
        f"(delta {agg['delta']:+.4f}, p {agg['p_value']:.4g}, {test}{', significant' if agg['significant'] else ''})",
        f"  {agg['n_queries']} queries in both: {agg['worse']} worse, {agg['better']} better, {agg['same']} unchanged"
        + (f"; {agg['missing']} scored in one run only" if agg["missing"] else ""),
    ]
    if diff.setting_changes:
        lines.append("  setting: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.setting_changes.items()))
    lines += [f"mmrag: warning: {w}" for w in diff.warnings]
    table = diff.queries
    if table.empty:
        lines.append(f"no query's {diff.metric} changed")
        return "\n".join(lines)
    shown = table if not limit else table.head(limit)
    more = f" (first {len(shown)}; --limit 0 shows all)" if len(shown) < len(table) else ""
    lines.append(f"{len(table)} queries changed, worst regressions first{more}; * marks relevant hits")
    for r in shown.to_dict(orient="records"):
        lines.append("")
        lines.append(f"  {r['query_id']}  {r[f'{diff.metric}_a']:.3f} -> {r[f'{diff.metric}_b']:.3f}  "
                     f"({r['delta']:+.3f}, {r['change']})  {r['query']}")
        lines += _hit_lines("A", r["hits_a"]) + _hit_lines("B", r["hits_b"])
    return "\n".join(lines)
