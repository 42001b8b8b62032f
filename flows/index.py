"""The ``index`` Prefect flow: sources -> fetch -> parse/chunk -> images -> embed -> LanceDB.

Network I/O (page and image fetches) runs in its own tasks, apart from pure parsing, so each can be
retried, cached or distributed on its own. Pages are processed in batches sized by time
(:class:`BatchSizer`: about ``ops.batch_target_s`` of work each, at most ``config.page_batch`` pages;
the first batch is one page): each batch is committed before its pages count as indexed, so memory
is bounded by the batch and an interrupted run (SIGKILL, SIGTERM) keeps every batch it committed and
loses about one batch of work. By default OCR runs inline with two batches in flight: while batch N
waits for its OCR, embeds and commits, batch N+1 is already fetched, parsed and its images sent to the OCR
worker processes (``images.ocr_workers``, default one per core); the embedding takes the cores those
workers leave, batch by batch (:class:`~mmrag.flows.image_text.CoreSharingEmbedder`), and each image row is
embedded once, with its OCR text. Deferred (``images.ocr_deferred``), batches commit image rows without
the OCR text not read yet (``ocr_pending``), and :mod:`mmrag.flows.enrich` then reads those images and
rewrites only their rows, at the end of this run or of the next one. OCR results are saved per distinct
image in ``ocr_results`` (within 0.2 s of each being read), so even an uncommitted batch's OCR is reused
by the next run. Long stages report done/total, rate and ETA on stderr (:mod:`mmrag.progress`), bars on
a terminal, a line every ``ops.progress_log_s`` otherwise; the summary has per-stage seconds, items and rates, batches and the longest gap between
commits (``commit_gap_max_s``, the measured loss bound).

Within a batch, rows are written in dependency order (image bytes, chunks, images, then the
``documents`` rows), so a document is never marked indexed without its chunks.

Re-indexing is incremental (:mod:`mmrag.pipelines.incremental`): unchanged pages skip parse, images and
embed; new chunks reuse the stored vector of identical text; pages that are gone (404/410, or no
longer listed by their sitemap/feed/list/folder) are retired by ``ops.gone_policy``. A run holds the
database's write lock (:mod:`mmrag.pipelines.guard`); ``ops.task_runner`` picks threads or Dask.

Images: with an embedder that embeds images (``clip``, ``blip2``), every image that decoded is
embedded from its pixels (``vector_source = "pixels"``; BLIP-2 rows also keep all 32 query vectors
in ``vector_multi``); images without bytes (failed fetch or decode, ``images.fetch`` off) get a
vector of their text surrogate in the same space (``"text_surrogate"``). Text-only embedders embed
every image through its surrogate. Pixel vectors are reused by image content (sha256), surrogate
vectors by surrogate hash. With ``images.ocr`` on, the text printed in each decoded image is read
once per distinct image (reused from ``ocr_results`` under the same engine key, else from any stored
image row with the same sha256), stored in ``ocr_text`` and appended to the surrogate. With ``images.caption_missing`` on, a vision LLM captions each decoded
image that has no caption, once per distinct image, model and prompt (reused from the
``image_captions`` table); the caption is stored there with its provenance and in the row's
``generated_caption`` (the row's ``caption`` stays the page's own, empty), and added to the surrogate
as "Generated caption: …". A backend that cannot caption stops the stage for the run, not the run.
The embedding tasks are in :mod:`mmrag.flows.embedding`, the OCR and caption stages in :mod:`mmrag.flows.image_text`.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from mmrag.flows.embedding import PIXELS, ImageVectors, image_vectors, vectors_for
from mmrag.flows.enrich import enrich_pending_ocr
from mmrag.flows.image_text import (CaptionState, CoreSharingEmbedder, OcrState, caption_missing_images, collect_image_text,
                                    start_captioning, start_ocr, submit_image_text)
from mmrag.config import MmragConfig
from mmrag.progress import Progress, quiet_libraries
from mmrag.records import Chunk, FetchResult, ParsedDocument, sha256_hex
from mmrag.pipelines import generate, guard, incremental, rows, store
from mmrag.pipelines.chunk import chunk_document
from mmrag.pipelines.embed import Embedder, LazyEmbedder, load_now
from mmrag.pipelines.embedder_base import iter_batches
from mmrag.pipelines.fetch import Fetcher
from mmrag.pipelines.images import inspect_image
from mmrag.pipelines.parse import parse_html
from mmrag.pipelines.rawstore import RawStore
from mmrag.pipelines.sources import PageTarget, expand_sources
from mmrag.pipelines.summary import (BatchRecord, ChunkCounts, ImageOutcome, ImageWriteCounts, IndexSummary, PageOutcome,
                                     RetiredDocuments)
from mmrag.pipelines import maintenance
from mmrag.flows.shared import SharedHandle

FETCH_OK = {"ok", "not_modified"}


@dataclass
class ParsedPage:
    """A page after parsing and chunking (or the reason it yields nothing)."""

    target: PageTarget
    fetch: FetchResult
    doc: ParsedDocument | None
    chunks: list[Chunk] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None


def new_run_id() -> str:
    """A sortable unique id for one run: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# -- tasks: network I/O ---------------------------------------------------------------------


