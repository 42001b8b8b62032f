"""Deferred OCR (``images.ocr_deferred``): pages are committed before their images' OCR, the enrichment pass at
the end of the run fills the OCR text and re-embeds only those rows, and rows left pending by a run that
stopped early are finished by the next run without reading any image twice."""

from __future__ import annotations

import numpy as np
import pytest

from mmrag.flows import index as index_flow
from mmrag.flows.index import run_index
from mmrag.pipelines import ocr as ocr_module
from mmrag.pipelines import store
from tests.flows.test_first_index import make_config, make_site

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

IMAGE_TABLE = store.images_table_name("minilm")


def image_rows(db_uri: str) -> dict[str, dict]:
    rows_ = store.IndexStore(db_uri).read_table(IMAGE_TABLE).to_pylist()
    return {r["id"]: r for r in rows_}


def test_deferred_ocr_ends_with_the_rows_an_inline_run_writes(tmp_path, ocr_calls):
    site, n_images = make_site(tmp_path / "site", pages=3, images_per_page=2, paragraphs=2)
    inline_cfg = make_config(tmp_path / "inline", **{"images.ocr_workers": 0, "images.ocr_deferred": False})
    deferred_cfg = make_config(tmp_path / "deferred", **{"images.ocr_workers": 0, "images.ocr_deferred": True,
                                                           "page_batch": 1})
    inline = run_index([str(site)], inline_cfg)
    deferred = run_index([str(site)], deferred_cfg)

    assert inline.ocr_pending_written == inline.ocr_enriched_rows == 0
    assert deferred.ocr_pending_written == deferred.ocr_enriched_rows == n_images
    assert deferred.ocr_pending_left == 0 and deferred.ocr_images == n_images
    assert ocr_calls["n"] == 2 * n_images  # each run reads each distinct image once
    assert 0 < deferred.pages_committed_s <= deferred.elapsed_s
    assert "deferred: 6 rows committed before their OCR, 6 enriched, 0 still pending" in deferred.to_text()

    want, got = image_rows(inline_cfg.store.db_uri), image_rows(deferred_cfg.store.db_uri)
    assert want.keys() == got.keys() and len(got) == n_images
    for image_id, row in got.items():
        assert row["ocr_pending"] is False and row["ocr_text"] and row["ocr_text"] in row["surrogate_text"]
        for column in ("ocr_text", "surrogate_text", "surrogate_hash", "nearby_text", "caption", "section_path",
                       "published", "status", "width", "vector_source"):
            assert row[column] == want[image_id][column], column
        np.testing.assert_allclose(row["vector"], want[image_id]["vector"], atol=1e-5)


def test_rows_left_pending_are_searchable_and_the_next_run_finishes_them_from_saved_results(tmp_path, ocr_calls,
                                                                                             monkeypatch):
    site, n_images = make_site(tmp_path / "site", pages=2, images_per_page=2, paragraphs=2)
    cfg = make_config(tmp_path, **{"images.ocr_workers": 0, "images.ocr_deferred": True})

    # The run stops after its last page batch: as if killed before the enrichment pass.
    enrich = index_flow.enrich_pending_ocr
    monkeypatch.setattr(index_flow, "enrich_pending_ocr", lambda *args, **kwargs: 0)
    stopped = run_index([str(site)], cfg)
    assert stopped.pages_ok == 2 and stopped.ocr_pending_written == n_images and stopped.ocr_pending_left == n_images
    assert ocr_calls["n"] == 0
    rows_ = image_rows(cfg.store.db_uri)
    assert all(r["ocr_pending"] and r["ocr_text"] is None for r in rows_.values())
    assert all(r["caption"] in r["surrogate_text"] for r in rows_.values())  # searchable by caption meanwhile
    before = {i: r["surrogate_hash"] for i, r in rows_.items()}

    # Some images were read (and saved) before the stop; the next run reads only the others.
    index_store = store.IndexStore(cfg.store.db_uri)
    first_two = sorted({r["image_sha256"] for r in rows_.values()})[:2]
    blobs = index_store.read_where(store.IMAGE_BLOBS, ["sha256", "data"], "sha256", first_two).to_pylist()
    index_store.save_ocr_results([{"image_sha256": b["sha256"], "engine": stopped.ocr_engine,
                                   "text": ocr_module.ocr_image(b["data"]), "error": None, "seconds": 0.1,
                                   "created_at": None} for b in blobs])
    calls = ocr_calls
    calls["n"] = 0
    monkeypatch.setattr(index_flow, "enrich_pending_ocr", enrich)

    again = run_index([str(site)], cfg)
    assert again.documents_unchanged == 2 and again.pages_ok == 2  # the pages themselves are not redone
    assert again.ocr_enriched_rows == n_images and again.ocr_pending_left == 0
    assert calls["n"] == n_images - 2 and again.ocr_reused == 2
    rows_ = image_rows(cfg.store.db_uri)
    assert all(not r["ocr_pending"] and r["ocr_text"] and r["ocr_text"] in r["surrogate_text"] for r in rows_.values())
    assert all(r["surrogate_hash"] != before[i] for i, r in rows_.items())

    # Nothing pending any more: a third run reads nothing and rewrites nothing.
    third = run_index([str(site)], cfg)
    assert third.ocr_enriched_rows == 0 and calls["n"] == n_images - 2


def test_enrichment_reads_images_ahead_of_the_group_it_embeds(tmp_path, ocr_calls, monkeypatch):
    """Re-embedding a group of long surrogates takes longer than reading its images, so the OCR workers are sent
    up to ``OCR_AHEAD_IMAGES`` images past the group being embedded, not only the next group."""
    from mmrag.flows import enrich

    site, n_images = make_site(tmp_path / "site", pages=4, images_per_page=2, paragraphs=1)
    cfg = make_config(tmp_path, **{"images.ocr_workers": 0, "images.ocr_deferred": True})  # read when sent
    monkeypatch.setattr(enrich, "IMAGES_PER_COMMIT", 2)
    monkeypatch.setattr(enrich, "OCR_AHEAD_IMAGES", 4)
    events = []
    real_vectors = enrich.image_vectors

    def embedding(occurrences, *args, **kwargs):
        events.append(("embed", ocr_calls["n"]))
        return real_vectors(occurrences, *args, **kwargs)

    monkeypatch.setattr(enrich, "image_vectors", embedding)
    summary = run_index([str(site)], cfg)

    assert n_images == 8 and summary.ocr_enriched_rows == 8 and summary.ocr_pending_left == 0
    # Groups of 2, at most 4 images waiting: 2 groups are sent, then each group collected lets one more go, so
    # 6 images are read before the first group is embedded (4 when only the next group was sent ahead).
    assert events == [("embed", 6), ("embed", 8), ("embed", 8), ("embed", 8)]
