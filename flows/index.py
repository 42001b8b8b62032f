"""The ``index`` Prefect flow: sources -> fetch -> parse/chunk -> images -> embed -> LanceDB.

Network I/O (page and image fetches) runs in its own tasks, apart from pure parsing, so each can be
retried, cached or distributed on its own. Pages are processed in batches (``config.page_batch``):
each batch is fetched, parsed, embedded and written before the next starts, so memory is bounded by
the batch size and an interrupted run keeps every batch it committed.

Within a batch, rows are written in dependency order (image bytes, chunks, images, then the
``documents`` rows), so a document is never marked indexed without its chunks.

Re-indexing is incremental (:mod:`pipelines.incremental`): unchanged pages skip parse, images and
embed; new chunks reuse the stored vector of identical text; pages that are gone (404/410, or no
longer listed by their sitemap/feed/list/folder) are retired by ``ops.gone_policy``. A run holds the
database's write lock (:mod:`pipelines.guard`); ``ops.task_runner`` picks threads or Dask.

Images: with an embedder that embeds images (``clip``, ``blip2``), every image that decoded is
embedded from its pixels (``vector_source = "pixels"``; BLIP-2 rows also keep all 32 query vectors
in ``vector_multi``); images without bytes (failed fetch or decode, ``images.fetch`` off) get a
vector of their text surrogate in the same space (``"text_surrogate"``). Text-only embedders embed
every image through its surrogate. Pixel vectors are reused by image content (sha256), surrogate
vectors by surrogate hash. With ``images.ocr`` on, the text printed in each decoded image is read
once per distinct image (reused from any stored row with the same sha256), stored in ``ocr_text``
and appended to the surrogate. With ``images.caption_missing`` on, a vision LLM captions each decoded
image that has no caption, once per distinct image, model and prompt (reused from the
``image_captions`` table); the caption is stored there with its provenance and in the row's
``generated_caption`` (the row's ``caption`` stays the page's own, empty), and added to the surrogate
as "Generated caption: …". A backend that cannot caption stops the stage for the run, not the run.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from mmrag.config import ImageConfig, LlmConfig, MmragConfig
from mmrag.progress import Progress
from mmrag.records import Chunk, FetchResult, ParsedDocument, sha256_hex
from pipelines import generate, guard, incremental, rows, store
from pipelines.chunk import chunk_document
from pipelines.embed import Embedder, LazyEmbedder, embed_in_batches, load_now
from pipelines.fetch import Fetcher
from pipelines.images import inspect_image
from pipelines.llm import make_backend
from pipelines.llm.base import ChatBackend, LlmError
from pipelines.ocr import OcrUnavailable, ocr_image, resolve_backend
from pipelines.parse import parse_html
from pipelines.rawstore import RawStore
from pipelines.sources import PageTarget, expand_sources
from pipelines.summary import IndexSummary

FETCH_OK = {"ok", "not_modified"}
PIXELS = "pixels"
TEXT_SURROGATE = "text_surrogate"


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

    One task per group rather than per page: a Prefect task run costs ~20 ms of CPU here, as much as
    a conditional GET, so an incremental re-index of unchanged pages would be bound by task overhead.
    """
    if len(targets) == 1 or workers <= 1:
        return [fetch_page.fn(t, fetcher) for t in targets]
    with ThreadPoolExecutor(max_workers=min(workers, len(targets))) as pool:
        return list(pool.map(lambda t: fetch_page.fn(t, fetcher), targets))


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
                http_status=http_status, error=error, info=info, data=data, published=doc.published,
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


@dataclass
class PixelVectors:
    """Image vectors embedded from pixels, in the order of the images given.

    ``multivectors``: every query vector of each image (BLIP-2), else None. ``errors``: index ->
    message of the images that could not be embedded (their rows of ``vectors`` are zeros).
    """

    vectors: np.ndarray
    multivectors: list[np.ndarray] | None = None
    errors: dict[int, str] = field(default_factory=dict)


def produces_multivectors(embedder) -> bool:
    """Whether ``embedder`` gives several vectors per image (``embed_image_bytes_multi``, e.g. BLIP-2's 32 queries)."""
    return callable(getattr(embedder, "embed_image_bytes_multi", None))