@task(name="expand-sources", cache_policy=NO_CACHE)
def expand_sources_task(sources: list[str], fetcher: Fetcher):
    """Turn CLI sources (URLs, sitemaps, feeds, URL lists, files, folders) into page targets."""
    return expand_sources(sources, fetcher)


@task(name="fetch-page", task_run_name="fetch-page {target.url}", cache_policy=NO_CACHE)
def fetch_page(target: PageTarget, fetcher: Fetcher) -> FetchResult:
    """Fetch one page (HTTP with retries inside the fetcher, or a local file read)."""
    if target.local_path:
        return fetcher.fetch_local(target.local_path)
    return fetcher.fetch(target.url, kind="page")


@task(name="fetch-pages", task_run_name="fetch-pages {targets[0].url} +{extra}", cache_policy=NO_CACHE)
def fetch_pages(targets: list[PageTarget], fetcher: Fetcher, workers: int, extra: int = 0) -> list[FetchResult]:
    """Fetch a group of pages on ``workers`` threads (the fetcher's global and per-host limits still hold).

    One task per group rather than per page: a Prefect task run costs about as much CPU as a conditional
    GET, so an incremental re-index of unchanged pages would be bound by task overhead.
    """
    if len(targets) == 1 or workers <= 1:
        return [fetch_page.fn(t, fetcher) for t in targets]
    with ThreadPoolExecutor(max_workers=min(workers, len(targets))) as pool:
        return list(pool.map(lambda t: fetch_page.fn(t, fetcher), targets))


@task(name="fetch-images", task_run_name="fetch-images {pages[0].target.url} +{extra}", cache_policy=NO_CACHE)
def fetch_images_of_pages(pages: list[ParsedPage], fetcher: Fetcher, config: MmragConfig, workers: int,
                          extra: int = 0) -> list[rows.ImageOccurrence]:
    """Fetch and verify the images of a group of parsed pages, pages on ``workers`` threads (the fetcher's global
    and per-host limits still hold); occurrences in page order. One task per group, as for pages."""
    def of(page: ParsedPage) -> list[rows.ImageOccurrence]:
        return fetch_images(page.doc, bool(page.target.local_path), fetcher, config)

    if len(pages) == 1 or workers <= 1:
        return [occ for page in pages for occ in of(page)]
    with ThreadPoolExecutor(max_workers=min(workers, len(pages))) as pool:
        return [occ for found in pool.map(of, pages) for occ in found]


def fetch_images(doc: ParsedDocument, local_page: bool, fetcher: Fetcher, config: MmragConfig) -> list[rows.ImageOccurrence]:
    """Fetch and verify every image of one page; each distinct source is fetched once."""
    outcomes: dict[str, tuple] = {}
    occurrences = []
    for ref in doc.images:
        if ref.src not in outcomes:
            outcomes[ref.src] = _fetch_and_inspect(ref.src, local_page, fetcher, config)
        status, http_status, error, info, data = outcomes[ref.src]
        occurrences.append(
            rows.ImageOccurrence(
                doc_url=doc.url, article_title=doc.title, ref=ref, status=status,
                http_status=http_status, error=error, info=info, data=data, published=doc.published,
                nearby_text=ref.context if config.images.surrogate_context == "nearby" else "",
            )
        )
    return occurrences


def _fetch_and_inspect(src: str, local_page: bool, fetcher: Fetcher, config: MmragConfig):
    if not config.images.fetch:
        return "not_fetched", None, None, None, None
    scheme = urlparse(src).scheme
    if scheme == "data":
        result = _decode_data_uri(src)
    elif scheme == "file":
        if not local_page:
            return "refused", None, "file: image referenced by a remote page", None, None
        result = fetcher.fetch_local(unquote(urlparse(src).path), kind="image")
    elif scheme in ("http", "https"):
        result = fetcher.fetch(src, kind="image")
    else:
        return "invalid_url", None, f"unsupported image URL scheme {scheme!r}", None, None
    if result.status not in FETCH_OK or result.body is None:
        return result.status, result.http_status, result.error, None, None
    info = inspect_image(
        result.body, config.images, max_bytes=config.fetch.max_image_bytes,
        content_type=result.content_type, source_hint=src,
    )
    data = result.body if info.status == "ok" else None
    return info.status, result.http_status, info.error, info, data


