"""Pure conversions from pipeline records to table rows (Arrow tables in the store's schemas)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from mmrag.records import Chunk, FetchResult, ImageInfo, ImageRef, ParsedDocument, join_section_path, sha256_hex, stable_id
from pipelines import store
from pipelines.embed import image_text_surrogate


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

    @property
    def id(self) -> str:
        """Stable id of this place: page, position and source URL."""
        return stable_id(self.doc_url, self.ref.position, self.ref.src)

    @property
    def surrogate_text(self) -> str:
        """The text standing for this image for text embedders."""
        return image_text_surrogate(self.ref.caption, self.ref.alt, self.ref.section_path)

    @property
    def surrogate_hash(self) -> str:
        """What an image vector depends on: the surrogate text and the image bytes."""
        return sha256_hex(self.surrogate_text + "\x1f" + (self.info.sha256 if self.info else ""))


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
            "section_path": list(c.section_path),
            "section": c.section,
            "position": c.position,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "token_count": c.token_count,
            "truncated": c.truncated,
            "text": c.text,
            "content_hash": c.content_hash,
            "strategy": c.strategy,
            "embedder": embedder,
            "run_id": run_id,
        }
        for c in chunks
    ]
    table = pa.Table.from_pylist(rows, schema=store.chunks_schema(dimension).remove(store.chunks_schema(dimension).get_field_index("vector")))
    return _with_vectors(table, vectors, store.chunks_schema(dimension))


def images_table(occurrences: Sequence[ImageOccurrence], vectors: np.ndarray, *, embedder: str, vector_source: str, run_id: str) -> pa.Table:
    """Arrow table of image rows with their vectors (same order)."""
    dimension = vectors.shape[1]
    rows = []
    for occ in occurrences:
        info = occ.info
        rows.append(
            {
                "id": occ.id,
                "doc_url": occ.doc_url,
                "article_title": occ.article_title,
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
                "surrogate_text": occ.surrogate_text,
                "surrogate_hash": occ.surrogate_hash,
                "vector_source": vector_source,
                "embedder": embedder,
                "run_id": run_id,
            }
        )
    schema = store.images_schema(dimension)
    table = pa.Table.from_pylist(rows, schema=schema.remove(schema.get_field_index("vector")))
    return _with_vectors(table, vectors, schema)


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
    return table.add_column(index, schema.field("vector"), vector_column).cast(schema)