def _pixel_batch(blobs: Sequence[bytes], embedder, image_cfg: ImageConfig, on_batch=None) -> PixelVectors:
    if not produces_multivectors(embedder):
        return PixelVectors(embedder.embed_image_bytes(blobs, image_cfg, on_batch=on_batch))
    from pipelines.blip2_embedder import mean_pooled

    multi = embedder.embed_image_bytes_multi(blobs, image_cfg, on_batch=on_batch)
    return PixelVectors(mean_pooled(multi), list(multi))


@task(name="embed-images", cache_policy=NO_CACHE)
def embed_images(blobs: list[bytes], embedder: Embedder, image_cfg: ImageConfig, progress: Progress, label: str) -> PixelVectors:
    """Embed encoded images from their pixels in the embedder's batches (decoding runs one batch ahead),
    advancing the progress bar per batch; BLIP-2-like embedders also give every query vector.

    An image that does not decode costs only itself: the group is retried one image at a time and
    the failures are returned in ``errors``.
    """
    bar = progress.bar(label, total=len(blobs))
    try:
        result = _pixel_batch(blobs, embedder, image_cfg, bar.advance)
    except ValueError:
        singles, errors = [], {}
        for i, blob in enumerate(blobs):
            try:
                singles.append(_pixel_batch([blob], embedder, image_cfg))
            except ValueError as exc:
                errors[i] = str(exc).removeprefix("image 0: ")
                singles.append(PixelVectors(np.zeros((1, embedder.dimension), dtype=np.float32),
                                            [np.zeros((1, embedder.dimension), dtype=np.float32)]))
        result = _concat_pixel_vectors(singles, multi=produces_multivectors(embedder))
        result.errors = errors
    bar.close()
    return result


def _concat_pixel_vectors(parts: Sequence[PixelVectors], *, multi: bool) -> PixelVectors:
    """One :class:`PixelVectors` of consecutive parts (error indices shifted to their place)."""
    errors, offset = {}, 0
    for part in parts:
        errors.update({offset + i: message for i, message in part.errors.items()})
        offset += len(part.vectors)
    return PixelVectors(np.concatenate([p.vectors for p in parts]),
                        [m for p in parts for m in p.multivectors] if multi else None, errors)


@task(name="ocr-images", cache_policy=NO_CACHE)
def ocr_images(blobs: dict[str, bytes], backend: str, image_cfg: ImageConfig, progress: Progress) -> tuple[dict[str, str], dict[str, str]]:
    """Read the text in each image (``{sha256: bytes}``) with OCR ``backend``; returns ``(texts, errors)`` by sha256."""
    bar = progress.bar("ocr images", total=len(blobs))
    texts: dict[str, str] = {}
    errors: dict[str, str] = {}
    for sha, data in blobs.items():
        try:
            texts[sha] = ocr_image(data, backend=backend, image_cfg=image_cfg)
        except (ValueError, RuntimeError) as exc:  # one unreadable image must not cost the run
            errors[sha] = f"{type(exc).__name__}: {exc}"
        bar.advance(1)
    bar.close()
    return texts, errors


@dataclass
class OcrState:
    """OCR during one run: whether it runs, the engine, and the text of every image read or found so far (by sha256)."""

    enabled: bool
    backend: str = ""
    texts: dict[str, str] = field(default_factory=dict)


def start_ocr(config: MmragConfig, summary: IndexSummary) -> OcrState:
    """The run's :class:`OcrState`; when ``images.ocr`` is on but no engine is installed, the summary says so once."""
    if not config.images.ocr:
        summary.ocr_note = "off (images.ocr is false)"
        return OcrState(False)
    try:
        backend = resolve_backend(config.images.ocr_backend)
    except OcrUnavailable as exc:
        summary.ocr_note = f"not run: {exc}"
        get_run_logger().warning("OCR is on but cannot run: %s", exc)
        return OcrState(False)
    summary.ocr_backend = backend
    return OcrState(True, backend)


