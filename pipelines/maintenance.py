"""Database maintenance: compaction, old-version cleanup that keeps tagged versions, vector indexes, blob GC.

Why not ``LanceTable.optimize()``: it also prunes versions older than 7 days by default, and
LanceDB refuses that prune (``Cleanup error: … tagged version(s) have been marked for cleanup``)
as soon as an index or eval run tagged an old version, which every run does. So the steps are
done one by one on the Lance dataset:

1. **blob GC**: ``image_blobs`` rows whose ``sha256`` no ``images__*`` row references are deleted
   (an image shared by several pages stays while any of them links to it);
2. **compaction**: ``compact_files()`` merges the small fragments each batch commit leaves;
3. **vector index**: a table with a ``vector`` column and at least ``ops.vector_index_min_rows``
   rows gets an ``ops.vector_index_type`` index (cosine); once built, ``optimize_indices()`` folds
   rows written since into it (until then they are searched flat, so nothing is ever missed);
4. **cleanup**: untagged versions older than ``ops.cleanup_older_than_days`` are removed
   (``error_if_tagged_old_versions=False``: tagged versions are skipped, never deleted).

Run it while no index run writes (``mmrag maintain`` takes the database's write lock).
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from mmrag.config import OpsConfig
from mmrag.pipelines import store


def gc_image_blobs(index_store: store.IndexStore) -> int:
    """Delete ``image_blobs`` rows no image row references; returns how many were deleted."""
    if not index_store.has_table(store.IMAGE_BLOBS):
        return 0
    referenced = index_store.referenced_image_shas()
    table = index_store.db.open_table(store.IMAGE_BLOBS)
    stored = table.to_lance().to_table(columns=["sha256"]).column("sha256").to_pylist()
    orphans = [sha for sha in stored if sha not in referenced]
    index_store.delete_where_in(store.IMAGE_BLOBS, "sha256", orphans)
    return len(orphans)


def compact(index_store: store.IndexStore, name: str) -> dict[str, int]:
    """Merge small fragments of table ``name``; returns fragment counts before and after."""
    dataset = index_store.db.open_table(name).to_lance()
    before = len(dataset.get_fragments())
    metrics = dataset.optimize.compact_files()
    return {"fragments_before": before, "fragments_removed": metrics.fragments_removed,
            "fragments_added": metrics.fragments_added}


def index_config(rows: int, dimension: int, index_type: str):
    """The LanceDB index config for a table of ``rows`` vectors of ``dimension`` (cosine distance).

    ``IVF_SQ`` (the default): about ``sqrt(rows)`` partitions, each vector scalar-quantised to 8 bits
    per dimension, 20 k-means iterations. ``IVF_PQ``: the same partitions, PQ sub-vectors of 8
    dimensions (``dimension / 8``, or the nearest divisor of ``dimension`` below it). ``IVF_HNSW_SQ``:
    HNSW graphs (m=20, ef_construction=300) inside one partition per 100k rows.
    bench/query_latency.py measures exactly these configs.
    """
    from lancedb.index import IvfHnswSq, IvfPq, IvfSq

    partitions = max(1, int(math.sqrt(rows)))
    # Fewer k-means iterations than LanceDB's 50: the extra ones lengthen large builds and bought no recall (bench/RESULTS.md)
    if index_type == "IVF_SQ":
        return IvfSq(distance_type="cosine", num_partitions=partitions, max_iterations=20)
    if index_type == "IVF_PQ":
        sub = max(1, dimension // 8)
        while dimension % sub:
            sub -= 1
        return IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub, max_iterations=20)
    if index_type == "IVF_HNSW_SQ":
        return IvfHnswSq(distance_type="cosine", num_partitions=max(1, rows // 100_000 + 1), m=20, ef_construction=300)
    raise ValueError(f"unknown vector index type {index_type!r}: use IVF_SQ, IVF_PQ or IVF_HNSW_SQ")


def vector_index_name(table) -> str | None:
    """Name of the index on the ``vector`` column of a LanceDB table, or None."""
    index = store.column_index(table, "vector")
    return index.name if index is not None else None


def ensure_vector_index(index_store: store.IndexStore, name: str, ops: OpsConfig) -> dict[str, Any] | None:
    """Build the vector index of table ``name`` once it reaches ``ops.vector_index_min_rows``, else refresh it.

    Returns what was done (``built``/``refreshed``, rows, seconds, unindexed rows left), or None
    when the table has no vector column or is below the threshold.
    """
    table = index_store.db.open_table(name)
    if "vector" not in table.schema.names:
        return None
    rows = table.count_rows()
    existing = vector_index_name(table)
    started = time.perf_counter()
    if existing is None:
        if rows < ops.vector_index_min_rows:
            return None
        dimension = table.schema.field("vector").type.list_size
        table.create_index("vector", config=index_config(rows, dimension, ops.vector_index_type))
        action = "built"
    else:
        table.to_lance().optimize.optimize_indices()
        action = "refreshed"
    table = index_store.db.open_table(name)
    stats = table.index_stats(vector_index_name(table))
    return {"action": action, "type": ops.vector_index_type, "rows": rows,
            "unindexed_rows": getattr(stats, "num_unindexed_rows", None),
            "seconds": round(time.perf_counter() - started, 3)}


def ensure_text_index(index_store: store.IndexStore, name: str) -> str | None:
    """Build or bring up to date the full-text index of a content table (``chunks__*``: ``search_text``,
    ``images__*``: the caption surrogate); None for other tables. Hybrid search needs it."""
    target = "text" if name.startswith("chunks__") else "images" if name.startswith("images__") else None
    if target is None:
        return None
    return index_store.ensure_fts_index(name, store.fts_column(target, index_store.open_table(name).schema.names))


def cleanup_versions(index_store: store.IndexStore, name: str, older_than: timedelta) -> dict[str, int]:
    """Remove untagged versions of table ``name`` older than ``older_than``; tagged versions stay."""
    dataset = index_store.db.open_table(name).to_lance()
    stats = dataset.cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
    return {"versions_removed": int(stats.old_versions), "bytes_removed": int(stats.bytes_removed)}


def run_maintenance(index_store: store.IndexStore, ops: OpsConfig, *, tables: list[str] | None = None) -> dict[str, Any]:
    """GC image blobs, then compact, index and clean up every table (or ``tables``); returns a report."""
    report: dict[str, Any] = {"blobs_deleted": 0, "tables": {}}
    started = time.perf_counter()
    if ops.gc_image_blobs and (tables is None or store.IMAGE_BLOBS in tables):
        report["blobs_deleted"] = gc_image_blobs(index_store)
    older_than = timedelta(days=ops.cleanup_older_than_days)
    for name in tables or index_store.table_names():
        entry: dict[str, Any] = {}
        entry.update(compact(index_store, name))
        entry["index"] = ensure_vector_index(index_store, name, ops)
        entry["fts_index"] = ensure_text_index(index_store, name)
        entry.update(cleanup_versions(index_store, name, older_than))
        entry["versions"] = len(index_store.db.open_table(name).list_versions())
        report["tables"][name] = entry
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report
