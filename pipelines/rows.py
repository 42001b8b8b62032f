"""Pure conversions from pipeline records to table rows (Arrow tables in the store's schemas)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pyarrow as pa

from mmrag.records import Chunk, FetchResult, ImageInfo, ImageRef, ParsedDocument, join_section_path, sha256_hex, stable_id
from mmrag.pipelines import store
from mmrag.pipelines.embed import image_text_surrogate


@dataclass(frozen=True)
class ImageOccurrence:
    """One image place in a page with what fetching and decoding it found.

    ``status`` is the image's outcome: ``ok``, a fetch failure (``unreachable``, ``http_404``, …),
    a decode failure (``corrupt``, ``decompression_bomb``, …) or ``not_fetched``.
    """

    doc_url: str
    article_title: str
    ref: ImageRef
    status: str
    http_status: int | None = None
    error: str | None = None
    info: ImageInfo | None = None
    data: bytes | None = None
    published: str | None = None  # the page's publication date (YYYY-MM-DD)
    ocr_text: str | None = None  # text read from the pixels; None when OCR did not run
    ocr_pending: bool = False  # images.ocr_deferred: written before OCR read it; the enrichment pass will
    generated_caption: str | None = None  # a vision model's caption (caption enrichment); never the page's own caption
    nearby_text: str = ""  # the page's text around the image, when images.surrogate_context asks for it

    @property
    def id(self) -> str:
        """Stable id of this place: page, position and source URL."""
        return stable_id(self.doc_url, self.ref.position, self.ref.src)

    @property
    def surrogate_text(self) -> str:
        """The text standing for this image for text embedders: caption, alt, section title, generated caption
        (marked as such), OCR text and, when asked for, the text around it on the page."""
        generated = f"Generated caption: {self.generated_caption}" if self.generated_caption else ""
        extra = ". ".join(part for part in (generated, self.ocr_text or "", self.nearby_text) if part.strip())
        return image_text_surrogate(self.ref.caption, self.ref.alt, self.ref.section_path, extra=extra)

    @property
    def surrogate_hash(self) -> str:
        """What an image vector depends on: the surrogate text and the image bytes."""
        return sha256_hex(self.surrogate_text + "\x1f" + (self.info.sha256 if self.info else ""))


def published_value(published: str | None) -> date | None:
    """A parsed ``YYYY-MM-DD`` publication date as the ``published`` column's date; None when absent or malformed."""
    if not published:
        return None
    try:
        return date.fromisoformat(published[:10])
    except ValueError:  # parse only produces YYYY-MM-DD; anything else means "no date found"
        return None


def document_id(url: str) -> str:
    """Stable id of a document row."""
    return stable_id("document", url)


def document_row(
    *,
    url: str,
    origin: str,
    fetch: FetchResult,
    status: str,
    doc: ParsedDocument | None,
    n_chunks: int | None,
    n_images: int | None,
    run_id: str,
    indexed_at: datetime,
    previous: dict | None = None,
    error: str | None = None,
) -> dict:
    """A ``documents`` row. On failure, fields of the previous good state (hash, title, counts) are kept."""
    previous = previous or {}
    ok = doc is not None
    return {
        "id": document_id(url),
        "url": url,
        "origin": origin,
        "final_url": fetch.final_url,
        "canonical_url": doc.canonical_url if ok else previous.get("canonical_url"),
        "title": doc.title if ok else previous.get("title"),
        "published": published_value(doc.published) if ok else previous.get("published"),
        "status": status,
        "http_status": fetch.http_status,
        "error": error if error is not None else fetch.error,
        "content_type": fetch.content_type,
        "content_hash": fetch.body_sha256 if ok else previous.get("content_hash"),
        "etag": fetch.etag if ok else previous.get("etag"),
        "last_modified": fetch.last_modified if ok else previous.get("last_modified"),
        "fetched_at": fetch.fetched_at,
        "indexed_at": indexed_at if ok else previous.get("indexed_at"),
        "n_chunks": n_chunks if ok else previous.get("n_chunks"),
        "n_images": n_images if ok else previous.get("n_images"),
        "parse_warnings": list(doc.warnings) if ok else [],
        # The parsed article text: chunk offsets index into it, and labels are matched against it.
        "text": doc.text if ok else previous.get("text"),
        "run_id": run_id,
    }


def documents_table(rows: Sequence[dict]) -> pa.Table:
    """Arrow table of ``documents`` rows."""
    return pa.Table.from_pylist(list(rows), schema=store.documents_schema())


def chunks_table(chunks: Sequence[Chunk], vectors: np.ndarray, *, embedder: str, run_id: str) -> pa.Table:
    """Arrow table of chunk rows with their vectors (same order)."""
    dimension = vectors.shape[1]
    rows = [
        {
            "id": c.id,
            "doc_url": c.doc_url,
            "article_title": c.article_title,
            "published": published_value(c.published),
            "section_path": list(c.section_path),
            "section": c.section,
            "position": c.position,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "token_count": c.token_count,
            "truncated": c.truncated,
            "text": c.text,
            "search_text": c.search_text,
            "content_hash": c.content_hash,
            "strategy": c.strategy,
            "embedder": embedder,
            "run_id": run_id,
        }
        for c in chunks
    ]
    table = pa.Table.from_pylist(rows, schema=store.chunks_schema(dimension).remove(store.chunks_schema(dimension).get_field_index("vector")))
    return _with_vectors(table, vectors, store.chunks_schema(dimension))