def _read_image_text(occurrences: list[rows.ImageOccurrence], ocr: OcrState, index_store: store.IndexStore,
                     config: MmragConfig, summary: IndexSummary, progress: Progress) -> list[rows.ImageOccurrence]:
    """``occurrences`` with ``ocr_text`` filled for images that decoded: text read earlier in this run, else
    stored on a row of any image table (same sha256), else OCR now, once per distinct image."""
    if not ocr.enabled:
        return occurrences
    readable = {o.info.sha256: o for o in occurrences if o.status == "ok" and o.data is not None and o.info}
    new = [sha for sha in readable if sha not in ocr.texts]
    stored = index_store.ocr_texts_by_sha(new)
    ocr.texts.update(stored)
    summary.ocr_reused += len(stored)
    todo = {sha: readable[sha].data for sha in new if sha not in stored}
    if todo:
        started = time.perf_counter()
        texts, errors = ocr_images.submit(todo, ocr.backend, config.images, progress).result()
        summary.ocr_seconds = round(summary.ocr_seconds + time.perf_counter() - started, 3)
        summary.ocr_images += len(todo)
        ocr.texts.update(texts)
        for sha, message in errors.items():
            summary.add_failure("image", readable[sha].ref.src, "ocr_error", message)
    return [dataclasses.replace(o, ocr_text=ocr.texts.get(o.info.sha256))
            if o.status == "ok" and o.info and o.info.sha256 in readable else o for o in occurrences]


@task(name="caption-images", cache_policy=NO_CACHE)
def caption_images(blobs: dict[str, tuple[bytes, str]], llm_config: LlmConfig, llm_spec: str, prompt: str,
                   max_tokens: int, progress: Progress) -> generate.CaptionBatch:
    """Ask the vision model ``llm_spec`` for a caption of each image (``{sha256: (bytes, MIME)}``), one request each."""
    bar = progress.bar("caption images", total=len(blobs))
    batch = generate.caption_images(make_backend(llm_config, llm_spec), blobs, prompt, max_tokens=max_tokens,
                                    on_image=bar.advance)
    bar.close()
    return batch


@dataclass
class CaptionState:
    """Caption enrichment during one run: whether it runs, the vision backend, the captions found or made so
    far (by sha256), and ``stopped``: why no more images are sent (the backend cannot caption), if so."""

    enabled: bool
    backend: ChatBackend | None = None
    llm_config: LlmConfig | None = None
    captions: dict[str, str] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)
    vision_checked: bool = False
    stopped: str = ""


def start_captioning(config: MmragConfig, summary: IndexSummary) -> CaptionState:
    """The run's :class:`CaptionState` (``images.caption_missing``); nothing is sent to the backend yet."""
    if not config.images.caption_missing:
        summary.caption_note = "off (images.caption_missing is false)"
        return CaptionState(False)
    llm_config = config.llm.model_copy(update={"send_images": True})  # llm.send_images is about answers
    backend = make_backend(llm_config, config.images.caption_llm)
    summary.caption_model = f"{backend.name}:{backend.model}"
    return CaptionState(True, backend, llm_config)


def _stop_captioning(captioning: CaptionState, reason: str, summary: IndexSummary) -> None:
    """Send no more images this run; the summary says why, once."""
    captioning.stopped = reason
    summary.caption_note = f"stopped: {reason}; images are indexed without a generated caption"
    get_run_logger().warning("caption enrichment stopped: %s", reason)


def _vision_ready(captioning: CaptionState, summary: IndexSummary) -> bool:
    """Whether images may be sent: checked once per run (Ollama lists a model's capabilities; asking may fail)."""
    if not captioning.vision_checked and not captioning.stopped:
        captioning.vision_checked = True
        backend = captioning.backend
        try:
            sees_images = backend.supports_images
        except LlmError as exc:
            _stop_captioning(captioning, str(exc), summary)
            return False
        if not sees_images:
            _stop_captioning(captioning, f"{backend.name}:{backend.model} does not accept images (the server lists no "
                             "vision capability); set images.caption_llm to a vision model", summary)
    return not captioning.stopped


def needs_caption(occurrence: rows.ImageOccurrence) -> bool:
    """Whether caption enrichment applies: the image decoded and its page gives it no caption (nor alt or title)."""
    return (occurrence.status == "ok" and occurrence.data is not None and occurrence.info is not None
            and (occurrence.ref.caption_missing or not occurrence.ref.caption.strip()))


