"""Eval run directories, fingerprints and the ``eval_history`` table.

Every eval run writes one directory, ``<eval.out_dir>/<run_id>/`` (default ``reports/runs/``)::

    run.json            manifest, format "mmrag-eval-run/1": run_id, created_at, commit, db_uri,
                        queries_path, n_queries, corpus_fingerprint, evalset_fingerprint, setting
                        (flat retrieval setting), config (the resolved MmragConfig), table_versions
                        ({table: version read}), version_tag ("eval-<run_id>" or null), targets,
                        cutoffs, metrics, unmatched, skipped, timings_s, files
    metrics.json        {"run_id", "metrics", "aggregates": [rows], "overall": {target: {n_queries,
                        metric…}}, "by_kind": {kind: {target: {…}}}, "unmatched", "skipped"}
    aggregates.parquet  one row per (target, kind): target, kind ("all" = overall), n_queries, metric…
    per_query.parquet   one row per scored (query, target): run_id, query_id, kind, target, query,
    per_query.json        n_relevant, n_retrieved, n_relevant_retrieved, first_relevant_rank, metric…
    hits.parquet        one row per retrieved item: run_id, query_id, kind, target, rank, id, score,
                        similarity, retrieval_score, doc_url, article_title, section, text (chunk
                        text or caption), src_url, image_sha256, image_status, relevant (bool),
                        labelled (the query has labels for this target)
    qrels.json          {target: {query_id: [relevant ids in the index]}} (recall's denominators)
    queries.jsonl       the eval set as validated (what evalset_fingerprint hashes)

Metric columns are ranx names (``recall@5``, ``precision@5``, ``ndcg@5``, ``hit_rate@5``, ``mrr``).
Targets are ``text`` and ``image``. Image bytes for a report come from the index's ``image_blobs``
table by ``image_sha256``; the table versions in ``run.json`` are tagged ``eval-<run_id>`` so
maintenance keeps them and ``table.checkout("eval-<run_id>")`` reproduces what the run read.

**Corpus fingerprint** (:func:`corpus_fingerprint`): SHA-256 over the sorted ``content_hash``
(SHA-256 of the fetched bytes) of every live document (status other than ``gone``). It leaves URLs
out on purpose: local files are indexed as ``file:///<clone path>/…``, which differs per machine,
so the same sample corpus gives the same fingerprint in every clone and in CI. A changed, added or
removed page changes it; a renamed page with the same bytes does not (labels would then fail
``mmrag eval check``). Parser or chunker changes do not change it: they are what a gate measures.

**History**: each run appends one row to the LanceDB table ``eval_history`` (in ``eval.history_uri``,
default the index database): run_id, created_at, commit, fingerprints, db_uri, run_dir, the flat
setting columns, setting_json, ``n_<target>_queries`` and one float column per overall metric named
``<target>_<metric>`` (``text_recall@5``, ``image_mrr``). New metric columns are added as runs need them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmrag.eval.evalset import dump_evalset
from mmrag.eval.metrics import build_qrels, build_run
from mmrag.eval.run import EvalResult, corpus_fingerprint
from mmrag.pipelines.store import IndexStore, open_if_exists

RUN_FORMAT = "mmrag-eval-run/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
SETTING_COLUMNS: dict[str, pa.DataType] = {
    "embedder": pa.string(),
    "table_embedder": pa.string(),
    "chunking": pa.string(),
    "target": pa.string(),
    "mode": pa.string(),
    "reranker": pa.string(),
    "rerank_candidates": pa.int64(),
    "softmax_pool": pa.int64(),
    "image_scoring": pa.string(),
    "text_k": pa.int64(),
    "text_threshold": pa.float64(),
    "text_temperature": pa.float64(),
    "image_k": pa.int64(),
    "image_threshold": pa.float64(),
    "image_temperature": pa.float64(),
}


# --------------------------------------------------------------------------- fingerprints and provenance


def git_commit(path: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``path`` (default: mmrag's own), or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path or REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def version_tag(run_id: str) -> str:
    """The tag put on the index table versions an eval run read."""
    return f"eval-{run_id}"


def tag_table_versions(index_store: IndexStore, tag: str, versions: Mapping[str, int]) -> dict[str, int]:
    """Tag each ``{table: version}`` with ``tag`` (the exact version read, even if newer ones exist)."""
    tagged = {}
    for name, version in versions.items():
        if not index_store.has_table(name):
            continue
        table = index_store.db.open_table(name)
        if tag not in table.tags.list():
            table.tags.create(tag, int(version))
        tagged[name] = int(version)
    return tagged


# --------------------------------------------------------------------------- writing a run


def _write_parquet(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns})
    pq.write_table(table, path)


def _json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, default=str, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


def write_run(
    result: EvalResult,
    out_dir: str | Path,
    *,
    db_uri: str | None = None,
    index_store: IndexStore | None = None,
    tag_versions: bool = True,
    history_uri: str | None = None,
) -> Path:
    """Write ``result`` as ``out_dir/<run_id>/`` (format in the module docstring); returns that directory.

    With ``index_store`` and ``tag_versions`` the table versions read are tagged ``eval-<run_id>``;
    with ``history_uri`` a row is appended to its ``eval_history`` table.
    """
    run_dir = Path(out_dir) / result.run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    tag = None
    if index_store is not None and tag_versions:
        tag = version_tag(result.run_id)
        tag_table_versions(index_store, tag, result.table_versions)
    per_query_columns = ["run_id", "query_id", "kind", "target"]
    per_query = [{"run_id": result.run_id, **row} for row in result.per_query]
    _write_parquet(per_query, run_dir / "per_query.parquet", per_query_columns)
    _json(per_query, run_dir / "per_query.json")
    _write_parquet(result.aggregates, run_dir / "aggregates.parquet", ["target", "kind", "n_queries"])
    _write_parquet(result.hits, run_dir / "hits.parquet", ["run_id", "query_id", "target", "rank", "id"])
    _json(result.relevant, run_dir / "qrels.json")
    dump_evalset(result.entries, run_dir / "queries.jsonl")
    summary = result.summary
    _json(
        {
            "run_id": result.run_id,
            "metrics": result.metrics,
            "aggregates": result.aggregates,
            "overall": summary["overall"],
            "by_kind": summary["by_kind"],
            "unmatched": result.unmatched,
            "skipped": result.skipped,
        },
        run_dir / "metrics.json",
    )
    manifest = {
        "format": RUN_FORMAT,
        "run_id": result.run_id,
        "created_at": result.created_at.isoformat(),
        "commit": git_commit(),
        "db_uri": db_uri,
        "queries_path": result.queries_path,
        "n_queries": len(result.entries),
        "corpus_fingerprint": result.corpus_fingerprint,
        "evalset_fingerprint": result.evalset_fingerprint,
        "setting": result.setting,
        "config": result.config,
        "table_versions": result.table_versions,
        "version_tag": tag,
        "targets": sorted({r["target"] for r in result.per_query}),
        "cutoffs": sorted({int(m.split("@")[1]) for m in result.metrics if "@" in m}),
        "metrics": result.metrics,
        "unmatched": result.unmatched,
        "skipped": result.skipped,
        "timings_s": result.timings_s,
        "files": {
            "metrics": "metrics.json", "aggregates": "aggregates.parquet", "per_query": "per_query.parquet",
            "per_query_json": "per_query.json", "hits": "hits.parquet", "qrels": "qrels.json", "queries": "queries.jsonl",
        },
    }
    _json(manifest, run_dir / "run.json")
    if history_uri:
        append_history(history_uri, history_row(manifest, summary["overall"], run_dir))
    return run_dir


# --------------------------------------------------------------------------- history


def history_row(manifest: Mapping[str, Any], overall: Mapping[str, Mapping[str, Any]], run_dir: str | Path) -> dict[str, Any]:
    """The ``eval_history`` row of a run: provenance, flat setting, ``n_<target>_queries`` and ``<target>_<metric>``."""
    setting = manifest["setting"]
    row: dict[str, Any] = {
        "run_id": manifest["run_id"],
        "created_at": datetime.fromisoformat(manifest["created_at"]),
        "commit": manifest["commit"],
        "corpus_fingerprint": manifest["corpus_fingerprint"],
        "evalset_fingerprint": manifest["evalset_fingerprint"],
        "db_uri": manifest.get("db_uri"),
        "queries_path": manifest.get("queries_path"),
        "run_dir": str(run_dir),
        **{k: setting.get(k) for k in SETTING_COLUMNS},
        "setting_json": json.dumps(setting, sort_keys=True, default=str),
    }
    for target, values in overall.items():
        row[f"n_{target}_queries"] = int(values["n_queries"])
        for metric in manifest["metrics"]:
            row[f"{target}_{metric}"] = float(values[metric])
    return row


def append_history(history_uri: str, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the ``eval_history`` table of the database at ``history_uri`` (created when missing)."""
    IndexStore(history_uri).append_history(row, SETTING_COLUMNS)


