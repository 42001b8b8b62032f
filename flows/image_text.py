"""Image text stages of the index flow: OCR of decoded images and caption enrichment by a vision LLM.

Both run once per distinct image (sha256) per run and reuse what is stored: OCR text from any image
table's ``ocr_text``, generated captions from the ``image_captions`` table (same image, model and
prompt). Their text joins the image's text surrogate; a generated caption is kept apart from the
page's own caption (``generated_caption``), so eval labels never treat it as authored.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mmrag.config import ImageConfig, LlmConfig, MmragConfig
from mmrag.progress import Progress
from mmrag.pipelines import generate, rows, store
from mmrag.pipelines.llm import make_backend
from mmrag.pipelines.llm.base import ChatBackend, LlmError
from mmrag.pipelines.ocr import OcrUnavailable, ocr_image, resolve_backend
from mmrag.pipelines.summary import IndexSummary


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


def read_image_text(occurrences: list[rows.ImageOccurrence], ocr: OcrState, index_store: store.IndexStore,
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