def _decode_data_uri(src: str) -> FetchResult:
    header, _, payload = src.partition(",")
    try:
        body = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote(payload).encode()
    except (binascii.Error, ValueError) as exc:
        return FetchResult(url=src[:64], final_url=src[:64], status="corrupt", error=f"bad data: URI: {exc}")
    content_type = header[5:].split(";")[0] or None
    return FetchResult(url=src[:64], final_url=src[:64], status="ok", body=body, body_sha256=sha256_hex(body),
                       content_type=content_type, fetched_at=datetime.now(timezone.utc))


# -- tasks: pure and compute -----------------------------------------------------------------


@task(name="parse-pages", task_run_name="parse-pages {items[0][0].url} +{extra}", cache_policy=NO_CACHE)
def parse_pages(items: list[tuple[PageTarget, FetchResult]], embedder: Embedder, config: MmragConfig,
                extra: int = 0) -> list[ParsedPage]:
    """Parse and chunk a group of fetched pages one after the other: pure Python work, which threads would only
    take turns at (the GIL); one task run per group costs the flow and Prefect's server far less than one per page."""
    return [parse_page(target, result, embedder, config) for target, result in items]


def parse_page(target: PageTarget, result: FetchResult, embedder: Embedder, config: MmragConfig) -> ParsedPage:
    """Parse one fetched page into a document and chunks (pure work, no I/O)."""
    if result.status not in FETCH_OK or result.body is None:
        return ParsedPage(target, result, None, status=result.status, error=result.error)
    url = target.url
    try:
        doc = parse_html(result.body, url, result.content_type)
    except Exception as exc:  # a parser bug must cost one page, not the run
        return ParsedPage(target, result, None, status="parse_error", error=f"{type(exc).__name__}: {exc}")
    if not doc.blocks and not doc.images:
        return ParsedPage(target, result, None, status="empty", error="no article text or images found")
    chunks = chunk_document(doc, config.chunking, count_tokens=embedder.count_tokens, max_tokens=embedder.max_input_tokens)
    return ParsedPage(target, result, doc, chunks)


# -- the flow ------------------------------------------------------------------------------


@flow(name="index", log_prints=False, validate_parameters=False)
def index_flow(sources: list[str], config: MmragConfig | dict | None = None, run_id: str | None = None) -> dict:
    """Index ``sources`` into the LanceDB database of ``config.store.db_uri``; returns the summary dict.

    ``config`` may be a plain dict (deployment parameters) or None (defaults and ``MMRAG_*`` variables).
    The run holds the database's write lock (:mod:`mmrag.pipelines.guard`) from start to end; disk-full and
    permission failures end it with a one-line :class:`~mmrag.pipelines.guard.StoreWriteError`.
    """
    if not isinstance(config, MmragConfig):
        config = MmragConfig.model_validate(config or {})
    run_id = run_id or new_run_id()
    with guard.write_errors(config.store.db_uri):
        with guard.write_lock(config.store.db_uri, config.ops.lock_timeout_s):
            return _index_run(list(sources), config, run_id)


