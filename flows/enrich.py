"""OCR enrichment of image rows committed before their OCR (``images.ocr_deferred``).

With deferred OCR the index flow commits every page batch without waiting for OCR: image rows whose text
was not read yet are written with ``ocr_pending`` and a surrogate of caption, alt, section and nearby
text, so the pages are searchable at the speed of an index without OCR. This pass then reads those
images on every core (the OCR workers), rebuilds each row from its stored columns with the OCR text,
re-embeds only the rows whose surrogate changed (pixel vectors are reused by image content) and rewrites
them, a group of images at a time. It runs at the end of every index run with OCR on, so rows left
pending by a run that stopped early are finished by the next one, from the OCR results saved so far.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from mmrag.config import MmragConfig
from mmrag.flows.embedding import image_vectors
from mmrag.flows.image_text import OcrState, collect_image_text, submit_image_text
from mmrag.pipelines import rows, store
from mmrag.pipelines.embed import Embedder
from mmrag.pipelines.embedder_base import iter_batches
from mmrag.pipelines.summary import IndexSummary
from mmrag.progress import Progress

#: Distinct images per commit of the enrichment pass: a kill loses at most this many images' re-embedding
#: (their OCR text is saved in ``ocr_results`` as it arrives and reused).
IMAGES_PER_COMMIT = 32
#: Distinct images sent to the OCR workers and not yet collected: enough to keep every worker reading while the
#: main thread re-embeds the groups before them, few enough to bound the image bytes held in memory. Images
#: waiting for a worker cost nothing when a run is killed; only those being read are lost.
OCR_AHEAD_IMAGES = 256


def enrich_pending_ocr(index_store: store.IndexStore, image_table: str, embedder: Embedder, ocr: OcrState,
                       config: MmragConfig, summary: IndexSummary, progress: Progress, run_id: str) -> int:
    """Give every ``ocr_pending`` row of ``image_table`` its OCR text, re-embed it and rewrite it; returns the rows
    rewritten. Images are sent to the OCR workers up to ``OCR_AHEAD_IMAGES`` ahead of the group being embedded
    and committed, so the workers never wait for the main thread (re-embedding a group of long surrogates takes
    longer than reading its images)."""
    if not ocr.enabled:
        return 0
    pending = index_store.ocr_pending_rows(image_table)
    by_sha: dict[str, list[dict]] = {}
    for row in pending:
        by_sha.setdefault(row["image_sha256"] or "", []).append(row)
    groups = list(iter_batches(sorted(by_sha), IMAGES_PER_COMMIT))
    if not groups:
        return 0
    bar = progress.bar("ocr enrichment (rows)", total=len(pending))

    def send(group: list[str]) -> list[rows.ImageOccurrence]:
        found = index_store.read_where(store.IMAGE_BLOBS, ["sha256", "data"], "sha256", [s for s in group if s])
        data = dict(zip(found.column("sha256").to_pylist(), found.column("data").to_pylist()))
        occurrences = [rows.occurrence_from_row(row, data.get(sha)) for sha in group for row in by_sha[sha]]
        with summary.timed("ocr"):
            submit_image_text(occurrences, ocr, index_store, summary, progress)
        return occurrences

    sent: deque[tuple[int, list[rows.ImageOccurrence]]] = deque()  # (distinct images, occurrences) per group
    unsent = deque(groups)

    def send_ahead() -> None:
        while unsent and sum(images for images, _ in sent) < OCR_AHEAD_IMAGES:
            group = unsent.popleft()
            sent.append((len(group), send(group)))

    written = 0
    send_ahead()
    while sent:
        current = sent.popleft()[1]
        send_ahead()
        with summary.timed("ocr"):
            occurrences = collect_image_text(current, ocr, summary)
        # Read, or failed and recorded (or without stored bytes): no longer pending either way.
        occurrences = [dataclasses.replace(o, ocr_pending=False) for o in occurrences]
        with summary.timed("embed"):
            vectors = image_vectors(occurrences, embedder, index_store, image_table, config, summary, progress)
        with summary.timed("write"):
            index_store.upsert(image_table, rows.images_table(
                occurrences, vectors.vectors, embedder=embedder.name, vector_source=vectors.sources, run_id=run_id,
                multivectors=vectors.multivectors))
        written += len(occurrences)
        summary.ocr_enriched_rows += len(occurrences)
        bar.advance(len(occurrences))
    bar.close()
    return written
