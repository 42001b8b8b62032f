"""LanceDB store: idempotent upserts, deletes, version tags, runs and Parquet export (real LanceDB)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmrag.records import Chunk
from pipelines import rows, store


def _chunks(texts, url="file:///a.html"):
    return [Chunk(url, "Title", ("Intro", "Part"), i, 0, len(t), t, 3, "paragraph") for i, t in enumerate(texts)]


def _table(chunks, dim=4):
    vectors = np.random.default_rng(0).normal(size=(len(chunks), dim)).astype(np.float32)
    return rows.chunks_table(chunks, vectors, embedder="toy", run_id="r1")


def test_upsert_is_idempotent_and_keyed_by_id(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    t = _table(_chunks(["alpha text", "beta text"]))
    s.upsert("chunks__toy__paragraph", t)
    s.upsert("chunks__toy__paragraph", t)
    tbl = s.open_table("chunks__toy__paragraph")
    assert tbl.count_rows() == 2
    row = tbl.to_arrow().to_pylist()[0]
    assert row["section"] == "Intro > Part" and row["section_path"] == ["Intro", "Part"]
    assert len(row["vector"]) == 4 and row["embedder"] == "toy"
    assert tbl.schema.field("vector").type == pa.list_(pa.float32(), 4)


def test_insert_only_upsert_keeps_the_first_row(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    schema = store.image_blobs_schema()
    first = pa.Table.from_pylist([{"sha256": "x", "format": "PNG", "data": b"1"}], schema=schema)
    second = pa.Table.from_pylist([{"sha256": "x", "format": "JPEG", "data": b"2"}], schema=schema)
    s.upsert(store.IMAGE_BLOBS, first, key="sha256", update=False)
    s.upsert(store.IMAGE_BLOBS, second, key="sha256", update=False)
    assert s.open_table(store.IMAGE_BLOBS).to_arrow().to_pylist()[0]["format"] == "PNG"


def test_reads_and_deletes_by_document(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    a, b = _chunks(["one one one"], "file:///a.html"), _chunks(["it's quoted"], "file:///b's.html")
    s.upsert("c", _table(a + b))
    by_doc = s.ids_by_doc("c", ["file:///b's.html"])
    assert list(by_doc) == ["file:///b's.html"] and set(by_doc["file:///b's.html"]) == {b[0].id}
    assert s.ids_by_doc("missing_table", ["x"]) == {}
    s.delete_where_in("c", "id", [a[0].id])
    assert s.open_table("c").count_rows() == 1


def test_tags_runs_and_versioned_parquet_export(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    s.upsert("c", _table(_chunks(["first version"])))
    tagged = s.tag_versions("index-run1", ["c"])
    s.upsert("c", _table(_chunks(["first version", "second row"])))
    assert s.open_table("c").count_rows() == 2
    out = s.export_parquet(tmp_path / "now")
    assert len(pd.read_parquet(out["c"])) == 2
    old = s.export_parquet(tmp_path / "old", ["c"], version="index-run1")
    assert len(pd.read_parquet(old["c"])) == 1
    assert s.export_parquet(tmp_path / "v", ["c"], version=str(tagged["c"]))["c"].exists()
    stats = {t["table"]: t for t in s.table_stats()}
    assert stats["c"]["rows"] == 2 and stats["c"]["embedders"] == ["toy"] and "index-run1" in stats["c"]["tags"]
    with pytest.raises(ValueError, match="no table 'nope'"):
        s.open_table("nope")


def test_record_and_read_last_run(tmp_path):
    from datetime import datetime, timezone

    s = store.IndexStore(str(tmp_path / "db"))
    assert s.last_run() is None
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    t1 = datetime(2026, 1, 2, tzinfo=timezone.utc)
    s.record_run({"run_id": "a", "started_at": t0, "finished_at": t0, "summary": {"pages_ok": 1}})
    s.record_run({"run_id": "b", "started_at": t1, "finished_at": t1, "summary": {"pages_ok": 2}})
    last = s.last_run()
    assert last["run_id"] == "b" and last["summary"] == {"pages_ok": 2}


def test_sql_quoting_escapes_single_quotes():
    assert store.sql_in("url", ["a'b", "c"]) == "url IN ('a''b', 'c')"