def _caption_missing(occurrences: list[rows.ImageOccurrence], captioning: CaptionState, index_store: store.IndexStore,
                     config: MmragConfig, summary: IndexSummary, progress: Progress) -> list[rows.ImageOccurrence]:
    """``occurrences`` with ``generated_caption`` filled for decoded images without a caption: a caption made
    earlier in this run, else stored in ``image_captions`` for the same image, model and prompt, else one
    asked of the vision model now (and stored), once per distinct image."""
    if not captioning.enabled:
        return occurrences
    backend, prompt = captioning.backend, config.images.caption_prompt
    uncaptioned = {o.info.sha256: o for o in occurrences if needs_caption(o)}
    new = [sha for sha in uncaptioned if sha not in captioning.captions and sha not in captioning.asked]
    stored = generate.stored_captions(index_store, new, backend.model, prompt)
    captioning.captions.update(stored)
    summary.captions_reused += len(stored)
    todo = {}
    for sha in new:
        image = uncaptioned[sha]
        given = generate.model_image(image.data, image.info.format, image.info.is_raster, image.info.raster_png)
        if sha not in stored and given is not None:
            todo[sha] = given
    if todo and _vision_ready(captioning, summary):
        started = time.perf_counter()
        batch = caption_images.submit(todo, captioning.llm_config, config.images.caption_llm, prompt,
                                      config.images.caption_max_tokens, progress).result()
        summary.caption_seconds = round(summary.caption_seconds + time.perf_counter() - started, 3)
        if batch.rows:
            generate.store_captions(index_store, batch.rows)
        captioning.captions.update({row["image_sha256"]: row["caption"] for row in batch.rows})
        summary.captions_generated += len(batch.rows)
        for sha, message in batch.errors.items():
            summary.add_failure("image", uncaptioned[sha].ref.src, "caption_error", message)
        if batch.fatal is not None:
            _stop_captioning(captioning, str(batch.fatal), summary)
    captioning.asked.update(todo)  # a failed image is not asked again in this run
    summary.captions_failed += sum(1 for sha in todo if sha not in captioning.captions)
    return [dataclasses.replace(o, generated_caption=captioning.captions.get(o.info.sha256)) if needs_caption(o) else o
            for o in occurrences]


# -- the flow ------------------------------------------------------------------------------


