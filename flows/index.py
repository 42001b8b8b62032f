"""The ``index`` Prefect flow: sources -> fetch -> parse/chunk -> images -> embed -> LanceDB.

Network I/O (page and image fetches) runs in its own tasks, apart from pure parsing, so each can be
retried, cached or distributed on its own. Pages are processed in batches (``config.page_batch``):
each batch is fetched, parsed, embedded and written before the next starts, so memory is bounded by
the batch size and an interrupted run keeps every batch it committed.

Within a batch, rows are written in dependency order (image bytes, chunks, images, then the
``documents`` rows), so a document is never marked indexed without its chunks.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from mmrag.config import MmragConfig
from mmrag.progress import Progress
from mmrag.records import Chunk, FetchResult, ParsedDocument, sha256_hex
from pipelines import rows, store
from pipelines.chunk import chunk_document
from pipelines.embed import Embedder, create_embedder, embed_in_batches
from pipelines.fetch import Fetcher
from pipelines.images import inspect_image
from pipelines.parse import parse_html
from pipelines.rawstore import RawStore
from pipelines.sources import PageTarget, expand_sources
from pipelines.summary import IndexSummary

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


@task(name="fetch-images", task_run_name="fetch-images {doc.url}", cache_policy=NO_CACHE)
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
                http_status=http_status, error=error, info=info, data=data,
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


@task(name="parse-page", task_run_name="parse-page {target.url}", cache_policy=NO_CACHE)
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


@task(name="embed-texts", cache_policy=NO_CACHE)
def embed_texts(texts: list[str], embedder: Embedder, batch_size: int, progress: Progress, label: str) -> np.ndarray:
    """Embed texts in batches, advancing the progress bar per batch."""
    bar = progress.bar(label, total=len(texts))
    vectors = embed_in_batches(texts, embedder.embed_texts, batch_size=batch_size, dimension=embedder.dimension,
                               on_batch=bar.advance)
    bar.close()
    return vectors


# -- the flow ------------------------------------------------------------------------------


@flow(name="index", log_prints=False, validate_parameters=False)
def index_flow(sources: list[str], config: MmragConfig, run_id: str | None = None) -> dict:
    """Index ``sources`` into the LanceDB database of ``config.store.db_uri``; returns the summary dict."""
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    started = datetime.now(timezone.utc)
    summary = IndexSummary(run_id=run_id, sources=list(sources), db_uri=config.store.db_uri,
                           embedder=config.embed.name, chunking=config.chunking.key())
    progress = Progress(enabled=config.progress)
    index_store = store.IndexStore(config.store.db_uri)
    with summary.timed("load_embedder"):
        embedder = create_embedder(config.embed)
    chunk_table = store.chunks_table_name(embedder.name, config.chunking.key())
    image_table = store.images_table_name(embedder.name)

    with Fetcher(config.fetch, RawStore(config.store.raw_dir)) as fetcher:
        with summary.timed("sources"):
            targets, source_errors = expand_sources_task(list(sources), fetcher)
        for err in source_errors:
            summary.add_failure("source", err.source, "source_error", err.message)
        summary.pages_total = len(targets)
        logger.info("index run %s: %d pages from %d sources", run_id, len(targets), len(sources))
        pages_bar = progress.bar("pages", total=len(targets))
        for start in range(0, len(targets), config.page_batch):
            batch = targets[start : start + config.page_batch]
            _index_batch(batch, fetcher, embedder, index_store, chunk_table, image_table, config, summary, progress, run_id)
            pages_bar.advance(len(batch))
        pages_bar.close()
    progress.stop()

    written = [t for t in (store.DOCUMENTS, chunk_table, image_table, store.IMAGE_BLOBS) if index_store.has_table(t)]
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


def _index_batch(
    batch: Sequence[PageTarget],
    fetcher: Fetcher,
    embedder: Embedder,
    index_store: store.IndexStore,
    chunk_table: str,
    image_table: str,
    config: MmragConfig,
    summary: IndexSummary,
    progress: Progress,
    run_id: str,
) -> None:
    now = datetime.now(timezone.utc)
    with summary.timed("fetch"):
        fetched = [f.result() for f in [fetch_page.submit(t, fetcher) for t in batch]]
    with summary.timed("parse_chunk"):
        pages: list[ParsedPage] = [f.result() for f in [parse_page.submit(t, r, embedder, config) for t, r in zip(batch, fetched)]]
    good = [p for p in pages if p.doc is not None]
    with summary.timed("images"):
        image_futures = [fetch_images.submit(p.doc, bool(p.target.local_path), fetcher, config) for p in good]
        occurrences = [occ for f in image_futures for occ in f.result()]

    previous_docs = index_store.document_states(p.target.url for p in pages)
    good_urls = [p.target.url for p in good]

    # Chunks: embed only ids not stored yet; drop stored chunks a changed page no longer has.
    chunks = [c for p in good for c in p.chunks]
    stored_chunks = index_store.ids_by_doc(chunk_table, good_urls)
    stored_chunk_ids = {cid for ids in stored_chunks.values() for cid in ids}
    new_chunks = list({c.id: c for c in chunks if c.id not in stored_chunk_ids}.values())
    live_chunk_ids = {c.id for c in chunks}
    stale_chunk_ids = stored_chunk_ids - live_chunk_ids

    # Images: re-embed when the surrogate text or the bytes changed.
    stored_images = index_store.ids_by_doc(image_table, good_urls, extra=["surrogate_hash", "status"])
    stored_image_rows = {iid: row for rows_ in stored_images.values() for iid, row in rows_.items()}
    changed_images = list({
        o.id: o for o in occurrences
        if o.id not in stored_image_rows
        or stored_image_rows[o.id]["surrogate_hash"] != o.surrogate_hash
        or stored_image_rows[o.id]["status"] != o.status
    }.values())
    stale_image_ids = set(stored_image_rows) - {o.id for o in occurrences}

    with summary.timed("embed"):
        chunk_vectors = embed_texts([c.text for c in new_chunks], embedder, config.embed.batch_size, progress, "embed chunks")
        image_vectors = embed_texts([o.surrogate_text for o in changed_images], embedder, config.embed.batch_size, progress, "embed images")

    with summary.timed("write"):
        blobs = rows.image_blobs_table(changed_images)
        new_blob_keys = set(blobs.column("sha256").to_pylist()) - index_store.existing_keys(
            store.IMAGE_BLOBS, "sha256", blobs.column("sha256").to_pylist())
        index_store.upsert(store.IMAGE_BLOBS, blobs, key="sha256", update=False)
        if new_chunks:
            index_store.upsert(chunk_table, rows.chunks_table(new_chunks, chunk_vectors, embedder=embedder.name, run_id=run_id))
        if changed_images:
            index_store.upsert(image_table, rows.images_table(changed_images, image_vectors, embedder=embedder.name,
                                                              vector_source="text_surrogate", run_id=run_id))
        index_store.delete_where_in(chunk_table, "id", stale_chunk_ids)
        index_store.delete_where_in(image_table, "id", stale_image_ids)
        doc_rows = []
        for page in pages:
            url = page.target.url
            n_images = sum(1 for o in occurrences if o.doc_url == url)
            doc_rows.append(rows.document_row(
                url=url, origin=page.target.origin, fetch=page.fetch, status=page.status, doc=page.doc,
                n_chunks=len(page.chunks), n_images=n_images, run_id=run_id, indexed_at=now,
                previous=previous_docs.get(url), error=page.error,
            ))
        index_store.upsert(store.DOCUMENTS, rows.documents_table(doc_rows))

    # Tally.
    for page in pages:
        summary.count_page(page.status)
        if page.doc is None:
            summary.pages_failed += 1
            summary.add_failure("page", page.target.url, page.status, page.error)
        else:
            summary.pages_ok += 1
            summary.pages_not_modified += page.fetch.status == "not_modified"
    for occ in occurrences:
        summary.count_image(occ.status)
        if occ.status == "ok":
            summary.images_ok += 1
        else:
            summary.images_failed += 1
            summary.add_failure("image", occ.ref.src, occ.status, occ.error)
    summary.chunks_total += len(chunks)
    summary.chunks_embedded += len(new_chunks)
    summary.chunks_unchanged += len(chunks) - len(new_chunks)
    summary.chunks_deleted += len(stale_chunk_ids)
    summary.chunks_truncated += sum(c.truncated for c in chunks)
    summary.images_total += len(occurrences)
    summary.images_embedded += len(changed_images)
    summary.images_unchanged += len(occurrences) - len(changed_images)
    summary.images_deleted += len(stale_image_ids)
    summary.image_blobs_new += len(new_blob_keys)


def run_index(sources: Sequence[str], config: MmragConfig) -> IndexSummary:
    """Run the ``index`` flow with a thread pool sized by ``config.fetch.concurrency``; returns the summary."""
    runner = ThreadPoolTaskRunner(max_workers=config.fetch.concurrency)
    result = index_flow.with_options(task_runner=runner)(sources=list(sources), config=config)
    return IndexSummary(**result)

