"""Answer generation: the prompt (a Jinja2 template), the multi-image strategy, sources, caption enrichment.

Prompt building is pure: :func:`build_prompt` renders retrieval hits into text with a sandboxed
Jinja2 template (autoescape off: prompts are plain text). The default template mirrors the original
design: per text hit its article title, section and snippet; per image hit its path and caption;
then the instruction and the question. ``llm.prompt_template`` names a user template; it sees:

* ``question`` (str);
* ``text_hits``: list of :class:`TextContext` (``article_title``, ``section``, ``text``, ``doc_url``, ``score``,
  ``published``: ISO date or "");
* ``image_hits``: list of :class:`ImageContext` (``path``, ``caption``, ``generated_caption``: a vision
  LLM's caption of an image without one, ``ocr_text``, ``doc_url``, ``section``, ``article_title``,
  ``score``, ``published``, ``attached``: whether its bytes go to the model);
* ``query_image``: the ``--image`` as an :class:`ImageContext`, or None.

Retrieval hits are duck-typed (:class:`HitLike`): anything with ``target`` (``text``/``image``),
``score``, ``doc_url``, ``article_title``, ``section``, ``text`` (for image hits the caption, as in
``mmrag.pipelines.retrieve.Hit``; a ``caption`` field wins when present), ``src_url`` and ``image_sha256``
works; optional ``ocr_text`` and ``generated_caption`` are shown to text-only models. The default
template shows a generated caption, marked as such, only where the image has no authored one.
Side effects (the model call, reading image bytes, writing captions) happen only through a
:class:`~mmrag.pipelines.llm.base.ChatBackend` and an ``IndexStore`` handed in.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import jinja2
import pyarrow as pa
from jinja2.sandbox import SandboxedEnvironment

from mmrag.config import ImageConfig, LlmConfig
from mmrag.pipelines import ocr as ocr_module
from mmrag.pipelines.llm.base import (
    ChatBackend,
    ChatMessage,
    GenerationOptions,
    ImageInput,
    LlmError,
    StreamEvent,
    Usage,
    collect,
    images_as_text,
)
from mmrag.pipelines.store import IMAGE_BLOBS, IMAGE_CAPTIONS, IndexStore, image_captions_schema
from mmrag.records import sha256_hex, stable_id

DEFAULT_PROMPT_TEMPLATE = """\
Given the query "{{ question }}" and the following relevant snippets:

{% for hit in text_hits -%}
**Article title:** {{ hit.article_title }}
**Section:**  {{ hit.section }}
**Snippet:** {{ hit.text }}

{% endfor %}
{% if query_image -%}
**Query image:**  {{ query_image.path }}
{% if query_image.caption %}**Image Caption:** {{ query_image.caption }}
{% endif %}{% if query_image.ocr_text %}**Text in image:** {{ query_image.ocr_text }}
{% endif %}
{% endif -%}
{% for image in image_hits -%}
**Image Path:**  {{ image.path }}
{% if image.caption or not image.generated_caption %}**Image Caption:** {{ image.caption }}
{% else %}**Image Caption (generated):** {{ image.generated_caption }}
{% endif -%}
{% if image.ocr_text %}**Text in image:** {{ image.ocr_text }}
{% endif %}
{% endfor %}

Please provide a concise and accurate answer to the query, incorporating relevant information from the provided snippets where possible.
"""

MERGE_PROMPT_TEMPLATE = """\
The query "{{ question }}" was answered once for each of several images:

{% for part in partial_answers -%}
**Answer using image {{ loop.index }} ({{ part.label }}):** {{ part.text }}