@flow(name="index", log_prints=False, validate_parameters=False)
def index_flow(sources: list[str], config: MmragConfig | dict | None = None, run_id: str | None = None) -> dict:
    """Index ``sources`` into the LanceDB database of ``config.store.db_uri``; returns the summary dict.

    ``config`` may be a plain dict (deployment parameters) or None (defaults and ``MMRAG_*`` variables).
    The run holds the database's write lock (:mod:`pipelines.guard`) from start to end; disk-full and
    permission failures end it with a one-line :class:`~pipelines.guard.StoreWriteError`.
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
    progress = Progress(enabled=config.progress)
    index_store = store.IndexStore(config.store.db_uri)
    # Built on first use: a re-index in which no page changed parses and embeds nothing, and loads no model.
    embedder = LazyEmbedder(config.embed, load_timer=lambda: summary.timed("load_embedder"))
    chunk_table = store.chunks_table_name(embedder.name, config.chunking.key())
    image_table = store.images_table_name(embedder.name)
    ocr = start_ocr(config, summary)
    captioning = start_captioning(config, summary)

    with Fetcher(config.fetch, RawStore(config.store.raw_dir)) as real_fetcher:
        fetcher, shared_embedder, handles = _task_arguments(config, real_fetcher, embedder)
        try:
            with summary.timed("sources"):
                targets, source_errors = expand_sources_task(list(sources), fetcher)
            for err in source_errors:
                summary.add_failure("source", err.source, "source_error", err.message)
            summary.pages_total = len(targets)
            n_batches = -(-len(targets) // config.page_batch)
            logger.info("index run %s: %d pages from %d sources in %d batches of %d (task runner %s)",
                        run_id, len(targets), len(sources), n_batches, config.page_batch, config.ops.task_runner)
            pages_bar = progress.bar("pages", total=len(targets))
            for number, start in enumerate(range(0, len(targets), config.page_batch), 1):
                batch = targets[start : start + config.page_batch]
                before = dict(summary.stage_seconds), summary.to_dict()
                _index_batch(batch, fetcher, shared_embedder, index_store, chunk_table, image_table, config, summary,
                             progress, run_id, ocr=ocr, captioning=captioning)
                logger.info("batch %d/%d: %s", number, n_batches, _batch_report(before, summary))
                pages_bar.advance(len(batch))
            pages_bar.close()
            _retire_dropped(sources, targets, source_errors, index_store, chunk_table, image_table, config, summary, run_id)
        finally:
            for handle in handles:
                handle.release()
    progress.stop()

    if config.ops.maintain_after_index:
        from pipelines import maintenance

        with summary.timed("maintenance"):
            summary.maintenance = maintenance.run_maintenance(index_store, config.ops)
        logger.info("maintenance: %s", summary.maintenance)
    written = [t for t in (store.DOCUMENTS, chunk_table, image_table, store.IMAGE_BLOBS, generate.IMAGE_CAPTIONS)
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


def _task_arguments(config: MmragConfig, fetcher: Fetcher, embedder: Embedder):
    """The fetcher and embedder as tasks get them: themselves on threads, picklable handles on Dask."""
    if config.ops.task_runner != "dask":
        return fetcher, embedder, []
    from flows.shared import SharedHandle

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


def _embed_in_tasks(items: list, embed_task, embedder, setting, config: MmragConfig, progress: Progress, label: str) -> list:
    """``embed_task(group, embedder, setting, progress, label)`` over groups of ``ops.embed_task_rows`` items:
    in turn on threads (torch uses every core), all at once on Dask; returns the groups' results in order."""
    size = config.ops.embed_task_rows
    groups = [items[i : i + size] for i in range(0, len(items), size)]
    if config.ops.task_runner != "dask":
        return [embed_task(g, embedder, setting, progress, label) for g in groups]
    bar = progress.bar(label, total=len(items))
    futures = [embed_task.submit(g, embedder, setting, progress, label) for g in groups]
    parts = []
    for future, group in zip(futures, groups):
        parts.append(future.result())
        bar.advance(len(group))
    bar.close()
    return parts


def _embed(texts: list[str], embedder, config: MmragConfig, progress: Progress, label: str) -> np.ndarray:
    """Embed ``texts`` in tasks of ``ops.embed_task_rows`` (see :func:`_embed_in_tasks`)."""
    if not texts:
        return np.empty((0, embedder.dimension), dtype=np.float32)
    return np.concatenate(_embed_in_tasks(texts, embed_texts, embedder, config.embed.batch_size, config, progress, label))


def _vectors_for(keys: list[str], texts: list[str], table: str, key_column: str, embedder, index_store: store.IndexStore,
                 config: MmragConfig, progress: Progress, label: str, where: str | None = None) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (same order), reusing stored ones with the same ``key_column`` (among rows matching
    the SQL ``where``); returns (vectors, reused)."""
    if not keys:  # not even the dimension: asking would load a lazy embedder for nothing
        return np.empty((0, 0), dtype=np.float32), 0
    reusable = index_store.vectors_by_key(table, key_column, keys, where)
    todo_keys, todo_texts = incremental.texts_to_embed(keys, texts, reusable)
    computed = _embed(todo_texts, embedder, config, progress, label)
    vector_of = {**reusable, **dict(zip(todo_keys, computed))}
    vectors = np.stack([np.asarray(vector_of[k], dtype=np.float32) for k in keys])
    return vectors, len(keys) - len(todo_keys)


@dataclass
class ImageVectors:
    """The vectors of a list of images (same order): where each came from, BLIP-2's query vectors, reuse counts."""

    vectors: np.ndarray
    sources: list[str]
    multivectors: list[np.ndarray] | None
    reused: int