def _index_run(sources: list[str], config: MmragConfig, run_id: str) -> dict:
    logger = get_run_logger()
    started = datetime.now(timezone.utc)
    summary = IndexSummary(run_id=run_id, sources=list(sources), db_uri=config.store.db_uri,
                           embedder=config.embed.name, chunking=config.chunking.key())
    progress = Progress(enabled=config.progress, log_every_s=config.ops.progress_log_s)
    index_store = store.IndexStore(config.store.db_uri)
    # Built on first use: a re-index in which no page changed parses and embeds nothing, and loads no model.
    embedder = LazyEmbedder(config.embed, load_timer=lambda: summary.timed("load_embedder"))
    chunk_table = store.chunks_table_name(embedder.name, config.chunking.key())
    image_table = store.images_table_name(embedder.name)
    ocr = start_ocr(config, summary, index_store)
    captioning = start_captioning(config, summary)

    with Fetcher(config.fetch, RawStore(config.store.raw_dir)) as real_fetcher:
        fetcher, shared_embedder, handles = _task_arguments(config, real_fetcher, embedder, ocr)
        run = _IndexRun(run_id, config, index_store, fetcher, shared_embedder, chunk_table, image_table, summary,
                        progress, ocr, captioning)
        try:
            with summary.timed("sources"):
                targets, source_errors = expand_sources_task(list(sources), fetcher)
            for err in source_errors:
                summary.add_failure("source", err.source, "source_error", err.message)
            summary.pages_total = len(targets)
            logger.info("index run %s: %d pages from %d sources in batches of at most %d pages, about %.0f s each "
                        "(task runner %s)", run_id, len(targets), len(sources), config.page_batch,
                        config.ops.batch_target_s, config.ops.task_runner)
            pages_bar = progress.bar("pages", total=len(targets))
            sizer = BatchSizer(config.page_batch, config.ops.batch_target_s)
            # Two batches in flight: batch N+1 is fetched, parsed and its images sent to OCR (other processes)
            # while batch N waits for its OCR, embeds and commits; the OCR workers never wait for the main thread.
            prepared: _Prepared | None = None
            start, last_commit = 0, time.monotonic()
            while start < len(targets) or prepared is not None:
                following = None
                if start < len(targets):
                    batch = targets[start : start + sizer.next_size()]
                    start += len(batch)
                    following = _prepare_batch(batch, run)
                if prepared is not None:
                    before = dict(summary.stage_seconds), summary.to_dict()
                    _finish_batch(prepared, run)
                    now = time.monotonic()
                    summary.batches += 1
                    summary.commit_gap_max_s = round(max(summary.commit_gap_max_s, now - last_commit), 3)
                    last_commit = now
                    sizer.done(len(prepared.batch))
                    logger.info("batch %d (%d pages): %s", summary.batches, len(prepared.batch),
                                _batch_report(before, summary))
                    pages_bar.advance(len(prepared.batch))
                prepared = following
            pages_bar.close()
            summary.pages_committed_s = round((datetime.now(timezone.utc) - started).total_seconds(), 3)
            # Rows committed before their OCR (images.ocr_deferred, this run or one that stopped early).
            enrich_pending_ocr(index_store, image_table, shared_embedder, ocr, config, summary, progress, run_id)
            _retire_dropped(sources, targets, source_errors, run)
        finally:
            ocr.close(cancel=True)  # on any exit (SIGTERM too): keep every OCR result that arrived
            progress.stop()  # on any exit too: a failed run leaves no ticker writing lines afterwards
            for handle in handles:
                handle.release()
    summary.ocr_seconds = round(ocr.seconds, 3)
    if ocr.enabled:
        summary.ocr_pending_left = index_store.ocr_pending_count(image_table)
    if ocr.busy_s:  # the OCR stage's rate: images read per second of the time the workers were busy
        summary.stage_items["ocr"] = summary.ocr_images
        summary.stage_rate["ocr"] = round(ocr.read / ocr.busy_s, 2)

    with summary.timed("fts_index"):  # hybrid search reads it; built here so queries never modify a table
        for name in (chunk_table, image_table):
            if index_store.has_table(name):
                maintenance.ensure_text_index(index_store, name)
    if config.ops.maintain_after_index:
        with summary.timed("maintenance"):
            summary.maintenance = maintenance.run_maintenance(index_store, config.ops)
        logger.info("maintenance: %s", summary.maintenance)
    written = [t for t in (store.DOCUMENTS, chunk_table, image_table, store.IMAGE_BLOBS, store.IMAGE_CAPTIONS)
               if index_store.has_table(t)]
    summary.tables = index_store.tag_versions(f"index-{run_id}", written)
    summary.elapsed_s = round((datetime.now(timezone.utc) - started).total_seconds(), 3)
    index_store.record_run(
        {"run_id": run_id, "kind": "index", "started_at": started, "finished_at": datetime.now(timezone.utc),
         "sources": sources, "config": config.model_dump(mode="json"), "summary": summary.to_dict(),
         "table_versions": summary.tables}
    )
    logger.info("%s", summary.to_text())
    create_markdown_artifact(key="index-summary", markdown=summary.to_markdown(), description=f"index run {run_id}")
    return summary.to_dict()


def _task_arguments(config: MmragConfig, fetcher: Fetcher, embedder: Embedder, ocr: OcrState):
    """The fetcher and embedder as tasks get them: on threads, the fetcher and the embedder sharing the cores with
    the OCR workers batch by batch (:class:`CoreSharingEmbedder`); picklable handles on Dask."""
    if config.ops.task_runner != "dask":
        return fetcher, CoreSharingEmbedder(embedder, config, ocr), []

    handles = [SharedHandle("fetcher", config, fetcher), SharedHandle("embedder", config, embedder)]
    return handles[0], handles[1], handles