{% endfor %}
Combine these into one concise and accurate answer to the query. Keep what the answers agree on; say so where they differ.
"""


class PromptTemplateError(ValueError):
    """A prompt template cannot be read, parsed or rendered; the message names the file and line."""


class HitLike(Protocol):
    """The fields of a retrieval hit that answering uses (``mmrag.pipelines.retrieve.Hit`` has them)."""

    target: str
    score: float
    doc_url: str
    article_title: str | None
    section: str | None
    text: str | None


@dataclass(frozen=True)
class TextContext:
    """A text hit as the prompt template sees it."""

    article_title: str
    section: str
    text: str
    doc_url: str
    score: float
    published: str = ""


@dataclass(frozen=True)
class ImageContext:
    """An image (hit or query image) as the prompt template sees it."""

    path: str
    caption: str
    ocr_text: str = ""
    doc_url: str = ""
    section: str = ""
    article_title: str = ""
    score: float = 0.0
    sha256: str = ""
    attached: bool = False
    generated_caption: str = ""
    published: str = ""


@dataclass(frozen=True)
class Source:
    """One retrieval result cited under an answer."""

    rank: int
    target: str
    score: float
    doc_url: str
    article_title: str
    section: str
    image_path: str | None = None
    image_sha256: str | None = None
    snippet: str = ""
    published: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return dict(self.__dict__)


@dataclass
class Answer:
    """An answer with its sources, token counts and timings (``error`` set when the model failed)."""

    question: str
    answer: str
    sources: list[Source]
    usage: Usage = field(default_factory=Usage)
    backend: str = ""
    model: str = ""
    prompt: str = ""
    error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``--json``: answer, sources, usage (tokens, timings), backend, model, error."""
        return {
            "question": self.question,
            "answer": self.answer,
            "sources": [s.to_dict() for s in self.sources],
            "usage": self.usage.to_dict(),
            "backend": self.backend,
            "model": self.model,
            "error": self.error,
        }


# -- prompt templates ---------------------------------------------------------------------------


def prompt_environment() -> SandboxedEnvironment:
    """The Jinja2 environment for prompts: sandboxed, no autoescape (plain text), undefined names are errors."""
    return SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


