"""Image rows with pixel, surrogate and multivector (BLIP-2) vectors in real LanceDB tables, OCR text on
rows, and max-over-queries search: LanceDB's multivector score for one query vector is BLIP-2's score."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmrag.config import MmragConfig
from mmrag.records import ImageInfo, ImageRef, sha256_hex
from mmrag.pipelines import rows, store
from mmrag.pipelines.blip2_embedder import max_query_cosine
from mmrag.pipelines.retrieve import SearchError, Searcher, max_query_similarities
from mmrag.pipelines.summary import IndexSummary

D = 8


def unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=-1, keepdims=True)).astype(np.float32)


def occurrence(i: int, *, ok: bool = True, ocr_text: str | None = None) -> rows.ImageOccurrence:
    ref = ImageRef(src=f"https://site.example/img/{i}.png", caption=f"figure {i}", caption_source="figcaption", alt="",
                   title="", section_path=("Results",), position=i, in_figure=True)
    info = ImageInfo(status="ok", sha256=sha256_hex(f"image {i}"), byte_size=10, format="PNG", width=4, height=4) if ok else None
    return rows.ImageOccurrence(doc_url="https://site.example/a", article_title="A", ref=ref,
                                status="ok" if ok else "http_404", info=info, ocr_text=ocr_text)


@pytest.fixture
def blip2_like(tmp_path):
    """An images table like blip2's: 32 unit query vectors per decoded image, one for a surrogate row."""
    rng = np.random.default_rng(3)
    n = 24
    occurrences = [occurrence(i, ok=i % 6 != 5) for i in range(n)]
    multis = [unit(rng.normal(size=(32 if o.status == "ok" else 1, D))) for o in occurrences]
    vectors = unit(np.stack([m.mean(axis=0) for m in multis]))
    sources = ["pixels" if o.status == "ok" else "text_surrogate" for o in occurrences]
    table = rows.images_table(occurrences, vectors, embedder="blip2", vector_source=sources, run_id="r", multivectors=multis)
    index_store = store.IndexStore(str(tmp_path / "db"))
    index_store.upsert(store.images_table_name("blip2"), table)
    return index_store, occurrences, multis, vectors


def searcher(index_store: store.IndexStore, **search) -> Searcher:
    cfg = MmragConfig(store={"db_uri": index_store.db_uri}, search={"table_embedder": "blip2", **search})
    return Searcher(cfg, store=index_store)


def test_rows_keep_sources_ocr_text_and_every_query_vector(blip2_like):
    index_store, occurrences, multis, vectors = blip2_like
    name = store.images_table_name("blip2")
    schema = index_store.open_table(name).schema
    assert schema.field(store.MULTIVECTOR).type == pa.list_(pa.list_(pa.float32(), D))
    stored = {r["id"]: r for r in index_store.open_table(name).to_arrow().to_pylist()}
    for occ, multi, vector in zip(occurrences, multis, vectors):
        row = stored[occ.id]
        assert row["vector_source"] == ("pixels" if occ.status == "ok" else "text_surrogate")
        np.testing.assert_allclose(row[store.MULTIVECTOR], multi, atol=1e-7)
        np.testing.assert_allclose(row["vector"], vector, atol=1e-7)
    shas = [o.info.sha256 for o in occurrences if o.info]
    by_sha = index_store.multivectors_by_key(name, "image_sha256", shas, "vector_source = 'pixels'")
    assert set(by_sha) == set(shas) and all(m.shape == (32, D) for m in by_sha.values())
    assert index_store.vectors_by_key(name, "image_sha256", shas, "vector_source = 'text_surrogate'") == {}
    assert index_store.multivectors_by_key(store.images_table_name("absent"), "image_sha256", shas) == {}


def test_ocr_text_joins_the_surrogate_and_is_found_by_sha_across_tables(tmp_path):
    plain, read, empty = occurrence(1), occurrence(2, ocr_text="Recall@10 0.93"), occurrence(3, ocr_text="")
    assert plain.surrogate_text == "figure 1. Section: Results"
    assert read.surrogate_text == "figure 2. Section: Results. Recall@10 0.93"
    assert empty.surrogate_text == occurrence(3).surrogate_text
    assert read.surrogate_hash != occurrence(2).surrogate_hash
    index_store = store.IndexStore(str(tmp_path / "db"))
    vectors = unit(np.ones((3, D)))
    index_store.upsert("images__one", rows.images_table([plain, read, empty], vectors, embedder="one",
                                                        vector_source="text_surrogate", run_id="r"))
    old_schema = store.images_schema(D).remove(store.images_schema(D).get_field_index("ocr_text"))
    index_store.db.create_table("images__old", schema=old_schema)  # written before the column existed
    found = index_store.ocr_texts_by_sha([o.info.sha256 for o in (plain, read, empty)])
    assert found == {read.info.sha256: "Recall@10 0.93", empty.info.sha256: ""}, "None means OCR never ran"