def _image_vectors(images: list[rows.ImageOccurrence], embedder, index_store: store.IndexStore, image_table: str,
                   config: MmragConfig, summary: IndexSummary, progress: Progress) -> ImageVectors:
    """Vectors for image rows to write: from pixels when the embedder embeds images and the bytes are there,
    else from the text surrogate (caption, alt, section, OCR text) in the same space.

    Reuse keys differ by source: a pixel vector depends only on the image content, so stored ``pixels``
    rows with the same ``image_sha256`` lend theirs (an image whose page or caption changed is not
    re-embedded); a surrogate vector depends on the surrogate text, keyed by ``surrogate_hash``. Each
    distinct image is embedded once. An image whose pixels cannot be embedded falls back to its
    surrogate and is recorded as an ``embed_error`` failure.
    """
    if not images:  # nothing to embed: leave a lazy embedder unloaded
        return ImageVectors(np.empty((0, 0), dtype=np.float32), [], None, 0)
    multi = produces_multivectors(embedder)
    with_pixels = "image" in embedder.modalities
    pixel_of = {i: o.info.sha256 for i, o in enumerate(images)
                if with_pixels and o.status == "ok" and o.data is not None and o.info is not None}
    vector_of: dict[str, np.ndarray] = {}
    multi_of: dict[str, np.ndarray] = {}
    computed_shas = 0
    if pixel_of:
        shas = list(dict.fromkeys(pixel_of.values()))
        where = f"vector_source = {store.sql_quote(PIXELS)}"
        vector_of = index_store.vectors_by_key(image_table, "image_sha256", shas, where)
        if multi:
            multi_of = index_store.multivectors_by_key(image_table, "image_sha256", shas, where)
            vector_of = {sha: v for sha, v in vector_of.items() if sha in multi_of}
        blob_of = {sha: images[i].data for i, sha in pixel_of.items()}
        todo, blobs = incremental.texts_to_embed(shas, [blob_of[sha] for sha in shas], vector_of)
        if todo:
            parts = _embed_in_tasks(blobs, embed_images, embedder, config.images, config, progress, "embed images (pixels)")
            computed = _concat_pixel_vectors(parts, multi=multi)
            computed_shas = len(todo) - len(computed.errors)
            for j, sha in enumerate(todo):
                if j in computed.errors:
                    src = next(images[i].ref.src for i, s in pixel_of.items() if s == sha)
                    summary.add_failure("image", src, "embed_error", computed.errors[j])
                    continue
                vector_of[sha] = computed.vectors[j]
                if multi:
                    multi_of[sha] = computed.multivectors[j]
        pixel_of = {i: sha for i, sha in pixel_of.items() if sha in vector_of}
    rest = [i for i in range(len(images)) if i not in pixel_of]
    surrogate_vectors, surrogate_reused = _vectors_for(
        [images[i].surrogate_hash for i in rest], [images[i].surrogate_text for i in rest], image_table,
        "surrogate_hash", embedder, index_store, config, progress, "embed images",
        where=f"vector_source = {store.sql_quote(TEXT_SURROGATE)}")
    surrogate_of = dict(zip(rest, surrogate_vectors))
    vectors = [vector_of[pixel_of[i]] if i in pixel_of else surrogate_of[i] for i in range(len(images))]
    multivectors = None
    if multi:  # a surrogate row's "query vectors" are its one vector: max over them is its cosine
        multivectors = [multi_of[pixel_of[i]] if i in pixel_of else surrogate_of[i][None, :] for i in range(len(images))]
    return ImageVectors(
        vectors=np.stack(vectors).astype(np.float32, copy=False) if vectors else np.empty((0, embedder.dimension), np.float32),
        sources=[PIXELS if i in pixel_of else TEXT_SURROGATE for i in range(len(images))],
        multivectors=multivectors,
        reused=len(pixel_of) - computed_shas + surrogate_reused,
    )


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
    ocr: OcrState | None = None,
    captioning: CaptionState | None = None,
) -> None:
    now = datetime.now(timezone.utc)
    with summary.timed("fetch"):
        # Threads: one task for the batch (a task run costs CPU here and in Prefect's server; the fetcher's
        # limits hold either way). Dask: groups of ops.fetch_task_pages, the unit spread over workers.
        size = config.ops.fetch_task_pages if config.ops.task_runner == "dask" else len(batch)
        groups = [list(batch[i : i + size]) for i in range(0, len(batch), size)]
        futures = [fetch_pages.submit(g, fetcher, config.fetch.concurrency, len(g) - 1) for g in groups]
        fetched = [r for f in futures for r in f.result()]
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
        pages: list[ParsedPage] = [f.result() for f in [parse_page.submit(t, r, embedder, config) for t, r in to_parse]]
    good = [p for p in pages if p.doc is not None]
    with summary.timed("images"):
        image_futures = [fetch_images.submit(p.doc, bool(p.target.local_path), fetcher, config) for p in good]
        occurrences = [occ for f in image_futures for occ in f.result()]
    if ocr is not None and ocr.enabled:
        with summary.timed("ocr"):
            occurrences = _read_image_text(occurrences, ocr, index_store, config, summary, progress)
    if captioning is not None and captioning.enabled:
        with summary.timed("captions"):
            occurrences = _caption_missing(occurrences, captioning, index_store, config, summary, progress)

    good_urls = {p.target.url for p in good}

    # Chunks: write ids not stored yet, reusing the vector of any stored chunk with the same text.
    chunks = [c for p in good for c in p.chunks]
    plan = incremental.plan_chunks(chunks, {u: rows_ for u, rows_ in stored_chunks.items() if u in good_urls})

    # Images: rewrite rows whose surrogate text (caption, OCR text), bytes or status changed; the vector is
    # reused when the bytes (pixel vectors) or the surrogate (surrogate vectors) are unchanged.
    stored_image_rows = {iid: row for u, rows_ in stored_images.items() if u in good_urls for iid, row in rows_.items()}
    changed_images = list({
        o.id: o for o in occurrences
        if o.id not in stored_image_rows
        or stored_image_rows[o.id]["surrogate_hash"] != o.surrogate_hash
        or stored_image_rows[o.id]["status"] != o.status
        or stored_image_rows[o.id].get("ocr_text") != o.ocr_text
    }.values())
    stale_image_ids = set(stored_image_rows) - {o.id for o in occurrences}

    with summary.timed("embed"):
        chunk_vectors, chunks_reused = _vectors_for(
            [c.content_hash for c in plan.new], [c.text for c in plan.new], chunk_table, "content_hash",
            embedder, index_store, config, progress, "embed chunks")
        image_vectors = _image_vectors(changed_images, embedder, index_store, image_table, config, summary, progress)

    with summary.timed("write"):
        # Order matters for crash safety: content first, then the documents rows that vouch for it.
        blobs = rows.image_blobs_table(changed_images)
        new_blob_keys = set(blobs.column("sha256").to_pylist()) - index_store.existing_keys(
            store.IMAGE_BLOBS, "sha256", blobs.column("sha256").to_pylist())
        index_store.upsert(store.IMAGE_BLOBS, blobs, key="sha256", update=False)
        if plan.new:
            index_store.upsert(chunk_table, rows.chunks_table(plan.new, chunk_vectors, embedder=embedder.name, run_id=run_id))
        if changed_images:
            index_store.upsert(image_table, rows.images_table(
                changed_images, image_vectors.vectors, embedder=embedder.name, vector_source=image_vectors.sources,
                run_id=run_id, multivectors=image_vectors.multivectors))
        # Kept rows of a re-parsed page are not rewritten: bring their copy of the page's date up to date.
        dates = {p.target.url: rows.published_value(p.doc.published) for p in good}
        for table_name, stored in ((chunk_table, stored_chunks), (image_table, stored_images)):
            index_store.set_where_in(table_name, "published", incremental.redated_documents(dates, stored),
                                     field=store.documents_schema().field("published"))
        index_store.delete_where_in(chunk_table, "id", plan.stale)
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
        doc_rows += incremental.refreshed_document_rows(unchanged, previous_docs, run_id=run_id)
        index_store.upsert(store.DOCUMENTS, rows.documents_table(doc_rows))
        leftovers = {t.url for t, _ in gone if stored_chunks.get(t.url) or stored_images.get(t.url)}
        retired = _retire([t.url for t, _ in gone], previous_docs, {t.url: r for t, r in gone}, index_store,
                          chunk_table, image_table, config, run_id, leftovers=leftovers)

    # Tally.
    for page in pages:
        summary.count_page(page.status)
        previous = previous_docs.get(page.target.url)
        if page.doc is None:
            summary.pages_failed += 1
            summary.add_failure("page", page.target.url, page.status, page.error)
        else:
            summary.pages_ok += 1
            summary.pages_not_modified += page.fetch.status == "not_modified"
            if previous is None or previous.get("status") != "ok" or not previous.get("content_hash"):
                summary.documents_added += 1
            elif previous.get("content_hash") == page.fetch.body_sha256:
                summary.documents_unchanged += 1  # re-parsed (reparse or a new chunking) but the same content
            else:
                summary.documents_updated += 1
    for target, result in unchanged:
        previous = previous_docs[target.url]
        summary.count_page("ok")
        summary.pages_ok += 1
        summary.pages_not_modified += result.status == "not_modified"
        summary.documents_unchanged += 1
        summary.chunks_total += previous.get("n_chunks") or 0
        summary.chunks_unchanged += previous.get("n_chunks") or 0
        for image in stored_images.get(target.url, {}).values():
            summary.images_total += 1
            summary.images_unchanged += 1
            summary.count_image(image["status"])
            if image["status"] == "ok":
                summary.images_ok += 1
            else:
                summary.images_failed += 1
                summary.add_failure("image", image["src_url"], image["status"], image["error"])
    summary.tally_retired(retired)
    for occ in occurrences:
        summary.count_image(occ.status)
        if occ.status == "ok":
            summary.images_ok += 1
        else:
            summary.images_failed += 1
            summary.add_failure("image", occ.ref.src, occ.status, occ.error)
    summary.chunks_total += len(chunks)
    summary.chunks_embedded += len(plan.new)
    summary.chunks_added += plan.added
    summary.chunks_updated += plan.updated
    summary.chunks_vectors_reused += chunks_reused
    summary.chunks_unchanged += plan.unchanged
    summary.chunks_deleted += plan.deleted
    summary.chunks_truncated += sum(c.truncated for c in chunks)
    summary.images_total += len(occurrences)
    summary.images_embedded += len(changed_images)
    summary.images_added += sum(1 for o in changed_images if o.id not in stored_image_rows)
    summary.images_updated += sum(1 for o in changed_images if o.id in stored_image_rows)
    summary.images_vectors_reused += image_vectors.reused
    summary.images_pixel_vectors += image_vectors.sources.count(PIXELS)
    summary.images_unchanged += len(occurrences) - len(changed_images)
    summary.images_deleted += len(stale_image_ids)
    summary.image_blobs_new += len(new_blob_keys)