_REPORTED = ("pages_ok", "pages_failed", "documents_added", "documents_updated", "documents_unchanged",
             "documents_deleted", "chunks_embedded", "chunks_vectors_reused", "chunks_deleted", "images_embedded")


def _batch_report(before: tuple[dict, dict], summary: IndexSummary) -> str:
    """One log line: what this batch changed and how long each stage took."""
    seconds_before, counts_before = before
    now = summary.to_dict()
    counts = ", ".join(f"{key} {now[key] - counts_before[key]}" for key in _REPORTED)
    times = ", ".join(f"{stage} {summary.stage_seconds[stage] - seconds_before.get(stage, 0.0):.2f}s"
                      for stage in summary.stage_seconds if stage not in ("load_embedder", "sources"))
    return f"{counts}; {times}"


@dataclass
class _IndexRun:
    """What every batch of one index run shares: its id and config, the store and tables it writes, the fetcher
    and embedder as tasks get them (picklable handles on Dask), the OCR and caption stages, and its records."""

    run_id: str
    config: MmragConfig
    index_store: store.IndexStore
    fetcher: Fetcher
    embedder: Embedder
    chunk_table: str
    image_table: str
    summary: IndexSummary
    progress: Progress
    ocr: OcrState
    captioning: CaptionState


@dataclass
class _Prepared:
    """A page batch fetched, parsed, its images fetched and sent to OCR: what :func:`_finish_batch` needs."""

    batch: Sequence[PageTarget]
    now: datetime
    previous_docs: dict
    stored_chunks: dict
    stored_images: dict
    unchanged: list
    gone: list
    pages: list[ParsedPage]
    good: list[ParsedPage]
    occurrences: list[rows.ImageOccurrence]

    @property
    def good_urls(self) -> set[str]:
        """URLs of the batch's pages that parsed (their stored rows are diffed against the new ones)."""
        return {p.target.url for p in self.good}


class BatchSizer:
    """Pages per batch so that one batch takes about ``target_s`` (between 1 and ``max_pages``): the first batch
    is one page, then the size follows the wall time per page of the last batch committed (the first batch
    also paid for loading the model and starting the OCR workers). Committing a batch every ``target_s``
    bounds what a killed run loses."""

    def __init__(self, max_pages: int, target_s: float):
        self.max_pages, self.target_s = max_pages, target_s
        self.started = self.last = time.monotonic()
        self.pages_done = 0
        self.per_page: float | None = None

    def next_size(self) -> int:
        """Pages in the next batch."""
        if not self.pages_done:
            return 1
        per_page = self.per_page or max(time.monotonic() - self.started, 1e-6) / self.pages_done
        return max(1, min(self.max_pages, round(self.target_s / max(per_page, 1e-6))))

    def done(self, pages: int) -> None:
        """``pages`` more pages committed."""
        now = time.monotonic()
        if self.pages_done:  # not the first batch: its time is representative
            self.per_page = max(now - self.last, 1e-6) / max(pages, 1)
        self.pages_done += pages
        self.last = now


def _prepare_batch(batch: Sequence[PageTarget], run: _IndexRun) -> _Prepared:
    """Fetch and parse one batch, fetch its images and start their OCR (which runs on while this returns)."""
    config, summary, index_store, fetcher, embedder = run.config, run.summary, run.index_store, run.fetcher, run.embedder
    chunk_table, image_table, ocr = run.chunk_table, run.image_table, run.ocr
    now = datetime.now(timezone.utc)
    with summary.timed("fetch"):
        # Threads: one task for the batch (a task run costs CPU here and in Prefect's server; the fetcher's
        # limits hold either way). Dask: groups of ops.fetch_task_pages, the unit spread over workers.
        # Parse and image fetches are grouped the same way.
        size = config.ops.fetch_task_pages if config.ops.task_runner == "dask" else max(len(batch), 1)
        futures = [fetch_pages.submit(g, fetcher, config.fetch.concurrency, len(g) - 1) for g in iter_batches(batch, size)]
        fetched = [r for f in futures for r in f.result()]
    summary.count_stage("fetch", len(batch))
    urls = [t.url for t in batch]
    previous_docs = index_store.document_rows(urls)
    stored_chunks = index_store.ids_by_doc(chunk_table, urls, extra=["content_hash", "published"])
    stored_images = index_store.ids_by_doc(image_table, urls, extra=["surrogate_hash", "status", "src_url", "error", "published", "ocr_text"])

    # Incremental: unchanged pages skip parse, images and embed; gone pages are retired by policy.
    skip_unchanged = config.ops.incremental and not getattr(config.fetch, "reparse_from_raw", False)
    unchanged, gone, to_parse = [], [], []
    for target, result in zip(batch, fetched):
        previous = previous_docs.get(target.url)
        if skip_unchanged and incremental.is_unchanged(result, previous, len(stored_chunks.get(target.url, {})),
                                                       len(stored_images.get(target.url, {}))):
            unchanged.append((target, result))
        elif config.ops.gone_policy != "keep" and incremental.is_gone(result, previous):
            gone.append((target, result))
        else:
            to_parse.append((target, result))

    if to_parse:
        load_now(embedder)  # a lazy embedder loads here, timed as its own stage, not inside the first parse task
    with summary.timed("parse_chunk"):
        futures = [parse_pages.submit(g, embedder, config, len(g) - 1) for g in iter_batches(to_parse, size)]
        pages: list[ParsedPage] = [page for f in futures for page in f.result()]
    summary.count_stage("parse_chunk", len(to_parse))
    good = [p for p in pages if p.doc is not None]
    with summary.timed("images"):
        futures = [fetch_images_of_pages.submit(g, fetcher, config, config.fetch.concurrency, len(g) - 1)
                   for g in iter_batches(good, size)]
        occurrences = [occ for f in futures for occ in f.result()]
    summary.count_stage("images", len(occurrences))
    if ocr.enabled:
        with summary.timed("ocr"):
            submit_image_text(occurrences, ocr, index_store, summary, run.progress, read_new=not config.images.ocr_deferred)
    return _Prepared(batch, now, previous_docs, stored_chunks, stored_images, unchanged, gone, pages, good, occurrences)