def images_table(occurrences: Sequence[ImageOccurrence], vectors: np.ndarray, *, embedder: str,
                 vector_source: str | Sequence[str], run_id: str,
                 multivectors: Sequence[np.ndarray] | None = None) -> pa.Table:
    """Arrow table of image rows with their vectors (same order).

    ``vector_source`` is one value for every row or one per row (``pixels``, ``text_surrogate``,
    ``imported``). ``multivectors`` (one ``(n_i, d)`` array per row) adds the ``vector_multi`` column.
    """
    dimension = vectors.shape[1]
    sources = [vector_source] * len(occurrences) if isinstance(vector_source, str) else list(vector_source)
    rows = []
    for occ, source in zip(occurrences, sources, strict=True):
        info = occ.info
        rows.append(
            {
                "id": occ.id,
                "doc_url": occ.doc_url,
                "article_title": occ.article_title,
                "published": published_value(occ.published),
                "src_url": occ.ref.src,
                "image_sha256": info.sha256 if info and info.status == "ok" else None,
                "position": occ.ref.position,
                "section_path": list(occ.ref.section_path),
                "section": join_section_path(occ.ref.section_path),
                "caption": occ.ref.caption,
                "caption_source": occ.ref.caption_source,
                "caption_missing": occ.ref.caption_missing,
                "alt": occ.ref.alt,
                "title": occ.ref.title,
                "in_figure": occ.ref.in_figure,
                "status": occ.status,
                "http_status": occ.http_status,
                "error": occ.error,
                "format": info.format if info else None,
                "width": info.width if info else None,
                "height": info.height if info else None,
                "is_raster": info.is_raster if info else None,
                "ocr_text": occ.ocr_text,
                "ocr_pending": occ.ocr_pending,
                "generated_caption": occ.generated_caption,
                "nearby_text": occ.nearby_text,
                "surrogate_text": occ.surrogate_text,
                "surrogate_hash": occ.surrogate_hash,
                "vector_source": source,
                "embedder": embedder,
                "run_id": run_id,
            }
        )
    schema = store.images_schema(dimension, multivector=multivectors is not None)
    table = pa.Table.from_pylist(rows, schema=pa.schema([f for f in schema if f.name not in ("vector", store.MULTIVECTOR)]))
    if multivectors is not None:
        table = table.append_column(schema.field(store.MULTIVECTOR), multivector_array(multivectors, dimension))
    return _with_vectors(table, vectors, schema)


def multivector_array(multivectors: Sequence[np.ndarray], dimension: int) -> pa.ListArray:
    """A ``list<fixed_size_list<float32, dimension>>`` array: row i holds the rows of ``multivectors[i]``."""
    lengths = [len(m) for m in multivectors]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), type=pa.int32())
    flat = np.concatenate([np.asarray(m, dtype=np.float32).reshape(-1) for m in multivectors]) if multivectors else np.empty(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dimension)
    return pa.ListArray.from_arrays(offsets, inner)


def occurrence_from_row(row: dict, data: bytes | None = None) -> ImageOccurrence:
    """The :class:`ImageOccurrence` an image table row was written from (``data``: its bytes, when needed again),
    such that ``images_table`` of it writes the same row. Fields a row does not keep (the surrounding text before
    and after, frames, thumbnails) are left empty; the surrogate keeps its nearby text through ``nearby_text``."""
    ref = ImageRef(src=row["src_url"] or "", caption=row["caption"] or "", caption_source=row["caption_source"] or "none",
                   alt=row["alt"] or "", title=row["title"] or "", section_path=tuple(row["section_path"] or ()),
                   position=row["position"] or 0, in_figure=bool(row["in_figure"]))
    info = None
    if row["image_sha256"]:
        info = ImageInfo(status="ok", sha256=row["image_sha256"], byte_size=len(data) if data is not None else 0,
                         format=row["format"], width=row["width"], height=row["height"],
                         is_raster=row["is_raster"] if row["is_raster"] is not None else True)
    published = row["published"]
    return ImageOccurrence(
        doc_url=row["doc_url"], article_title=row["article_title"] or "", ref=ref, status=row["status"],
        http_status=row["http_status"], error=row["error"], info=info, data=data,
        published=published.isoformat() if published else None, ocr_text=row["ocr_text"],
        ocr_pending=bool(row.get("ocr_pending")), generated_caption=row["generated_caption"],
        nearby_text=row.get("nearby_text") or "",
    )


def image_blobs_table(occurrences: Sequence[ImageOccurrence]) -> pa.Table:
    """Arrow table of distinct image contents (first occurrence of each sha256 that decoded ``ok``)."""
    seen: dict[str, dict] = {}
    for occ in occurrences:
        info = occ.info
        if info is None or info.status != "ok" or occ.data is None or info.sha256 in seen:
            continue
        seen[info.sha256] = {
            "sha256": info.sha256,
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "frames": info.frames,
            "is_raster": info.is_raster,
            "byte_size": info.byte_size,
            "data": occ.data,
            "thumbnail_png": info.thumbnail_png,
            "raster_png": info.raster_png,
        }
    return pa.Table.from_pylist(list(seen.values()), schema=store.image_blobs_schema())


def _with_vectors(table: pa.Table, vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
    dimension = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    vector_column = pa.FixedSizeListArray.from_arrays(flat, dimension)
    index = schema.get_field_index("vector")
    return table.add_column(index, schema.field("vector"), vector_column).select(schema.names).cast(schema)