def _retire(urls: list[str], previous_docs: dict, fetches: dict, index_store: store.IndexStore, chunk_table: str,
            image_table: str, config: MmragConfig, run_id: str, leftovers: set[str] | None = None) -> dict:
    """Apply ``ops.gone_policy`` to ``urls`` (known documents that are gone); returns what was removed.

    The tombstone is written first and the content deleted after it, so a crash in between leaves a
    ``gone`` document with leftover rows that the next run deletes, never an ``ok`` document without them.
    Documents already ``gone`` only get their tombstone refreshed (and ``leftovers`` deleted).
    """
    if not urls or config.ops.gone_policy == "keep":
        return {"urls": [], "chunks": 0, "images": 0}
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
    return {"urls": newly_gone, "chunks": deleted.get(chunk_table, 0), "images": deleted.get(image_table, 0),
            "still_gone": len(urls) - len(newly_gone)}


def _retire_dropped(sources, targets, source_errors, index_store, chunk_table, image_table, config, summary, run_id) -> None:
    """Retire documents that a source listed last time and no longer lists (complete sources only)."""
    if config.ops.gone_policy == "keep":
        return
    failed = {err.source for err in source_errors}
    listed = {t.origin for t in targets}
    complete = [s for s in sources if s not in failed and s in listed]
    dropped = incremental.dropped_urls(index_store.documents_by_origin(complete), (t.url for t in targets), complete)
    if dropped:
        with summary.timed("write"):
            retired = _retire(dropped, index_store.document_rows(dropped), {}, index_store, chunk_table, image_table,
                              config, run_id)
        summary.tally_retired(retired)
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
    """Run the ``index`` flow with the task runner of ``config.ops`` (threads by default); returns the summary."""
    result = index_flow.with_options(task_runner=build_task_runner(config))(sources=list(sources), config=config)
    return IndexSummary(**result)