@dataclass
class _EmbeddedChunks:
    """The chunk stage of a batch: the plan against the stored rows and the vectors of its new chunks."""

    chunks: list[Chunk]
    plan: incremental.ChunkPlan
    vectors: object
    reused: int


@dataclass
class _EmbeddedImages:
    """The image stage of a batch: occurrences with their OCR text and captions, the plan, the new vectors."""

    occurrences: list[rows.ImageOccurrence]
    plan: incremental.ImagePlan
    vectors: ImageVectors


def _embed_chunks(prepared: _Prepared, run: _IndexRun) -> _EmbeddedChunks:
    """Plan the batch's chunks against the stored rows and embed the new ones (stored vectors of the same text reused)."""
    summary = run.summary
    chunks, good_urls = [c for p in prepared.good for c in p.chunks], prepared.good_urls
    plan = incremental.plan_chunks(chunks, {u: rows_ for u, rows_ in prepared.stored_chunks.items() if u in good_urls})
    with summary.timed("embed"):
        vectors, reused = vectors_for([c.content_hash for c in plan.new], [c.search_text for c in plan.new], run.chunk_table,
                                      "content_hash", run.embedder, run.index_store, run.config, run.progress, "embed chunks")
    summary.count_stage("embed", len(plan.new) - reused)
    return _EmbeddedChunks(chunks, plan, vectors, reused)


def _embed_images(prepared: _Prepared, run: _IndexRun) -> _EmbeddedImages:
    """Collect the batch's OCR text, caption what lacks a caption, then embed the images whose row changes.

    A vector is reused when the bytes (pixel vectors) or the surrogate (surrogate vectors) are unchanged.
    """
    summary, occurrences = run.summary, prepared.occurrences
    if run.ocr.enabled:
        with summary.timed("ocr"):
            occurrences = collect_image_text(occurrences, run.ocr, summary)
    if run.captioning.enabled:
        with summary.timed("captions"):
            occurrences = caption_missing_images(occurrences, run.captioning, run.index_store, run.config, summary,
                                                 run.progress)
    good_urls = prepared.good_urls
    stored = {iid: row for u, rows_ in prepared.stored_images.items() if u in good_urls for iid, row in rows_.items()}
    plan = incremental.plan_images(occurrences, stored)
    summary.ocr_pending_written += sum(o.ocr_pending for o in plan.changed)
    with summary.timed("embed"):
        vectors = image_vectors(plan.changed, run.embedder, run.index_store, run.image_table, run.config, summary,
                                run.progress)
    summary.count_stage("embed", len(plan.changed) - vectors.reused)
    return _EmbeddedImages(occurrences, plan, vectors)


