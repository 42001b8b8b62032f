"""The summary of an index run (pure): what each batch's stages produced, as typed records, folded into
:class:`IndexSummary` counters by one method (:meth:`IndexSummary.add_batch`), plus per-stage times and
per-item failures."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal

Change = Literal["added", "updated", "unchanged"]


@dataclass(frozen=True)
class PageOutcome:
    """One page of a batch: its status, and for a page that was indexed how its document changed.

    ``change`` is None for a page that failed (fetch or parse); ``chunks_kept`` counts the stored chunks a
    page skipped as unchanged keeps (nothing of it was re-parsed)."""

    url: str
    status: str
    change: Change | None = None
    not_modified: bool = False
    error: str | None = None
    chunks_kept: int = 0

    @property
    def ok(self) -> bool:
        """The page is indexed (its document row says ``ok``)."""
        return self.change is not None


@dataclass(frozen=True)
class ImageOutcome:
    """One image occurrence of a batch: its status and whether its row was written (``added``/``updated``) or kept."""

    src: str
    status: str
    change: Change
    error: str | None = None


@dataclass(frozen=True)
class RetiredDocuments:
    """Documents retired as gone by ``ops.gone_policy``: newly gone ``urls``, ones already gone, rows removed."""

    urls: tuple[str, ...] = ()
    still_gone: int = 0
    chunks: int = 0
    images: int = 0


@dataclass(frozen=True)
class ChunkCounts:
    """How a batch's chunks compare with the stored ones (``embedded`` = added + updated: the rows written)."""

    total: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    vectors_reused: int = 0
    truncated: int = 0


@dataclass(frozen=True)
class ImageWriteCounts:
    """What writing a batch's images did beyond each occurrence's outcome."""

    deleted: int = 0
    vectors_reused: int = 0
    pixel_vectors: int = 0
    blobs_new: int = 0


@dataclass(frozen=True)
class BatchRecord:
    """Everything one committed batch (or a retirement of dropped documents) contributes to the summary."""

    pages: tuple[PageOutcome, ...] = ()
    images: tuple[ImageOutcome, ...] = ()
    chunks: ChunkCounts = ChunkCounts()
    image_writes: ImageWriteCounts = ImageWriteCounts()
    retired: RetiredDocuments = RetiredDocuments()


