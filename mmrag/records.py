"""Plain records passed between pipeline stages.

Stages are pure functions over these (parse, chunk, inspect) or small edge objects that
produce them (fetch, embed, store). Ids are stable: the same input gives the same id on
every run and machine, which is what makes upserts and "unchanged" detection work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

SECTION_SEPARATOR = " > "


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of bytes, or of a string encoded as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def stable_id(*parts: object) -> str:
    """A short stable id (32 hex chars) derived from the given parts, in order."""
    joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return sha256_hex(joined)[:32]


def join_section_path(path: tuple[str, ...] | list[str]) -> str:
    """``("Intro", "Details")`` -> ``"Intro > Details"``."""
    return SECTION_SEPARATOR.join(path)


@dataclass(frozen=True)
class FetchResult:
    """Outcome of one request (or one local file read).

    ``status`` is ``ok`` or ``not_modified`` on success, otherwise a failure code:
    ``http_<code>`` (``http_404``, ``http_500``), ``timeout``, ``unreachable``, ``too_large``,
    ``bad_content_type``, ``redirect_loop``, ``too_many_redirects``, ``robots_disallowed``,
    ``invalid_url``, ``not_found`` (local file missing), ``error``.
    """

    url: str
    final_url: str
    status: str
    http_status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    body_sha256: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    fetched_at: datetime | None = None
    attempts: int = 1
    elapsed_s: float = 0.0
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        """True when a body (new or cached) is available."""
        return self.status == "ok" and self.body is not None


@dataclass(frozen=True)
class TextBlock:
    """One block of article text (paragraph, list, pre, blockquote, table) under its section path.

    ``char_start``/``char_end`` are offsets into :attr:`ParsedDocument.text`.
    """

    kind: str
    text: str
    section_path: tuple[str, ...]
    char_start: int
    char_end: int


@dataclass(frozen=True)
class ImageRef:
    """One place an image appears in a document.

    ``src`` is absolute (resolved against the page URL); for ``srcset``/``<picture>`` it is the
    largest candidate. ``caption_source`` is ``figcaption``, ``sibling`` (a caption-classed element
    right after the image or its image-only wrapper, e.g. ``<div class="caption">``), ``alt``,
    ``title`` or ``none``. ``context_before``/``context_after`` are the nearest article text before
    and after the image in its section (the image's own caption excluded), whitespace-normalised
    and clipped to about 400 characters each (the end of the text before, the start of the text
    after); ``""`` when there is none.
    """

    src: str
    caption: str
    caption_source: str
    alt: str
    title: str
    section_path: tuple[str, ...]
    position: int
    in_figure: bool = False
    context_before: str = ""
    context_after: str = ""

    @property
    def caption_missing(self) -> bool:
        """True when no caption, alt or title text exists for this image."""
        return self.caption_source == "none"

    @property
    def context(self) -> str:
        """The text around the image: ``context_before`` and ``context_after`` joined by a newline ("" when both are empty)."""
        return "\n".join(part for part in (self.context_before, self.context_after) if part)


@dataclass(frozen=True)
class ParsedDocument:
    """Main content of one article page, ready for chunking."""

    url: str
    title: str
    canonical_url: str | None
    text: str
    blocks: tuple[TextBlock, ...]
    images: tuple[ImageRef, ...]
    language: str | None = None
    published: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of text with everything needed to cite it."""

    doc_url: str
    article_title: str
    section_path: tuple[str, ...]
    position: int
    char_start: int
    char_end: int
    text: str
    token_count: int
    strategy: str
    truncated: bool = False
    published: str | None = None  # the document's publication date (YYYY-MM-DD), copied so filters need no join
    context: str = ""  # what the embedded text carries before the chunk's own words (title and section), or ""

    @property
    def search_text(self) -> str:
        """The text that is embedded and full-text indexed: the context, then the chunk's own words."""
        return f"{self.context}\n{self.text}" if self.context else self.text

    @property
    def content_hash(self) -> str:
        """Hash of what the embedding depends on: the chunk text, with its context when it has one."""
        return sha256_hex(self.search_text)

    @property
    def id(self) -> str:
        """Stable id: document, chunking setting, position and content."""
        return stable_id(self.doc_url, self.strategy, self.position, self.content_hash)

    @property
    def section(self) -> str:
        """The section path joined with `` > ``."""
        return join_section_path(self.section_path)


@dataclass(frozen=True)
class ImageInfo:
    """What decoding an image's bytes found.

    ``status``: ``ok``, ``corrupt``, ``too_large`` (bytes), ``decompression_bomb`` (pixels),
    ``unsupported``. SVGs are ``ok`` with ``is_raster=False`` unless rasterised.
    """

    status: str
    sha256: str
    byte_size: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    is_raster: bool = True
    frames: int = 1
    error: str | None = None
    thumbnail_png: bytes | None = None
    raster_png: bytes | None = field(default=None, repr=False)
