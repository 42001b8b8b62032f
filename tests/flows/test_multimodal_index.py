"""The ``index`` flow with image embedders: CLIP and BLIP-2 (tiny random checkpoints built here, loaded
like real ones) embed images from their pixels into their own tables beside MiniLM's; BLIP-2 keeps its
32 query vectors per image for max-over-queries retrieval. Real Prefect, LanceDB, HTTP on 127.0.0.1."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.flows.index import run_index
from mmrag.config import EmbedConfig, MmragConfig, load_config
from mmrag.pipelines import store
from mmrag.pipelines.blip2_embedder import mean_pooled
from mmrag.pipelines.clip_embedder import ClipEmbedder
from mmrag.pipelines.embed import create_embedder
from mmrag.pipelines.retrieve import SearchError, Searcher
from tests.helpers import SAMPLE_DIR, serve_routes
from tests.tiny_checkpoints import save_random_blip2, save_random_clip, textured_images

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory) -> Path:
    return save_random_blip2(tmp_path_factory.mktemp("tiny-blip2"))


def make_config(tmp_path: Path, **overrides):
    values = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False,
              "fetch.respect_robots": False, "fetch.backoff_base_s": 0.01, "fetch.max_retries": 0, "images.ocr": False}
    values.update(overrides)
    return load_config(None, values)


def with_embedder(cfg, name: str, model_dir: Path):
    return cfg.model_copy(update={"embed": EmbedConfig(name=name, model_path=str(model_dir), batch_size=8, device="cpu")})


def table_rows(cfg, name: str) -> list[dict]:
    return store.IndexStore(cfg.store.db_uri).open_table(name).to_arrow().to_pylist()


def blobs_by_sha(cfg) -> dict[str, bytes]:
    return {b["sha256"]: b["data"] for b in table_rows(cfg, store.IMAGE_BLOBS)}


def content_versions(cfg, names) -> dict[str, int]:
    return store.IndexStore(cfg.store.db_uri).current_versions(names)


def test_clip_embeds_sample_images_from_pixels_beside_minilm(tmp_path, clip_dir):
    minilm_cfg = make_config(tmp_path)
    run_index([str(SAMPLE_DIR)], minilm_cfg)
    minilm_tables = [store.chunks_table_name("minilm", MmragConfig().chunking.key()), store.images_table_name("minilm")]
    minilm_before = content_versions(minilm_cfg, minilm_tables)
    minilm_images_before = table_rows(minilm_cfg, minilm_tables[1])

    cfg = with_embedder(minilm_cfg, "clip", clip_dir)
    first = run_index([str(SAMPLE_DIR)], cfg)
    images = table_rows(cfg, store.images_table_name("clip"))
    assert store.IndexStore(cfg.store.db_uri).has_table(store.chunks_table_name("clip", MmragConfig().chunking.key()))
    ok = [r for r in images if r["status"] == "ok"]
    failed = [r for r in images if r["status"] != "ok"]
    assert len(ok) >= 10 and failed, "the sample corpus has a missing figure"
    assert first.images_pixel_vectors == len(ok) and first.images_embedded == len(images)

    clip = create_embedder(cfg.embed)
    blobs = blobs_by_sha(cfg)
    assert all(r["vector_source"] == "pixels" for r in ok)
    stored = np.array([r["vector"] for r in ok], dtype=np.float32)
    expected = clip.embed_image_bytes([blobs[r["image_sha256"]] for r in ok], cfg.images)
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    for row in failed:  # no bytes: the caption surrogate, embedded by CLIP's text tower in the same space
        assert row["vector_source"] == "text_surrogate" and row["image_sha256"] is None
        np.testing.assert_allclose(row["vector"], clip.embed_texts([row["surrogate_text"]])[0], atol=1e-5)
    assert all(r["ocr_text"] is None for r in images), "OCR was off"

    # image -> image: a sample picture finds itself first
    query = SAMPLE_DIR / "images" / "street-scene.jpg"
    query_sha = next(r["image_sha256"] for r in ok if r["src_url"].endswith("street-scene.jpg"))
    hits = Searcher(cfg, embedder=clip).search(image=query, target="images", mode="cosine", k=3).hits
    assert hits[0].image_sha256 == query_sha and hits[0].similarity == pytest.approx(1.0, abs=1e-4)

    second = run_index([str(SAMPLE_DIR)], cfg)
    assert second.images_embedded == 0 and second.chunks_embedded == 0 and second.all_unchanged
    assert content_versions(cfg, minilm_tables) == minilm_before
    assert table_rows(cfg, minilm_tables[1]) == minilm_images_before


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def figure_page(caption: str, srcs: list[str]) -> bytes:
    figures = "".join(f'<figure><img src="{s}"><figcaption>{caption} ({s})</figcaption></figure>' for s in srcs)
    return (f"<html><head><title>Figures</title></head><body><article><h1>Figures</h1>"
            f"<p>Two textured figures are shown below for the retrieval tests.</p>{figures}</article></body></html>").encode()


def test_pixel_vectors_are_reused_by_image_content(tmp_path, clip_dir, monkeypatch):
    embedded: list[int] = []
    real = ClipEmbedder.embed_image_bytes

    def counting(self, blobs, image_cfg=None, **kwargs):
        embedded.append(len(blobs))
        return real(self, blobs, image_cfg, **kwargs)

    monkeypatch.setattr(ClipEmbedder, "embed_image_bytes", counting)
    first_image, second_image, third_image = (png(im) for im in textured_images(3))
    html = {"Content-Type": "text/html; charset=utf-8"}
    image_type = {"Content-Type": "image/png"}
    routes = {"/page.html": (200, html, figure_page("A texture", ["/a.png", "/b.png", "/copy-of-a.png"])),
              "/a.png": (200, image_type, first_image), "/b.png": (200, image_type, second_image),
              "/copy-of-a.png": (200, image_type, first_image)}
    with serve_routes(routes) as (base, live):
        cfg = with_embedder(make_config(tmp_path), "clip", clip_dir)
        first = run_index([f"{base}/page.html"], cfg)
        assert sum(embedded) == 2, "three places, two distinct images: each embedded once"
        assert first.images_pixel_vectors == 3 and first.images_vectors_reused == 1
        before = {r["src_url"]: r for r in table_rows(cfg, store.images_table_name("clip"))}

        # Captions change: every row is rewritten, no image is embedded again.
        embedded.clear()
        live["/page.html"] = (200, html, figure_page("Another caption", ["/a.png", "/b.png", "/copy-of-a.png"]))
        second = run_index([f"{base}/page.html"], cfg)
        assert embedded == [] and second.images_embedded == 3 and second.images_vectors_reused == 3
        after = {r["src_url"]: r for r in table_rows(cfg, store.images_table_name("clip"))}
        for src, row in after.items():
            assert row["caption"].startswith("Another caption") and row["vector"] == before[src]["vector"]

        # The bytes behind one URL change: only that image is embedded.
        live["/b.png"] = (200, image_type, third_image)
        live["/page.html"] = (200, html, figure_page("Third caption", ["/a.png", "/b.png", "/copy-of-a.png"]))
        third = run_index([f"{base}/page.html"], cfg)
        assert embedded == [1] and third.images_pixel_vectors == 3
        changed = {r["src_url"]: r for r in table_rows(cfg, store.images_table_name("clip"))}[f"{base}/b.png"]
        assert changed["vector"] != before[f"{base}/b.png"]["vector"]

        embedded.clear()
        assert run_index([f"{base}/page.html"], cfg).images_embedded == 0 and embedded == []


def test_blip2_keeps_every_query_vector_and_max_query_search_is_blip2s_score(tmp_path, blip2_dir, clip_dir):
    cfg = with_embedder(make_config(tmp_path), "blip2", blip2_dir)
    summary = run_index([str(SAMPLE_DIR)], cfg)
    assert summary.pages_ok >= 5
    blip2 = create_embedder(cfg.embed)
    rows = table_rows(cfg, store.images_table_name("blip2"))
    pixels = [r for r in rows if r["vector_source"] == "pixels"]
    surrogates = [r for r in rows if r["vector_source"] == "text_surrogate"]
    assert pixels and surrogates
    multi = np.array([r["vector_multi"] for r in pixels], dtype=np.float32)
    assert multi.shape == (len(pixels), 32, blip2.dimension)
    np.testing.assert_allclose([r["vector"] for r in pixels], mean_pooled(multi), atol=1e-6)
    blobs = blobs_by_sha(cfg)
    np.testing.assert_allclose(multi, blip2.embed_image_bytes_multi([blobs[r["image_sha256"]] for r in pixels], cfg.images),
                               atol=1e-5)
    for row in surrogates:  # one vector: max over it is its cosine
        assert np.allclose(row["vector_multi"], [row["vector"]])

    query = "a diagram of a neural network"
    text_vector = blip2.embed_texts([query])[0]
    by_id = {r["id"]: r for r in rows}
    itm = {r["id"]: float(blip2.itm_score(text_vector, np.asarray(r["vector_multi"], dtype=np.float32))[0, 0]) for r in rows}
    scoring = cfg.model_copy(update={"search": cfg.search.model_copy(update={"image_scoring": "max_query"})})
    hits = Searcher(scoring, embedder=blip2).search(query, target="images", mode="cosine", k=len(rows)).hits
    assert len(hits) == len(rows)
    assert [h.similarity for h in hits] == pytest.approx([itm[h.id] for h in hits], abs=1e-5)
    assert [h.similarity for h in hits] == pytest.approx(sorted(itm.values(), reverse=True), abs=1e-5)
    mean_hits = Searcher(cfg, embedder=blip2).search(query, target="images", mode="cosine", k=len(rows)).hits
    mean = {r["id"]: float(np.dot(text_vector, r["vector"])) for r in rows}
    assert [h.similarity for h in mean_hits] == pytest.approx(sorted(mean.values(), reverse=True), abs=1e-5)

    # Hybrid reranking over 2 vector candidates: rows only full-text search adds are scored by max_query too.
    hybrid = scoring.model_copy(update={"search": scoring.search.model_copy(update={"rerank_candidates": 2})})
    fused = Searcher(hybrid, embedder=blip2).search("recall and latency", target="images", mode="cosine", k=6,
                                                     reranker="hybrid").hits
    fused_vector = blip2.embed_texts(["recall and latency"])[0]
    full_text_only = [h for h in fused if h.retrieval_score is None]
    assert full_text_only, "the query words should find rows beyond the 2 vector candidates"
    for hit in fused:
        expected = float(blip2.itm_score(fused_vector, np.asarray(by_id[hit.id]["vector_multi"], dtype=np.float32))[0, 0])
        assert hit.similarity == pytest.approx(expected, abs=1e-5)

    # Softmax over a pool smaller than the table: the pool is LanceDB's multivector top N, in BLIP-2's order.
    pooled = scoring.model_copy(update={"search": scoring.search.model_copy(update={"softmax_pool": 5})})
    pool_hits = Searcher(pooled, embedder=blip2).search(query, target="images", mode="softmax", threshold=0.0, k=5).hits
    assert [h.similarity for h in pool_hits] == pytest.approx(sorted(itm.values(), reverse=True)[:5], abs=1e-5)

    clip_cfg = with_embedder(cfg, "clip", clip_dir)
    run_index([str(SAMPLE_DIR)], clip_cfg)
    max_query_on_clip = clip_cfg.model_copy(update={"search": scoring.search})
    with pytest.raises(SearchError, match="vector_multi.*images__clip.*image_scoring mean"):
        Searcher(max_query_on_clip).search("a cat", target="images")