@task(name="write-batch", task_run_name="write-batch {count} pages", cache_policy=NO_CACHE)
def write_batch(prepared: _Prepared, chunks: _EmbeddedChunks, images: _EmbeddedImages, index_store: store.IndexStore,
                chunk_table: str, image_table: str, config: MmragConfig, embedder_name: str, run_id: str,
                count: int = 0) -> tuple[int, int, RetiredDocuments]:
    """Commit a batch in dependency order (image bytes, chunks, images, then the ``documents`` rows that vouch for
    them), retire its gone pages; returns (new image blobs, rows written, documents retired)."""
    changed_images, image_plan = images.plan.changed, images.plan
    blobs = rows.image_blobs_table(changed_images)
    blob_keys = blobs.column("sha256").to_pylist()
    new_blob_keys = set(blob_keys) - index_store.existing_keys(store.IMAGE_BLOBS, "sha256", blob_keys)
    index_store.upsert(store.IMAGE_BLOBS, blobs, key="sha256", update=False)
    if chunks.plan.new:
        index_store.upsert(chunk_table, rows.chunks_table(chunks.plan.new, chunks.vectors, embedder=embedder_name, run_id=run_id))
    if changed_images:
        vectors = images.vectors
        index_store.upsert(image_table, rows.images_table(
            changed_images, vectors.vectors, embedder=embedder_name, vector_source=vectors.sources, run_id=run_id,
            multivectors=vectors.multivectors))
    # Kept rows of a re-parsed page are not rewritten: bring their copy of the page's date up to date.
    dates = {p.target.url: rows.published_value(p.doc.published) for p in prepared.good}
    for table_name, stored in ((chunk_table, prepared.stored_chunks), (image_table, prepared.stored_images)):
        index_store.set_where_in(table_name, "published", incremental.redated_documents(dates, stored),
                                 field=store.documents_schema().field("published"))
    index_store.delete_where_in(chunk_table, "id", chunks.plan.stale)
    index_store.delete_where_in(image_table, "id", image_plan.stale)
    doc_rows = []
    for page in prepared.pages:
        url = page.target.url
        doc_rows.append(rows.document_row(
            url=url, origin=page.target.origin, fetch=page.fetch, status=page.status, doc=page.doc,
            n_chunks=len(page.chunks), n_images=sum(1 for o in images.occurrences if o.doc_url == url), run_id=run_id,
            indexed_at=prepared.now, previous=prepared.previous_docs.get(url), error=page.error,
        ))
    doc_rows += incremental.refreshed_document_rows(prepared.unchanged, prepared.previous_docs, run_id=run_id)
    index_store.upsert(store.DOCUMENTS, rows.documents_table(doc_rows))
    gone = prepared.gone
    leftovers = {t.url for t, _ in gone if prepared.stored_chunks.get(t.url) or prepared.stored_images.get(t.url)}
    retired = _retire([t.url for t, _ in gone], prepared.previous_docs, {t.url: r for t, r in gone}, index_store,
                      chunk_table, image_table, config, run_id, leftovers=leftovers)
    return len(new_blob_keys), len(chunks.plan.new) + len(changed_images) + len(doc_rows), retired


def batch_record(prepared: _Prepared, chunks: _EmbeddedChunks, images: _EmbeddedImages, blobs_new: int,
                 retired: RetiredDocuments) -> BatchRecord:
    """What a committed batch contributes to the summary, from its stage records."""
    pages = []
    for page in prepared.pages:
        previous = prepared.previous_docs.get(page.target.url)
        change = None
        if page.doc is not None:
            if previous is None or previous.get("status") != "ok" or not previous.get("content_hash"):
                change = "added"
            elif previous.get("content_hash") == page.fetch.body_sha256:
                change = "unchanged"  # re-parsed (reparse or a new chunking) but the same content
            else:
                change = "updated"
        pages.append(PageOutcome(page.target.url, page.status, change, page.fetch.status == "not_modified", page.error))
    kept_images = []
    for target, result in prepared.unchanged:
        n_chunks = prepared.previous_docs[target.url].get("n_chunks") or 0
        pages.append(PageOutcome(target.url, "ok", "unchanged", result.status == "not_modified", chunks_kept=n_chunks))
        kept_images += [ImageOutcome(image["src_url"], image["status"], "unchanged", image["error"])
                        for image in prepared.stored_images.get(target.url, {}).values()]
    plan = chunks.plan
    return BatchRecord(
        pages=tuple(pages),
        images=tuple(kept_images) + tuple(ImageOutcome(o.ref.src, o.status, change, o.error)
                                          for o, change in zip(images.occurrences, images.plan.change)),
        chunks=ChunkCounts(total=len(chunks.chunks), added=plan.added, updated=plan.updated, unchanged=plan.unchanged,
                           deleted=plan.deleted, vectors_reused=chunks.reused, truncated=sum(c.truncated for c in chunks.chunks)),
        image_writes=ImageWriteCounts(deleted=len(images.plan.stale), vectors_reused=images.vectors.reused,
                                      pixel_vectors=images.vectors.sources.count(PIXELS), blobs_new=blobs_new),
        retired=retired,
    )


