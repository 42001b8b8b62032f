"""The index summary folded from batch records (pure)."""

from __future__ import annotations

from mmrag.pipelines.summary import (BatchRecord, ChunkCounts, ImageOutcome, ImageWriteCounts, IndexSummary, PageOutcome,
                                     RetiredDocuments)


def test_add_batch_derives_every_counter_from_the_records():
    summary = IndexSummary()
    summary.add_batch(BatchRecord(
        pages=(PageOutcome("u1", "ok", "added"), PageOutcome("u2", "ok", "updated"),
               PageOutcome("u3", "ok", "unchanged", not_modified=True, chunks_kept=4),
               PageOutcome("u4", "http_500", None, error="boom")),
        images=(ImageOutcome("i1", "ok", "added"), ImageOutcome("i2", "http_404", "updated", "missing"),
                ImageOutcome("i3", "ok", "unchanged")),
        chunks=ChunkCounts(total=10, added=5, updated=2, unchanged=3, deleted=1, vectors_reused=2, truncated=1),
        image_writes=ImageWriteCounts(deleted=1, vectors_reused=1, pixel_vectors=0, blobs_new=1),
    ))
    summary.add_batch(BatchRecord(retired=RetiredDocuments(urls=("u5",), still_gone=1, chunks=3, images=2)))
    got = summary.to_dict()
    expected = dict(pages_ok=3, pages_failed=1, pages_not_modified=1, documents_added=1, documents_updated=1,
                    documents_unchanged=1, documents_deleted=1, chunks_total=14, chunks_embedded=7, chunks_added=5,
                    chunks_updated=2, chunks_unchanged=7, chunks_deleted=4, chunks_vectors_reused=2, chunks_truncated=1,
                    images_total=3, images_ok=2, images_failed=1, images_embedded=2, images_added=1, images_updated=1,
                    images_unchanged=1, images_deleted=3, images_vectors_reused=1, image_blobs_new=1)
    assert {k: got[k] for k in expected} == expected
    assert got["page_status"] == {"ok": 3, "http_500": 1, "gone": 2} and got["image_status"] == {"ok": 2, "http_404": 1}
    assert [(f["kind"], f["url"], f["status"]) for f in got["failures"]] == [("page", "u4", "http_500"), ("image", "i2", "http_404")]
    assert summary.changes()["documents"] == {"added": 1, "updated": 1, "deleted": 1, "unchanged": 1}