def read_history(history_uri: str):
    """The ``eval_history`` table as a pandas DataFrame sorted by ``created_at`` (empty when there is none)."""
    import pandas as pd  # deferred: pandas costs ~0.5 s to import and only history readers need it

    store = open_if_exists(history_uri)
    table = store.read_history() if store is not None else None
    if table is None:
        return pd.DataFrame()
    return table.to_pandas().sort_values("created_at").reset_index(drop=True)


# --------------------------------------------------------------------------- reading a run


@dataclass
class RunRecord:
    """A run directory read back: its manifest, per-query rows and aggregate rows."""

    path: Path
    manifest: dict[str, Any]
    per_query: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.manifest["run_id"]


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory written by :func:`write_run` (raises ``ValueError`` naming what is missing)."""
    path = Path(run_dir)
    manifest_path = path / "run.json"
    if not manifest_path.is_file():
        raise ValueError(f"{path} is not an eval run directory (no run.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != RUN_FORMAT:
        raise ValueError(f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {RUN_FORMAT})")
    per_query = pq.read_table(path / "per_query.parquet").to_pylist()
    aggregates = pq.read_table(path / "aggregates.parquet").to_pylist()
    return RunRecord(path=path, manifest=manifest, per_query=per_query, aggregates=aggregates)


def load_ranx(run_dir: str | Path, target: str = "text"):
    """ranx ``(Qrels, Run)`` of one target of a run directory (for ``ranx.compare`` across runs of one index)."""
    path = Path(run_dir)
    relevant = json.loads((path / "qrels.json").read_text(encoding="utf-8")).get(target, {})
    hits = pq.read_table(path / "hits.parquet").to_pylist()
    ranked: dict[str, list[str]] = {qid: [] for qid in relevant}
    for hit in sorted((h for h in hits if h["target"] == target), key=lambda h: (h["query_id"], h["rank"])):
        if hit["query_id"] in ranked:
            ranked[hit["query_id"]].append(hit["id"])
    return build_qrels(relevant), build_run(ranked, name=path.name)


