"""Image text stages of the index flow: OCR of decoded images and caption enrichment by a vision LLM.

Both run once per distinct image (sha256) per run and reuse what is stored: OCR text from any image
table's ``ocr_text``, generated captions from the ``image_captions`` table (same image, model and
prompt). Their text joins the image's text surrogate; a generated caption is kept apart from the
page's own caption (``generated_caption``), so eval labels never treat it as authored.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_logger

from mmrag.config import ImageConfig, LlmConfig, MmragConfig
from mmrag.progress import Progress
from mmrag.pipelines import generate, rows, store
from mmrag.pipelines.llm import make_backend
from mmrag.pipelines.llm.base import ChatBackend, LlmError
from mmrag.pipelines.ocr import (
    OcrPool,
    OcrUnavailable,
    default_ocr_workers,
    engine_key,
    resolve_backend,
    resolve_models,
)
from mmrag.pipelines.summary import IndexSummary


@task(name="ocr-images", task_run_name="ocr-images {count} images", cache_policy=NO_CACHE)
def ocr_images(ocr: "OcrState", blobs: dict[str, bytes], count: int = 0) -> list[str]:
    """Start reading the text of each image (``{sha256: bytes}``) on the run's OCR pool; returns the sha256s
    started. Results are collected (and saved) as they arrive; see :func:`collect_image_text`."""
    started = []
    for sha, data in blobs.items():
        ocr.pending[sha] = ocr.pool().submit(data)
        ocr.pending[sha].add_done_callback(lambda future, sha=sha: ocr.done(sha, future))
        started.append(sha)
    return started


@dataclass
class OcrState:
    """OCR during one run: whether it runs, the engine and its result key, the text of every image read or found
    so far (by sha256), the images being read, and results not saved yet.

    Results are saved to the ``ocr_results`` table by a saver thread as they arrive, those arriving within
    ``SAVE_GAP_S`` of each other together unless ``SAVE_MAX_UNSAVED`` are already waiting (and at the end, on any
    exit that runs ``finally`` blocks, SIGTERM included). So an interrupted run loses the images in flight plus at
    most ``SAVE_MAX_UNSAVED`` results and those arriving during one save, however fast the images are read.
    """

    enabled: bool
    backend: str = ""
    engine: str = ""
    texts: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    pending: dict[str, Future] = field(default_factory=dict)
    image_cfg: ImageConfig | None = None
    workers: int = 0
    index_store: store.IndexStore | None = None
    seconds: float = 0.0
    read: int = 0
    bar: object = None
    _pool: OcrPool | None = None
    _recorded: set[str] = field(default_factory=set)
    _unsaved: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _full: threading.Event = field(default_factory=threading.Event)  # SAVE_MAX_UNSAVED results are waiting
    _saver: threading.Thread | None = None
    _closing: bool = False
    _first_submit: float | None = None
    _last_done: float | None = None

    SAVE_EVERY_S = 1.0
    SAVE_GAP_S = 0.2
    SAVE_MAX_UNSAVED = 2

    def pool(self) -> OcrPool:
        """The OCR workers, started on first use (a run with no new image starts none)."""
        if self._first_submit is None:
            self._first_submit = time.monotonic()
        if self._pool is None:
            self._pool = OcrPool(self.backend, self.image_cfg or ImageConfig(), self.workers)
            if self.index_store is not None:
                self._saver = threading.Thread(target=self._save_loop, name="mmrag-ocr-saver", daemon=True)
                self._saver.start()
        return self._pool

    def done(self, sha: str, future: Future) -> None:
        """A worker finished ``sha`` (called in a pool thread): keep the result and queue it for saving."""
        with self._lock:
            if future.cancelled() or sha in self._recorded:
                return
            self._recorded.add(sha)
        try:
            text, error, seconds = future.result()
        except Exception as exc:  # a worker died (e.g. killed): this image is not read, the run goes on
            text, error, seconds = None, f"{type(exc).__name__}: {exc}", 0.0
        with self._lock:
            if text is not None:
                self.texts[sha] = text
            else:
                self.errors[sha] = error or "OCR failed"
            self.seconds += seconds
            self.read += 1
            self._last_done = time.monotonic()
            self._unsaved.append({"image_sha256": sha, "engine": self.engine, "text": text, "error": error,
                                  "seconds": seconds, "created_at": datetime.now(timezone.utc)})
            if len(self._unsaved) >= self.SAVE_MAX_UNSAVED:
                self._full.set()
        self._wake.set()
        if self.bar is not None:
            self.bar.advance(1)

    def busy_workers(self) -> int:
        """OCR worker processes reading an image right now (at most ``workers``; 0 when nothing is in flight)."""
        in_flight = sum(not future.done() for future in list(self.pending.values()))
        return min(self.workers, in_flight)

    @property
    def busy_s(self) -> float:
        """Wall seconds from the first image sent to the workers to the last result (0 when none was)."""
        if self._first_submit is None or self._last_done is None:
            return 0.0
        return max(self._last_done - self._first_submit, 1e-6)

    def save(self) -> int:
        """Write the results not saved yet; returns how many."""
        with self._lock:
            rows_, self._unsaved = self._unsaved, []
        if rows_ and self.index_store is not None:
            self.index_store.save_ocr_results(rows_)
        return len(rows_)

    def _save_loop(self) -> None:
        while not self._closing:
            self._wake.wait(self.SAVE_EVERY_S)
            self._wake.clear()
            self._full.clear()
            try:
                self.save()
            except Exception as exc:  # noqa: BLE001 - a failed save costs reuse later, not the run
                get_logger("mmrag.ocr").warning("could not save OCR results: %s", exc)
            # One table version per gap, not per image, unless results arrive faster than that (small figures
            # read in milliseconds): then one per SAVE_MAX_UNSAVED results, which bounds what a kill loses.
            self._full.wait(self.SAVE_GAP_S)

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (``cancel``: drop images not started) and save every result that arrived."""
        if self._pool is not None:
            self._pool.close(cancel=cancel)
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._saver is not None:
            self._saver.join(timeout=30)
        self.save()