def load_prompt_template(path: str | Path | None = None) -> jinja2.Template:
    """The template at ``path`` (UTF-8 Jinja2), or the built-in default when ``path`` is None."""
    env = prompt_environment()
    if path is None:
        return env.from_string(DEFAULT_PROMPT_TEMPLATE)
    path = Path(path).expanduser()
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptTemplateError(f"prompt template {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptTemplateError(f"prompt template {path}, line {exc.lineno}: {exc.message}") from None


def render_template(template: jinja2.Template, **context: Any) -> str:
    """Render ``template``; undefined names and sandbox violations raise :class:`PromptTemplateError`."""
    try:
        text = template.render(**context)
    except (jinja2.UndefinedError, jinja2.exceptions.SecurityError, jinja2.TemplateError) as exc:
        raise PromptTemplateError(f"prompt template: {exc}") from None
    return collapse_blank_lines(text)


def collapse_blank_lines(text: str) -> str:
    """At most one empty line in a row, no trailing spaces on lines, stripped ends."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def _field(hit: Any, name: str, default: Any = "") -> Any:
    value = getattr(hit, name, None)
    if value is None and isinstance(hit, dict):
        value = hit.get(name)
    return default if value is None else value


def _caption(hit: Any) -> str:
    """An image hit's caption: its ``caption`` field, else its ``text`` (``mmrag.pipelines.retrieve.Hit`` keeps it there)."""
    return _field(hit, "caption") or _field(hit, "text")


def caption_or_generated(hit: Any) -> str:
    """An image hit's authored caption; without one, its generated caption marked ``(generated)``; else ""."""
    generated = _field(hit, "generated_caption")
    return _caption(hit) or (f"(generated) {generated}" if generated else "")


def text_contexts(hits: Iterable[HitLike]) -> list[TextContext]:
    """The text hits of ``hits`` as template records, in the order given."""
    return [
        TextContext(_field(h, "article_title"), _field(h, "section"), _field(h, "text"), _field(h, "doc_url"),
                    float(_field(h, "score", 0.0)), str(_field(h, "published")))
        for h in hits
        if _field(h, "target") == "text"
    ]


def image_contexts(hits: Iterable[HitLike], attached_sha256: Iterable[str] = ()) -> list[ImageContext]:
    """The image hits of ``hits`` as template records; ``attached`` marks those whose bytes go to the model."""
    attached = set(attached_sha256)
    return [
        ImageContext(
            path=_field(h, "src_url") or _field(h, "image_path"),
            caption=_caption(h),
            ocr_text=_field(h, "ocr_text"),
            doc_url=_field(h, "doc_url"),
            section=_field(h, "section"),
            article_title=_field(h, "article_title"),
            score=float(_field(h, "score", 0.0)),
            sha256=_field(h, "image_sha256"),
            attached=_field(h, "image_sha256") in attached,
            generated_caption=_field(h, "generated_caption"),
            published=str(_field(h, "published")),
        )
        for h in hits
        if _field(h, "target") == "image"
    ]


def build_prompt(question: str, hits: Sequence[HitLike], template: jinja2.Template | None = None,
                 query_image: ImageContext | None = None, attached_sha256: Iterable[str] = ()) -> str:
    """The user prompt for ``question`` over retrieval ``hits`` (pure)."""
    template = template or load_prompt_template(None)
    return render_template(
        template,
        question=question,
        text_hits=text_contexts(hits),
        image_hits=image_contexts(hits, attached_sha256),
        query_image=query_image,
    )


def build_messages(prompt: str, system_prompt: str | None = None) -> list[ChatMessage]:
    """Chat messages for one prompt: an optional system message, then the user prompt."""
    messages = [ChatMessage("system", system_prompt)] if system_prompt else []
    messages.append(ChatMessage("user", prompt))
    return messages


def sources_of(hits: Sequence[HitLike], snippet_chars: int = 160) -> list[Source]:
    """The citation list for ``hits``: url, section, image path, score, in rank order."""
    sources = []
    for rank, hit in enumerate(hits, 1):
        is_image = _field(hit, "target") == "image"
        body = caption_or_generated(hit) if is_image else _field(hit, "text")
        body = " ".join(str(body).split())
        sources.append(Source(
            rank=rank,
            target="image" if is_image else "text",
            score=float(_field(hit, "score", 0.0)),
            doc_url=_field(hit, "doc_url"),
            article_title=_field(hit, "article_title"),
            section=_field(hit, "section"),
            image_path=(_field(hit, "src_url") or _field(hit, "image_path") or None) if is_image else None,
            image_sha256=(_field(hit, "image_sha256") or None) if is_image else None,
            snippet=body if len(body) <= snippet_chars else body[: snippet_chars - 1] + "…",
            published=_field(hit, "published") or None,
        ))
    return sources


# -- images ---------------------------------------------------------------------------------------


def is_single_image_model(model: str, single_image_models: Sequence[str]) -> bool:
    """Whether ``model`` (``name:tag``) accepts only one image per request."""
    base = model.split(":", 1)[0].rsplit("/", 1)[-1].lower()
    return any(base == m.split(":", 1)[0].lower() for m in single_image_models)


def read_query_image(path: str | Path, *, ocr: bool = False) -> ImageInput:
    """The ``--image`` file as an :class:`ImageInput` (OCR text filled when ``ocr`` and an engine is installed)."""
    path = Path(path).expanduser()
    data = path.read_bytes()
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    ocr_text = ""
    if ocr:
        if ocr_module.ocr_available():
            try:
                ocr_text = ocr_module.ocr_image(data)
            except Exception:  # noqa: BLE001 - OCR is a best-effort extra for text-only models
                ocr_text = ""
    return ImageInput(data=data, mime_type=mime, label=str(path), ocr_text=ocr_text, score=float("inf"))


def load_image_blobs(store: IndexStore, sha256s: Iterable[str]) -> dict[str, tuple[bytes, str]]:
    """Image bytes and MIME type by sha256 from ``image_blobs`` (the PNG rendering for SVGs); missing ones are left out."""
    wanted = [s for s in dict.fromkeys(sha256s) if s]
    if not wanted or not store.has_table(IMAGE_BLOBS):
        return {}
    rows = store.read_where(IMAGE_BLOBS, ["sha256", "format", "is_raster", "data", "raster_png"], "sha256", wanted).to_pylist()
    blobs: dict[str, tuple[bytes, str]] = {}
    for row in rows:
        image = model_image(row.get("data"), row.get("format"), row.get("is_raster"), row.get("raster_png"))
        if image is not None:
            blobs[row["sha256"]] = image
    return blobs


def model_image(data: bytes | None, fmt: str | None, is_raster: bool | None, raster_png: bytes | None) -> tuple[bytes, str] | None:
    """The bytes and MIME type a vision model is given for an image: its PNG rendering for a vector image
    (SVG), else its own bytes; None when there is nothing a model can decode (an SVG never rendered)."""
    if raster_png and not is_raster:
        return raster_png, "image/png"
    if data and is_raster in (None, True):
        fmt = (fmt or "png").lower()
        return data, f"image/{'jpeg' if fmt in ('jpg', 'jpeg', 'mpo') else fmt}"
    return None


def image_inputs(hits: Sequence[HitLike], blobs: dict[str, tuple[bytes, str]], query_image: ImageInput | None, limit: int) -> list[ImageInput]:
    """Images for the model, best first: the query image, then image hits by score that have bytes; at most ``limit``."""
    images = [query_image] if query_image else []
    image_hits = sorted((h for h in hits if _field(h, "target") == "image"), key=lambda h: -float(_field(h, "score", 0.0)))
    for hit in image_hits:
        sha = _field(hit, "image_sha256")
        if sha in blobs:
            data, mime = blobs[sha]
            images.append(ImageInput(data=data, mime_type=mime, label=_field(hit, "src_url"), caption=caption_or_generated(hit),
                                     ocr_text=_field(hit, "ocr_text"), score=float(_field(hit, "score", 0.0)), sha256=sha))
    return images[:limit]


# -- generation ---------------------------------------------------------------------------------


def generate_with_images(backend: ChatBackend, messages: Sequence[ChatMessage], images: Sequence[ImageInput], *,
                         question: str, config: LlmConfig, stream: bool = True) -> Iterator[StreamEvent]:
    """Run ``backend`` with the multi-image strategy of ``config``; yields text deltas, then one summed :class:`Usage`.

    Text-only backends (or ``send_images`` off) get the images as words inside the last user message.
    Single-image models (``llm.single_image_models``) given several images follow
    ``llm.multi_image_strategy``: ``best`` sends only the first (best) image; ``per_image`` asks once per
    image (not streamed), then streams a text-only merge of those answers.
    """
    options = GenerationOptions(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed)
    if not images:
        yield from backend.generate(messages, (), stream=stream, options=options)
        return
    if not (config.send_images and backend.supports_images):
        last = len(messages) - 1
        described = [*messages[:last], ChatMessage(messages[last].role, messages[last].content + "\n\n" + images_as_text(images))]
        yield from backend.generate(described, (), stream=stream, options=options)
        return
    if len(images) == 1 or not is_single_image_model(backend.model, config.single_image_models):
        yield from backend.generate(messages, images, stream=stream, options=options)
        return
    if config.multi_image_strategy == "best":
        yield from backend.generate(messages, images[:1], stream=stream, options=options)
        return
    partials = []
    total: Usage | None = None
    for image in images:
        done = collect(backend.generate(messages, [image], stream=False, options=options))
        partials.append({"label": image.label, "text": done.text.strip()})
        total = done.usage if total is None else total.add(done.usage)
    merge_prompt = render_template(prompt_environment().from_string(MERGE_PROMPT_TEMPLATE), question=question, partial_answers=partials)
    system = [m for m in messages if m.role == "system"]
    for event in backend.generate([*system, ChatMessage("user", merge_prompt)], (), stream=stream, options=options):
        if isinstance(event, Usage):
            assert total is not None
            merged = total.add(event)
            merged.time_to_first_token_s = total.total_s + (event.time_to_first_token_s or 0.0) if total.total_s else None
            yield merged
        else:
            yield event


def answer_events(question: str, hits: Sequence[HitLike], backend: ChatBackend, config: LlmConfig, *,
                  query_image: ImageInput | None = None, blobs: dict[str, tuple[bytes, str]] | None = None,
                  stream: bool = True) -> tuple[str, Iterator[StreamEvent]]:
    """The rendered prompt and the event stream answering ``question`` from ``hits`` (nothing runs until iterated).

    ``blobs`` (sha256 -> bytes, MIME) supplies image-hit bytes for vision backends (see :func:`load_image_blobs`).
    """
    template = load_prompt_template(config.prompt_template)
    images = image_inputs(hits, blobs or {}, query_image, config.max_images) if config.max_images else []
    vision = config.send_images and images and backend.supports_images
    attached = {i.sha256 for i in images if i.sha256} if vision else set()
    query_context = None
    if query_image is not None:
        query_context = ImageContext(path=query_image.label, caption=query_image.caption, ocr_text=query_image.ocr_text,
                                     attached=bool(vision))
    prompt = build_prompt(question, hits, template, query_context, attached_sha256=attached)
    messages = build_messages(prompt, config.system_prompt)
    # Images already described in the prompt (caption, OCR) need not be described twice for text-only models.
    model_images = images if vision else []
    return prompt, generate_with_images(backend, messages, model_images, question=question, config=config, stream=stream)


# -- caption enrichment -----------------------------------------------------------------------

#: Backend failures that mean no image can be captioned (as opposed to one image failing).
FATAL_CAPTION_ERRORS = ("unreachable", "model_not_found", "images_rejected", "runtime_missing", "bad_spec")


def caption_id(image_sha256: str, model: str, prompt: str) -> str:
    """Key of one generated caption: the image content, the model and the prompt that made it."""
    return stable_id("caption", image_sha256, model, sha256_hex(prompt))


@dataclass
class CaptionBatch:
    """What :func:`caption_images` made: ``image_captions`` rows, per-image failures (sha256 -> message),
    and ``fatal``, the error that stopped the batch (the images after it were not asked), if any."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    fatal: LlmError | None = None


def caption_images(backend: ChatBackend, blobs: dict[str, tuple[bytes, str]], prompt: str, *, max_tokens: int = 96,
                   temperature: float = 0.0, on_image: Callable[[int], None] | None = None) -> CaptionBatch:
    """Ask vision ``backend`` for a caption of each image (``{sha256: (bytes, MIME)}``), one request per image.

    A failure of one image (server error, empty answer) is recorded in ``errors`` and the next is
    asked; a failure that rules out every image (:data:`FATAL_CAPTION_ERRORS`) ends the batch in ``fatal``.
    """
    batch = CaptionBatch()
    options = GenerationOptions(max_tokens=max_tokens, temperature=temperature)
    for sha, (data, mime) in blobs.items():
        try:
            result = collect(backend.generate([ChatMessage("user", prompt)], [ImageInput(data=data, mime_type=mime)],
                                              stream=False, options=options))
        except LlmError as exc:
            if exc.kind in FATAL_CAPTION_ERRORS:
                batch.fatal = exc
                break
            batch.errors[sha] = str(exc)
            continue
        finally:
            if on_image is not None:
                on_image(1)
        caption = " ".join(result.text.split())
        if not caption:
            batch.errors[sha] = f"{backend.name}:{backend.model} returned an empty caption"
            continue
        batch.rows.append({
            "id": caption_id(sha, backend.model, prompt), "image_sha256": sha, "caption": caption, "backend": backend.name,
            "model": backend.model, "prompt": prompt, "prompt_sha256": sha256_hex(prompt),
            "completion_tokens": result.usage.completion_tokens, "seconds": result.usage.total_s,
            "created_at": datetime.now(timezone.utc),
        })
    return batch


def store_captions(store: IndexStore, rows: Sequence[dict[str, Any]]) -> int:
    """Write generated-caption rows (from :func:`caption_images`) to the ``image_captions`` table; returns how many."""
    return store.upsert(IMAGE_CAPTIONS, pa.Table.from_pylist(list(rows), schema=image_captions_schema()))


def stored_captions(store: IndexStore, sha256s: Iterable[str], model: str, prompt: str) -> dict[str, str]:
    """Captions already generated for ``sha256s`` by exactly ``model`` with exactly ``prompt``, by sha256."""
    ids = {caption_id(sha, model, prompt): sha for sha in dict.fromkeys(sha256s) if sha}
    if not ids or not store.has_table(IMAGE_CAPTIONS):
        return {}
    rows = store.read_where(IMAGE_CAPTIONS, ["id", "caption"], "id", ids).to_pylist()
    return {ids[row["id"]]: row["caption"] for row in rows}


@dataclass
class EnrichSummary:
    """What :func:`enrich_captions` did."""

    candidates: int = 0
    captioned: int = 0
    already_done: int = 0
    no_bytes: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def enrich_captions(store: IndexStore, image_table: str, backend: ChatBackend, *, prompt: str | None = None,
                    limit: int | None = None, max_tokens: int = 96, temperature: float = 0.0) -> EnrichSummary:
    """Caption images of ``image_table`` that have none (``caption_missing``) with a vision ``backend``.

    Captions go to the ``image_captions`` side table, one row per (image sha256, model, prompt), with
    provenance (backend, model, prompt, tokens, time), so the same picture on many pages is captioned
    once and re-runs skip what is done. Read them with :func:`generated_captions`. A backend that cannot
    see images raises ``LlmError`` (``images_rejected``); a failure on one image is counted, not raised,
    unless no image can be captioned (:data:`FATAL_CAPTION_ERRORS`). The ``index`` flow runs the same
    captioning as a stage (``images.caption_missing``); this works on an existing table.
    """
    if not backend.supports_images:
        raise LlmError("images_rejected", f"caption enrichment needs a vision model; {backend.name}:{backend.model} is text only")
    prompt = prompt or ImageConfig().caption_prompt
    summary = EnrichSummary()
    rows = store.read_table(image_table, ["image_sha256", "caption_missing", "status"],
                            where="caption_missing = true AND image_sha256 IS NOT NULL").to_pylist()
    shas = list(dict.fromkeys(r["image_sha256"] for r in rows if r["image_sha256"] and r.get("status") in (None, "ok")))
    summary.candidates = len(shas)
    done = stored_captions(store, shas, backend.model, prompt)
    todo = [sha for sha in shas if sha not in done]
    summary.already_done = len(done)
    if limit is not None:
        todo = todo[:limit]
    blobs = load_image_blobs(store, todo)
    summary.no_bytes = sum(1 for sha in todo if sha not in blobs)
    batch = caption_images(backend, {sha: blobs[sha] for sha in todo if sha in blobs}, prompt,
                           max_tokens=max_tokens, temperature=temperature)
    if batch.rows:
        store_captions(store, batch.rows)
    if batch.fatal is not None:
        raise batch.fatal
    summary.failed = len(batch.errors)
    summary.errors = [f"{sha[:12]}: {message}" for sha, message in batch.errors.items()]
    summary.captioned = len(batch.rows)
    return summary


def generated_captions(store: IndexStore, sha256s: Iterable[str], model: str | None = None) -> dict[str, str]:
    """Generated captions by image sha256 (the newest, of ``model`` when given), for the image text surrogate."""
    if not store.has_table(IMAGE_CAPTIONS):
        return {}
    rows = store.read_where(IMAGE_CAPTIONS, ["image_sha256", "caption", "model", "created_at"], "image_sha256", sha256s).to_pylist()
    newest: dict[str, dict] = {}
    for row in rows:
        if model and row["model"] != model:
            continue
        if row["image_sha256"] not in newest or row["created_at"] > newest[row["image_sha256"]]["created_at"]:
            newest[row["image_sha256"]] = row
    return {sha: row["caption"] for sha, row in newest.items()}