def _finish_batch(prepared: _Prepared, run: _IndexRun) -> None:
    """Embed the batch's chunks (while the OCR workers read its images), collect OCR text and captions, embed the
    changed images, commit, and fold the stage records into the summary."""
    chunks = _embed_chunks(prepared, run)
    images = _embed_images(prepared, run)
    summary = run.summary
    with summary.timed("write"):
        blobs_new, written, retired = write_batch(prepared, chunks, images, run.index_store, run.chunk_table,
                                                  run.image_table, run.config, run.embedder.name, run.run_id,
                                                  count=len(prepared.pages))
    summary.count_stage("write", written)
    summary.add_batch(batch_record(prepared, chunks, images, blobs_new, retired))


def _retire(urls: list[str], previous_docs: dict, fetches: dict, index_store: store.IndexStore, chunk_table: str,
            image_table: str, config: MmragConfig, run_id: str, leftovers: set[str] | None = None) -> RetiredDocuments:
    """Apply ``ops.gone_policy`` to ``urls`` (known documents that are gone); returns what was removed.

    The tombstone is written first and the content deleted after it, so a crash in between leaves a
    ``gone`` document with leftover rows that the next run deletes, never an ``ok`` document without them.
    Documents already ``gone`` only get their tombstone refreshed (and ``leftovers`` deleted).
    """
    if not urls or config.ops.gone_policy == "keep":
        return RetiredDocuments()
    newly_gone = [u for u in urls if previous_docs[u].get("status") != "gone"]
    tombstones = []
    for url in urls:
        fetch = fetches.get(url)
        reason = (fetch.error or fetch.status) if fetch else "no longer listed by its source"
        tombstones.append(incremental.tombstone_row(previous_docs[url], run_id=run_id, error=f"gone: {reason}", fetch=fetch))
    index_store.upsert(store.DOCUMENTS, rows.documents_table(tombstones))
    deleted = index_store.delete_document_content(sorted(set(newly_gone) | (leftovers or set()) & set(urls)))
    if config.ops.gone_policy == "delete":
        index_store.delete_where_in(store.DOCUMENTS, "url", urls)
    return RetiredDocuments(urls=tuple(newly_gone), still_gone=len(urls) - len(newly_gone),
                            chunks=deleted.get(chunk_table, 0), images=deleted.get(image_table, 0))


def _retire_dropped(sources: Sequence[str], targets: Sequence[PageTarget], source_errors: Sequence, run: _IndexRun) -> None:
    """Retire documents that a source listed last time and no longer lists (complete sources only)."""
    config, index_store, summary = run.config, run.index_store, run.summary
    if config.ops.gone_policy == "keep":
        return
    failed = {err.source for err in source_errors}
    listed = {t.origin for t in targets}
    complete = [s for s in sources if s not in failed and s in listed]
    dropped = incremental.dropped_urls(index_store.documents_by_origin(complete), (t.url for t in targets), complete)
    if dropped:
        with summary.timed("write"):
            retired = _retire(dropped, index_store.document_rows(dropped), {}, index_store, run.chunk_table,
                              run.image_table, config, run.run_id)
        summary.add_batch(BatchRecord(retired=retired))
        get_run_logger().info("retired %d documents no longer listed by their sources (%s)", len(dropped),
                              config.ops.gone_policy)


def build_task_runner(config: MmragConfig):
    """The task runner of ``ops.task_runner``: a thread pool sized by ``fetch.concurrency``, or Dask.

    Dask uses the scheduler at ``ops.dask_address`` when set, else a local cluster of
    ``ops.dask_workers`` workers (threads unless ``ops.dask_processes``).
    """
    if config.ops.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.ops.dask_address:
            return DaskTaskRunner(address=config.ops.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.ops.dask_workers, "processes": config.ops.dask_processes,
                                              "threads_per_worker": max(1, config.fetch.concurrency // config.ops.dask_workers),
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=config.fetch.concurrency)


def run_index(sources: Sequence[str], config: MmragConfig) -> IndexSummary:
    """Run the ``index`` flow with the task runner of ``config.ops`` (threads by default); returns the summary.

    Prefect's per-task INFO lines and libraries' chatter stay off the terminal unless ``ops.verbose``
    (:func:`mmrag.progress.quiet_libraries`); Prefect still records every task run.
    """
    quiet_libraries(config.ops.verbose)
    result = index_flow.with_options(task_runner=build_task_runner(config))(sources=list(sources), config=config)
    return IndexSummary(**result)