def apply_torch_threads(config: MmragConfig, ocr: OcrState | None = None) -> None:
    """Torch threads for the next embedding batch: ``ops.torch_threads`` when set; otherwise one per core, less
    one per OCR worker busy right now. OCR processes beside a full set of torch threads oversubscribe the cores,
    and torch's threads then wait at barriers (bench/RESULTS.md, first_index)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    wanted = config.ops.torch_threads
    if not wanted:
        busy = ocr.busy_workers() if ocr is not None and ocr.enabled else 0
        wanted = max(1, (os.cpu_count() or 1) - busy)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


class CoreSharingEmbedder:
    """``embedder`` with torch's threads set before every batch it embeds (:func:`apply_torch_threads`): a core
    for each OCR worker reading an image at that moment, every other core for the embedding. Set once per stage
    instead, the threads stayed at one for the rest of a stage after the workers ran out of images, leaving a
    core idle (bench/RESULTS.md, first_index). Everything else is ``embedder``'s own (a lazy embedder stays
    unloaded until it embeds)."""

    _GOVERNED = frozenset({"embed_texts", "embed_image_bytes", "embed_image_bytes_multi"})

    def __init__(self, embedder, config: MmragConfig, ocr: OcrState):
        self._embedder, self._config, self._ocr = embedder, config, ocr

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not set yet (copy, pickle): never look for them on the embedder
            raise AttributeError(name)
        value = getattr(self._embedder, name)
        if name not in self._GOVERNED:
            return value

        def governed(*args, **kwargs):
            apply_torch_threads(self._config, self._ocr)
            return value(*args, **kwargs)

        return governed

    def __repr__(self) -> str:
        return f"CoreSharingEmbedder({self._embedder!r})"


def start_ocr(config: MmragConfig, summary: IndexSummary, index_store: store.IndexStore | None = None) -> OcrState:
    """The run's :class:`OcrState`; when ``images.ocr`` is on but no engine is installed, the summary says so once."""
    if not config.images.ocr:
        summary.ocr_note = "off (images.ocr is false)"
        return OcrState(False)
    try:
        backend = resolve_backend(config.images.ocr_backend)
        summary.ocr_models = resolve_models(config.images) if backend == "rapidocr" else ""
    except OcrUnavailable as exc:
        summary.ocr_note = f"not run: {exc}"
        get_run_logger().warning("OCR is on but cannot run: %s", exc)
        return OcrState(False)
    summary.ocr_backend = backend
    workers = config.images.ocr_workers if config.images.ocr_workers is not None else default_ocr_workers()
    summary.ocr_engine = engine_key(backend, config.images)
    return OcrState(True, backend, summary.ocr_engine, image_cfg=config.images, workers=workers, index_store=index_store)


