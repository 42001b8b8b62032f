"""Maintenance on a real LanceDB database: compaction, cleanup that keeps tagged versions, vector index
built past a row threshold (rows written later still found), blob GC, and the ``mmrag maintain`` command."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from filelock import FileLock
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.config import OpsConfig
from mmrag.pipelines import guard, maintenance, store

DIM = 32


def chunk_rows(ids: list[str], vectors: np.ndarray) -> pa.Table:
    schema = store.chunks_schema(DIM)
    rows = [{"id": i, "doc_url": f"https://example.org/{i}", "text": f"text {i}", "content_hash": i, "embedder": "t",
             "position": 0} for i in ids]
    table = pa.Table.from_pylist(rows, schema=schema.remove(schema.get_field_index("vector")))
    flat = pa.array(vectors.astype(np.float32).reshape(-1), pa.float32())
    return table.add_column(schema.get_field_index("vector"), schema.field("vector"),
                            pa.FixedSizeListArray.from_arrays(flat, DIM)).cast(schema)


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def db(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    for batch in range(6):  # six small commits -> six fragments
        ids = [f"c{batch}-{i}" for i in range(50)]
        s.upsert("chunks__t__paragraph", chunk_rows(ids, unit_vectors(50, batch)))
        if batch == 1:
            s.tag_versions("eval-run-1", ["chunks__t__paragraph"])
        if batch == 3:
            s.tag_versions("index-run-2", ["chunks__t__paragraph"])
    return s


def test_compaction_and_cleanup_keep_tagged_versions(db):
    name = "chunks__t__paragraph"
    tagged = {tag: info["version"] for tag, info in db.open_table(name).tags.list().items()}
    versions_before = len(db.open_table(name).list_versions())
    report = maintenance.run_maintenance(db, OpsConfig(cleanup_older_than_days=0, vector_index_min_rows=100_000))
    entry = report["tables"][name]
    assert entry["fragments_before"] == 6 and entry["fragments_removed"] == 6 and entry["fragments_added"] == 1
    assert entry["versions_removed"] > 0 and entry["index"] is None
    table = db.open_table(name)
    kept = {v["version"] for v in table.list_versions()}
    assert set(tagged.values()) <= kept and len(kept) < versions_before
    assert kept == set(tagged.values()) | {table.version}, "only tagged versions and the latest stay"
    assert table.count_rows() == 300 and len(table.to_lance().get_fragments()) == 1
    for tag, version in tagged.items():
        old = db.open_table(name)
        old.checkout(tag)
        assert old.count_rows() == 50 * (2 if version == tagged["eval-run-1"] else 4)


def test_retention_keeps_recent_versions(db):
    name = "chunks__t__paragraph"
    before = len(db.open_table(name).list_versions())
    report = maintenance.run_maintenance(db, OpsConfig(cleanup_older_than_days=7))
    assert report["tables"][name]["versions_removed"] == 0
    assert len(db.open_table(name).list_versions()) > before  # nothing removed, compaction commits added


@pytest.mark.parametrize("index_type", ["IVF_SQ", "IVF_PQ"])
def test_vector_index_past_threshold_and_rows_written_after_it_are_found(tmp_path, index_type):
    s = store.IndexStore(str(tmp_path / "db"))
    name = "chunks__t__paragraph"
    s.upsert(name, chunk_rows([f"a{i}" for i in range(2000)], unit_vectors(2000, 1)))
    ops = OpsConfig(vector_index_min_rows=1000, vector_index_type=index_type)
    built = maintenance.run_maintenance(s, ops)["tables"][name]["index"]
    assert built["action"] == "built" and built["unindexed_rows"] == 0 and built["type"] == index_type
    indices = s.open_table(name).list_indices()
    # the vector index, and the full-text index hybrid search reads (on the chunk text)
    assert sorted(i.index_type for i in indices) == sorted([{"IVF_SQ": "IvfSq", "IVF_PQ": "IvfPq"}[index_type], "FTS"])

    late = unit_vectors(20, 99)
    s.upsert(name, chunk_rows([f"late{i}" for i in range(20)], late))
    table = s.open_table(name)
    assert table.index_stats(maintenance.vector_index_name(table)).num_unindexed_rows == 20
    for i in (0, 7, 19):
        hits = table.search(late[i]).distance_type("cosine").limit(3).to_list()
        assert hits[0]["id"] == f"late{i}", "a row written after the index is still found"
    refreshed = maintenance.run_maintenance(s, ops)["tables"][name]["index"]
    assert refreshed["action"] == "refreshed" and refreshed["unindexed_rows"] == 0
    table = s.open_table(name)
    hits = table.search(late[7]).distance_type("cosine").nprobes(20).refine_factor(5).limit(3).to_list()
    assert hits[0]["id"] == "late7"


def test_index_config():
    assert OpsConfig().vector_index_type == "IVF_SQ"
    sq = maintenance.index_config(1_000_000, 384, "IVF_SQ")
    assert (type(sq).__name__, sq.distance_type, sq.num_partitions, sq.max_iterations) == ("IvfSq", "cosine", 1000, 20)
    pq = maintenance.index_config(100_000, 384, "IVF_PQ")
    assert (pq.distance_type, pq.num_partitions, pq.num_sub_vectors) == ("cosine", 316, 48)
    assert maintenance.index_config(10, 36, "IVF_PQ").num_sub_vectors == 4
    hnsw = maintenance.index_config(250_000, 384, "IVF_HNSW_SQ")
    assert (hnsw.distance_type, hnsw.num_partitions) == ("cosine", 3)
    with pytest.raises(ValueError, match="unknown vector index type 'IVF_FLAT'"):
        maintenance.index_config(1000, 384, "IVF_FLAT")


def test_maintain_command_json_and_lock(tmp_path, db):
    runner = CliRunner()
    result = runner.invoke(app, ["maintain", "--db", db.db_uri, "--json", "--older-than-days", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tables"]["chunks__t__paragraph"]["versions_removed"] > 0
    result = runner.invoke(app, ["maintain", "--db", db.db_uri])
    assert result.exit_code == 0 and "chunks__t__paragraph" in result.output
    with FileLock(str(guard.lock_path(db.db_uri)), thread_local=False):
        result = runner.invoke(app, ["maintain", "--db", db.db_uri], env={"MMRAG_OPS__LOCK_TIMEOUT_S": "0.2"})
    assert result.exit_code == 1 and "locked by another mmrag run" in result.output
    result = runner.invoke(app, ["maintain", "--db", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no database" in result.output