def test_lancedb_multivector_distance_is_one_minus_blip2s_max_over_queries(blip2_like):
    index_store, occurrences, multis, _ = blip2_like
    query = unit(np.random.default_rng(9).normal(size=D))
    table = index_store.open_table(store.images_table_name("blip2"))
    found = (table.search(query, vector_column_name=store.MULTIVECTOR).distance_type("cosine")
             .limit(len(occurrences)).select(["id", "_distance"]).to_arrow().to_pylist())
    expected = {o.id: float(max_query_cosine(query, m)[0, 0]) for o, m in zip(occurrences, multis)}
    assert len(found) == len(occurrences)
    assert [1 - r["_distance"] for r in found] == pytest.approx([expected[r["id"]] for r in found], abs=1e-5)
    assert [r["id"] for r in found] == sorted(expected, key=expected.get, reverse=True)


def test_max_query_scoring_ranks_by_blip2s_score_and_mean_by_the_pooled_vector(blip2_like):
    index_store, occurrences, multis, vectors = blip2_like
    query = unit(np.random.default_rng(11).normal(size=D))
    max_query = {o.id: float(max_query_cosine(query, m)[0, 0]) for o, m in zip(occurrences, multis)}
    mean = {o.id: float(v @ query) for o, v in zip(occurrences, vectors)}
    for scoring, expected in (("max_query", max_query), ("mean", mean)):
        hits = searcher(index_store, image_scoring=scoring).search_vector(query, target="images", mode="cosine",
                                                                          k=len(occurrences)).hits
        assert [h.id for h in hits] == sorted(expected, key=expected.get, reverse=True)
        assert [h.similarity for h in hits] == pytest.approx([expected[h.id] for h in hits], abs=1e-5)
    assert sorted(max_query, key=max_query.get) != sorted(mean, key=mean.get), "the two scorings rank differently"
    # A softmax pool smaller than the table takes LanceDB's multivector top N, in the same order.
    pooled = searcher(index_store, image_scoring="max_query", softmax_pool=5).search_vector(
        query, target="images", mode="softmax", threshold=0.0, k=5)
    assert not pooled.softmax_exact["images"]
    assert [h.id for h in pooled.hits] == sorted(max_query, key=max_query.get, reverse=True)[:5]


def test_max_query_needs_the_multivector_column(tmp_path):
    index_store = store.IndexStore(str(tmp_path / "db"))
    index_store.upsert(store.images_table_name("blip2"), rows.images_table(
        [occurrence(1)], unit(np.ones((1, D))), embedder="clip", vector_source="pixels", run_id="r"))
    with pytest.raises(SearchError, match=r"max_query needs the 'vector_multi' column.*image_scoring mean"):
        searcher(index_store, image_scoring="max_query").search_vector(unit(np.ones(D)), target="images")
    assert searcher(index_store).search_vector(unit(np.ones(D)), target="images", mode="cosine").hits


def test_max_query_similarities_over_rows_of_any_length():
    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=D))
    multis = [unit(rng.normal(size=(n, D))) for n in (3, 1, 0, 5)]
    column = rows.multivector_array(multis, D)
    expected = [float((m @ query).max()) if len(m) else -1.0 for m in multis]
    np.testing.assert_allclose(max_query_similarities(query, column), expected, atol=1e-6)
    np.testing.assert_allclose(max_query_similarities(query, column.slice(1)), expected[1:], atol=1e-6)


def test_summary_reports_ocr_time_per_image():
    summary = IndexSummary(ocr_backend="rapidocr", ocr_images=4, ocr_seconds=10.0, ocr_reused=3)
    assert summary.ocr_seconds_per_image == 2.5
    assert "4 images read with rapidocr in 10.0s (2.50 s/image), 3 reused" in summary.to_text()
    assert "| ocr | 4 images read" in summary.to_markdown()
    assert IndexSummary(ocr_note="off (images.ocr is false)").ocr_report() == "off (images.ocr is false)"
    named = IndexSummary(ocr_backend="rapidocr", ocr_models="pp-ocrv6-tiny", ocr_images=2, ocr_seconds=1.0)
    assert named.ocr_report().startswith("2 images read with rapidocr (pp-ocrv6-tiny) in 1.0s (0.50 s/image)")
    assert IndexSummary().ocr_seconds_per_image is None