def submit_image_text(occurrences: list[rows.ImageOccurrence], ocr: OcrState, index_store: store.IndexStore,
                      summary: IndexSummary, progress: Progress, *, read_new: bool = True) -> None:
    """Start OCR of the decoded images of ``occurrences`` not read yet (returns at once): text read earlier in
    this run or being read is reused, then a stored ``ocr_results`` row of the same engine key, then the
    ``ocr_text`` of a row of any image table (same sha256); the rest go to the OCR workers, unless ``read_new``
    is false (``images.ocr_deferred``: they are left for the enrichment pass)."""
    if not ocr.enabled:
        return
    readable = {o.info.sha256: o for o in occurrences if o.status == "ok" and o.data is not None and o.info}
    new = [sha for sha in readable if sha not in ocr.texts and sha not in ocr.errors and sha not in ocr.pending]
    saved = {sha: row for sha, row in index_store.ocr_results(new, ocr.engine).items() if row["text"] is not None}
    stored = {sha: row["text"] for sha, row in saved.items()}
    stored.update(index_store.ocr_texts_by_sha([sha for sha in new if sha not in stored]))
    with ocr._lock:
        ocr.texts.update(stored)
    summary.ocr_reused += len(stored)
    todo = {sha: readable[sha].data for sha in new if sha not in stored}
    if todo and read_new:
        if ocr.bar is None:
            ocr.bar = progress.bar("ocr images", total=len(todo))
        else:
            ocr.bar.add_total(len(todo))
        ocr_images(ocr, todo, len(todo))
        summary.ocr_images += len(todo)


def collect_image_text(occurrences: list[rows.ImageOccurrence], ocr: OcrState, summary: IndexSummary) -> list[rows.ImageOccurrence]:
    """``occurrences`` with ``ocr_text`` filled for images that decoded, waiting for the ones still being read;
    an image OCR could not read is recorded once as an ``ocr_error`` failure. An image never sent to the workers
    (``images.ocr_deferred``) is marked ``ocr_pending``."""
    if not ocr.enabled:
        return occurrences
    readable = {o.info.sha256: o for o in occurrences if o.status == "ok" and o.data is not None and o.info}
    for sha in readable:
        future = ocr.pending.pop(sha, None)
        if future is not None:
            wait([future])
            ocr.done(sha, future)  # idempotent: the pool's callback may not have run yet
            if sha in ocr.errors:
                summary.add_failure("image", readable[sha].ref.src, "ocr_error", ocr.errors[sha])
    summary.ocr_seconds = round(ocr.seconds, 3)
    def read(sha: str) -> dict:
        pending = sha not in ocr.texts and sha not in ocr.errors
        return {"ocr_text": ocr.texts.get(sha), "ocr_pending": pending}

    return [dataclasses.replace(o, **read(o.info.sha256))
            if o.status == "ok" and o.info and o.info.sha256 in readable else o for o in occurrences]


def read_image_text(occurrences: list[rows.ImageOccurrence], ocr: OcrState, index_store: store.IndexStore,
                     config: MmragConfig, summary: IndexSummary, progress: Progress) -> list[rows.ImageOccurrence]:
    """``occurrences`` with ``ocr_text`` filled for images that decoded: text read earlier in this run, else
    stored, else OCR now, once per distinct image (:func:`submit_image_text` then :func:`collect_image_text`)."""
    submit_image_text(occurrences, ocr, index_store, summary, progress)
    return collect_image_text(occurrences, ocr, summary)


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


def stop_captioning(captioning: CaptionState, reason: str, summary: IndexSummary) -> None:
    """Send no more images this run; the summary says why, once."""
    captioning.stopped = reason
    summary.caption_note = f"stopped: {reason}; images are indexed without a generated caption"
    get_run_logger().warning("caption enrichment stopped: %s", reason)


def vision_ready(captioning: CaptionState, summary: IndexSummary) -> bool:
    """Whether images may be sent: checked once per run (Ollama lists a model's capabilities; asking may fail)."""
    if not captioning.vision_checked and not captioning.stopped:
        captioning.vision_checked = True
        backend = captioning.backend
        try:
            sees_images = backend.supports_images
        except LlmError as exc:
            stop_captioning(captioning, str(exc), summary)
            return False
        if not sees_images:
            stop_captioning(captioning, f"{backend.name}:{backend.model} does not accept images (the server lists no "
                             "vision capability); set images.caption_llm to a vision model", summary)
    return not captioning.stopped


def needs_caption(occurrence: rows.ImageOccurrence) -> bool:
    """Whether caption enrichment applies: the image decoded and its page gives it no caption (nor alt or title)."""
    return (occurrence.status == "ok" and occurrence.data is not None and occurrence.info is not None
            and (occurrence.ref.caption_missing or not occurrence.ref.caption.strip()))


def caption_missing_images(occurrences: list[rows.ImageOccurrence], captioning: CaptionState, index_store: store.IndexStore,
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
    if todo and vision_ready(captioning, summary):
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
            stop_captioning(captioning, str(batch.fatal), summary)
    captioning.asked.update(todo)  # a failed image is not asked again in this run
    summary.captions_failed += sum(1 for sha in todo if sha not in captioning.captions)
    return [dataclasses.replace(o, generated_caption=captioning.captions.get(o.info.sha256)) if needs_caption(o) else o
            for o in occurrences]