@dataclass
class IndexSummary:
    """Everything an index run reports at the end (printed, returned as JSON, stored in ``runs``)."""

    run_id: str = ""
    sources: list[str] = field(default_factory=list)
    pages_total: int = 0
    pages_ok: int = 0
    pages_failed: int = 0
    pages_not_modified: int = 0
    documents_added: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    chunks_total: int = 0
    chunks_embedded: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    chunks_truncated: int = 0
    chunks_added: int = 0
    chunks_updated: int = 0
    chunks_vectors_reused: int = 0
    images_total: int = 0
    images_ok: int = 0
    images_failed: int = 0
    images_embedded: int = 0
    images_unchanged: int = 0
    images_deleted: int = 0
    image_blobs_new: int = 0
    images_added: int = 0
    images_updated: int = 0
    images_vectors_reused: int = 0
    images_pixel_vectors: int = 0
    ocr_backend: str = ""
    ocr_models: str = ""  # the models rapidocr ran (pp-ocrv6-tiny, pp-ocrv4); "" for tesseract
    ocr_engine: str = ""
    ocr_images: int = 0
    ocr_reused: int = 0
    ocr_seconds: float = 0.0
    ocr_note: str = ""
    ocr_pending_written: int = 0  # images.ocr_deferred: image rows committed before their OCR
    ocr_enriched_rows: int = 0  # pending rows (this run's or an earlier one's) given their OCR text and re-embedded
    ocr_pending_left: int = 0  # pending rows still without OCR text when the run ended
    pages_committed_s: float = 0.0  # seconds from the start until the last page batch was committed (searchable)
    caption_model: str = ""
    captions_generated: int = 0
    captions_reused: int = 0
    captions_failed: int = 0
    caption_seconds: float = 0.0
    caption_note: str = ""
    maintenance: dict[str, Any] = field(default_factory=dict)
    page_status: dict[str, int] = field(default_factory=dict)
    image_status: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_items: dict[str, int] = field(default_factory=dict)
    stage_rate: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    commit_gap_max_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    embedder: str = ""
    chunking: str = ""
    db_uri: str = ""
    elapsed_s: float = 0.0

    def count_page(self, status: str) -> None:
        """Add one page outcome to the per-status tally."""
        self.page_status = dict(Counter(self.page_status) + Counter({status: 1}))

    def count_image(self, status: str) -> None:
        """Add one image outcome to the per-status tally."""
        self.image_status = dict(Counter(self.image_status) + Counter({status: 1}))

    def add_failure(self, kind: str, url: str, status: str, error: str | None) -> None:
        """Record one failed item (page, image or source) with its status and message."""
        self.failures.append({"kind": kind, "url": url, "status": status, "error": error or ""})

    def add_batch(self, batch: BatchRecord) -> None:
        """Fold one batch's records into the counters: the only place page, document, chunk and image counts change."""
        for page in batch.pages:
            self.count_page(page.status)
            if not page.ok:
                self.pages_failed += 1
                self.add_failure("page", page.url, page.status, page.error)
                continue
            self.pages_ok += 1
            self.pages_not_modified += page.not_modified
            self.documents_added += page.change == "added"
            self.documents_updated += page.change == "updated"
            self.documents_unchanged += page.change == "unchanged"
            self.chunks_total += page.chunks_kept
            self.chunks_unchanged += page.chunks_kept
        for image in batch.images:
            self.count_image(image.status)
            self.images_total += 1
            if image.status == "ok":
                self.images_ok += 1
            else:
                self.images_failed += 1
                self.add_failure("image", image.src, image.status, image.error)
            self.images_added += image.change == "added"
            self.images_updated += image.change == "updated"
            self.images_unchanged += image.change == "unchanged"
        self.images_embedded += sum(image.change != "unchanged" for image in batch.images)
        chunks = batch.chunks
        self.chunks_total += chunks.total
        self.chunks_embedded += chunks.added + chunks.updated
        self.chunks_added += chunks.added
        self.chunks_updated += chunks.updated
        self.chunks_unchanged += chunks.unchanged
        self.chunks_deleted += chunks.deleted + batch.retired.chunks
        self.chunks_vectors_reused += chunks.vectors_reused
        self.chunks_truncated += chunks.truncated
        writes = batch.image_writes
        self.images_deleted += writes.deleted + batch.retired.images
        self.images_vectors_reused += writes.vectors_reused
        self.images_pixel_vectors += writes.pixel_vectors
        self.image_blobs_new += writes.blobs_new
        for _ in range(len(batch.retired.urls) + batch.retired.still_gone):
            self.count_page("gone")
        self.documents_deleted += len(batch.retired.urls)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``stage_seconds[stage]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
            self._update_rate(stage)

    def count_stage(self, stage: str, items: int) -> None:
        """Add ``items`` done by ``stage`` (pages fetched, images read, texts embedded, rows written, …); the
        stage's rate (``stage_rate``, items/s of its wall time) follows."""
        self.stage_items[stage] = self.stage_items.get(stage, 0) + items
        self._update_rate(stage)

    def _update_rate(self, stage: str) -> None:
        seconds, items = self.stage_seconds.get(stage, 0.0), self.stage_items.get(stage)
        if items is not None and seconds > 0:
            self.stage_rate[stage] = round(items / seconds, 2)

    @property
    def ocr_seconds_per_image(self) -> float | None:
        """Mean OCR wall time per image OCR'd in this run (None when none was)."""
        return round(self.ocr_seconds / self.ocr_images, 3) if self.ocr_images else None

    def ocr_report(self) -> str:
        """One line: images OCR'd, time per image and stored OCR text reused (or why OCR did not run)."""
        if self.ocr_note and not (self.ocr_images or self.ocr_reused):
            return self.ocr_note
        engine = f"{self.ocr_backend} ({self.ocr_models})" if self.ocr_models else self.ocr_backend
        ran = (f"{self.ocr_images} images read with {engine} in {self.ocr_seconds:.1f}s "
               f"({self.ocr_seconds_per_image or 0:.2f} s/image)" if self.ocr_images else "0 images read")
        deferred = ""
        if self.ocr_pending_written or self.ocr_enriched_rows or self.ocr_pending_left:
            deferred = (f"; deferred: {self.ocr_pending_written} rows committed before their OCR, "
                        f"{self.ocr_enriched_rows} enriched, {self.ocr_pending_left} still pending")
        return (f"{ran}, {self.ocr_reused} reused from stored rows" + deferred
                + (f"; {self.ocr_note}" if self.ocr_note else ""))

    @property
    def caption_seconds_per_image(self) -> float | None:
        """Mean wall time per image a vision model was asked to caption in this run (None when none was)."""
        asked = self.captions_generated + self.captions_failed
        return round(self.caption_seconds / asked, 3) if asked and self.caption_seconds else None

    def caption_report(self) -> str:
        """One line: captions generated (time per image), reused and failed, or why the stage did not run."""
        if self.caption_note and not (self.captions_generated or self.captions_reused or self.captions_failed):
            return self.caption_note
        line = (f"{self.captions_generated} generated with {self.caption_model}"
                + (f" ({self.caption_seconds_per_image:.2f} s/image)" if self.caption_seconds_per_image else "")
                + f", {self.captions_reused} reused, {self.captions_failed} failed")
        return line + (f"; {self.caption_note}" if self.caption_note else "")

    @property
    def all_unchanged(self) -> bool:
        """True when the run embedded nothing and deleted nothing."""
        return not (self.chunks_embedded or self.images_embedded or self.chunks_deleted or self.images_deleted
                    or self.documents_added or self.documents_updated or self.documents_deleted)

    def exit_code(self, *, strict: bool) -> int:
        """0 on success; 1 when nothing could be indexed, or (``strict``) when any item failed."""
        if self.pages_ok == 0:
            return 1
        if strict and (self.pages_failed or self.images_failed or self.failures):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    def changes(self) -> dict[str, dict[str, int]]:
        """Added / updated / deleted / unchanged counts for documents, chunks and images.

        Chunk and image ids depend on position, so a chunk that only moved is ``updated`` (its
        vector reused), not deleted plus added.
        """
        return {
            "documents": {"added": self.documents_added, "updated": self.documents_updated,
                          "deleted": self.documents_deleted, "unchanged": self.documents_unchanged},
            "chunks": {"added": self.chunks_added, "updated": self.chunks_updated,
                       "deleted": self.chunks_deleted, "unchanged": self.chunks_unchanged},
            "images": {"added": self.images_added, "updated": self.images_updated,
                       "deleted": self.images_deleted, "unchanged": self.images_unchanged},
        }

    def _rows(self) -> list[tuple[str, str]]:
        short = {"documents": "doc", "chunks": "chunk", "images": "image"}
        changes = [(f"{short[kind]} changes", ", ".join(f"{n} {what}" for what, n in counts.items()))
                   for kind, counts in self.changes().items()]
        return [
            ("pages", f"{self.pages_ok} ok, {self.pages_failed} failed of {self.pages_total}"
             + (f" ({self.pages_not_modified} not modified)" if self.pages_not_modified else "")),
            *changes,
            ("chunks", f"{self.chunks_total} total: {self.chunks_embedded} written ({self.chunks_vectors_reused} with reused "
             f"vectors), {self.chunks_unchanged} unchanged, {self.chunks_deleted} deleted"
             + (f", {self.chunks_truncated} truncated" if self.chunks_truncated else "")),
            ("images", f"{self.images_ok} ok, {self.images_failed} failed of {self.images_total}: "
             f"{self.images_embedded} written ({self.images_vectors_reused} with reused vectors"
             + (f", {self.images_pixel_vectors} from pixels" if self.images_pixel_vectors else "")
             + f"), {self.images_unchanged} unchanged, {self.images_deleted} deleted, {self.image_blobs_new} new blobs"),
            ("ocr", self.ocr_report()),
            ("captions", self.caption_report()),
            ("page status", _fmt_counts(self.page_status)),
            ("image status", _fmt_counts(self.image_status)),
            *([("maintenance", _fmt_maintenance(self.maintenance))] if self.maintenance else []),
            ("time per stage", ", ".join(f"{k} {v:.2f}s" + (f" ({self.stage_rate[k]:g}/s)" if k in self.stage_rate else "")
                                         for k, v in self.stage_seconds.items()) + f"; total {self.elapsed_s:.1f}s"),
            *([("batches", f"{self.batches} committed, longest gap between commits {self.commit_gap_max_s:.1f}s")]
              if self.batches else []),
        ]

    def to_text(self, max_failures: int = 20) -> str:
        """Human-readable multi-line summary."""
        head = "unchanged: nothing to embed" if self.all_unchanged and self.pages_ok else ""
        lines = [f"index run {self.run_id} -> {self.db_uri} (embedder {self.embedder}, chunking {self.chunking})"]
        lines += [f"  {name:<15}{value}" for name, value in self._rows()]
        if head:
            lines.append(f"  {head}")
        if self.failures:
            lines.append(f"  failures ({len(self.failures)}):")
            for failure in self.failures[:max_failures]:
                lines.append(f"    {failure['kind']:<6} {failure['status']:<18} {failure['url']}  {failure['error']}")
            if len(self.failures) > max_failures:
                lines.append(f"    … {len(self.failures) - max_failures} more (see --json)")
        return "\n".join(lines)

    def to_markdown(self, max_failures: int = 50) -> str:
        """Markdown summary (the Prefect artifact)."""
        lines = [f"# Index run `{self.run_id}`", "", f"Database `{self.db_uri}`, embedder `{self.embedder}`, chunking `{self.chunking}`.", "",
                 "| what | result |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self._rows()]
        if self.failures:
            lines += ["", "## Failures", "", "| kind | status | url | error |", "|---|---|---|---|"]
            for f in self.failures[:max_failures]:
                lines.append(f"| {f['kind']} | {f['status']} | {f['url']} | {f['error'].replace('|', '/')} |")
        return "\n".join(lines)


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def _fmt_maintenance(report: dict[str, Any]) -> str:
    tables = report.get("tables", {})
    return (f"{len(tables)} tables compacted, {sum(t.get('versions_removed', 0) for t in tables.values())} old versions removed, "
            f"{report.get('blobs_deleted', 0)} unreferenced image blobs deleted, "
            f"indexes built: {', '.join(n for n, t in tables.items() if t.get('index')) or '-'}")
