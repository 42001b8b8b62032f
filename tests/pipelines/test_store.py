"""LanceDB store: idempotent upserts, deletes, version tags, runs and Parquet export (real LanceDB)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmrag.records import Chunk
from mmrag.pipelines import rows, store


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


def _without(schema: pa.Schema, name: str) -> pa.Schema:
    return schema.remove(schema.get_field_index(name))


def test_a_table_written_before_published_existed_is_evolved_and_keeps_its_rows(tmp_path):
    from datetime import date

    s = store.IndexStore(str(tmp_path / "db"))
    old_chunks = _chunks(["old alpha text", "old beta text"], "file:///old.html")
    new_rows = _table(old_chunks)
    old_schema = _without(new_rows.schema, "published")
    s.db.create_table("c", new_rows.drop_columns(["published"]).cast(old_schema))  # the schema before this change
    old_docs = pa.Table.from_pylist(
        [{"id": "d1", "url": "file:///old.html", "status": "ok", "title": "Old", "n_chunks": 2}],
        schema=_without(store.documents_schema(), "published"))
    s.db.create_table(store.DOCUMENTS, old_docs)
    assert "published" not in s.open_table("c").schema.names

    # Reads of the missing column give nulls instead of failing.
    assert s.document_rows(["file:///old.html"])["file:///old.html"]["published"] is None
    assert {r["published"] for r in s.ids_by_doc("c", ["file:///old.html"], ["published"])["file:///old.html"].values()} == {None}

    dated = [Chunk("file:///new.html", "New", ("S",), 0, 0, 9, "new chunk", 2, "paragraph", published="2024-03-18")]
    s.upsert("c", _table(dated))
    s.upsert(store.DOCUMENTS, rows.documents_table([{"id": "d2", "url": "file:///new.html", "status": "ok",
                                                      "published": date(2024, 3, 18)}]))
    table = s.open_table("c")
    assert "published" in table.schema.names and table.count_rows() == 3
    by_id = {r["id"]: r for r in table.to_arrow().to_pylist()}
    assert by_id[dated[0].id]["published"] == date(2024, 3, 18)
    for chunk in old_chunks:  # nothing stored is lost: text and vector kept, the date unknown
        assert by_id[chunk.id]["text"] == chunk.text and len(by_id[chunk.id]["vector"]) == 4
        assert by_id[chunk.id]["published"] is None
    docs = {r["url"]: r for r in s.open_table(store.DOCUMENTS).to_arrow().to_pylist()}
    assert docs["file:///old.html"]["title"] == "Old" and docs["file:///old.html"]["published"] is None
    assert docs["file:///new.html"]["published"] == date(2024, 3, 18)
    # A date filter works on the evolved table and leaves out the undated rows.
    hits = table.search(np.ones(4, np.float32)).where("published >= date '2024-01-01'").limit(10).to_arrow()
    assert hits.column("id").to_pylist() == [dated[0].id]

    # Dates of kept rows are set in place (the re-parse path), adding the column where missing.
    s.db.create_table("i", old_docs.select(["id", "url"]).rename_columns(["id", "doc_url"]))
    field = store.documents_schema().field("published")
    assert s.set_where_in("i", "published", {date(2024, 2, 5): ["file:///old.html"]}, field=field) == 1
    assert s.open_table("i").to_arrow().column("published").to_pylist() == [date(2024, 2, 5)]
    assert s.set_where_in("c", "published", {None: ["file:///new.html"], date(2024, 2, 5): ["file:///old.html"]}) == 3
    assert {r["published"] for r in s.open_table("c").to_arrow().to_pylist()} == {None, date(2024, 2, 5)}


def test_a_missing_required_column_is_refused_before_writing(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    s.db.create_table("t", pa.table({"id": ["a"]}))
    schema = pa.schema([pa.field("id", pa.string()), pa.field("must", pa.string(), nullable=False)])
    with pytest.raises(ValueError, match="non-nullable column.*must"):
        s.upsert("t", pa.Table.from_pylist([{"id": "b", "must": "x"}], schema=schema))
    assert s.open_table("t").to_arrow().to_pylist() == [{"id": "a"}]


def test_ocr_pending_count_is_zero_without_the_table_or_its_column(tmp_path):
    s = store.IndexStore(str(tmp_path / "db"))
    assert s.ocr_pending_count("images__minilm") == 0  # no table yet
    s.upsert("chunks__toy__paragraph", _table(_chunks(["alpha text"])))
    assert s.ocr_pending_count("chunks__toy__paragraph") == 0 and s.ocr_pending_rows("chunks__toy__paragraph") == []


def test_ocr_results_are_appended_and_the_latest_reading_of_an_image_counts(tmp_path):
    from datetime import datetime, timedelta, timezone

    s = store.IndexStore(str(tmp_path / "db"))
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def result(sha, text, error=None, engine="e1", at=0):
        return {"image_sha256": sha, "engine": engine, "text": text, "error": error, "seconds": 0.1,
                "created_at": start + timedelta(seconds=at)}

    assert s.ocr_results(["a"], "e1") == {}  # no table yet
    s.save_ocr_results([result("a", None, "OSError: truncated", at=1), result("b", "beta")])
    s.save_ocr_results([result("a", "alpha", at=2), result("b", "other engine", engine="e2", at=3)])
    found = s.ocr_results(["a", "b", "c"], "e1")
    assert {sha: row["text"] for sha, row in found.items()} == {"a": "alpha", "b": "beta"}
    assert found["a"]["error"] is None  # the reading after the error, not the error
    assert s.open_table(store.OCR_RESULTS).count_rows() == 4  # appended: every reading is kept
    assert s.ocr_results(["b"], "e2")["b"]["text"] == "other engine"
