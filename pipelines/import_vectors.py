"""Import precomputed vectors (e.g. the original design's CLIP index) into our chunk and image tables.

Input: a vectors file and a content file with one record per vector, in the same order.

* Vectors: ``.pt`` (a 2-D tensor, read with ``torch.load(..., weights_only=True)``) or ``.npy``
  (``numpy.load(..., allow_pickle=False)``), shape ``(n, d)``; stored as float32, unchanged
  (cosine similarity does not need them normalised).
* Content: a JSON list or JSON Lines of objects. Text records: ``text`` (required),
  ``article_title``, ``section``, optional ``doc_url``/``url`` and ``section_path``. Image records:
  ``image_path`` (or ``src_url``), ``caption``, ``article_title``, ``section``, optional ``doc_url``.
  Either kind may carry ``published``, the document's publication date (``YYYY-MM-DD``).

Rows are written to ``chunks__<label>__<chunking_key>`` or ``images__<label>`` (``label`` names
the vectors' embedder, e.g. ``clip-vit-b16-precomputed``) with every column of our schemas, so
search, filters and export treat them like indexed rows. Without a URL, a record's document is
``imported:<article title>`` (one document per title). Ids are the indexer's stable ids —
chunks: document, chunking key, position within the document, text hash; images: document,
position, source path — so importing the same files again changes nothing, and rows of the
imported documents that are no longer in the files are deleted.

Image files are looked up under ``images_root`` (default: the content file's folder); found ones
are verified like downloads (``inspect_image``) and their bytes stored in ``image_blobs``; missing
ones keep status ``not_fetched``. Source paths are stored as given (relative), so ids do not
depend on where the files sit.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from mmrag.config import ImageConfig
from mmrag.records import Chunk, ImageRef
from mmrag.pipelines import rows as row_builders
from mmrag.pipelines.store import IMAGE_BLOBS, IndexStore, chunks_table_name, images_table_name
from mmrag.pipelines.images import inspect_image
from mmrag.pipelines.maintenance import ensure_text_index

DEFAULT_CHUNKING_KEY = "paragraph"


class VectorImportError(ValueError):
    """The vectors or content cannot be imported; the message is one line."""


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote."""

    table: str
    target: str
    embedder: str
    rows: int
    dimension: int
    documents: int
    deleted: int
    images_found: int
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def load_vectors(path: str | Path) -> np.ndarray:
    """A float32 ``(n, d)`` array from a ``.pt`` tensor or ``.npy`` file."""
    path = Path(path)
    if not path.is_file():
        raise VectorImportError(f"vectors file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        import torch

        try:
            loaded = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
            raise VectorImportError(f"cannot read {path} as a torch tensor: {exc}".splitlines()[0]) from None
        if not isinstance(loaded, torch.Tensor):
            raise VectorImportError(f"{path} holds a {type(loaded).__name__}, not a tensor")
        array = loaded.detach().float().cpu().numpy()
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise VectorImportError(f"cannot read {path} as .npy: {exc}") from None
    else:
        raise VectorImportError(f"vectors file {path}: use a .pt or .npy file")
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise VectorImportError(f"{path}: expected a 2-D (rows, dimension) array, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def load_content(path: str | Path) -> list[dict[str, Any]]:
    """Records from a JSON list or a JSON Lines file."""
    path = Path(path)
    if not path.is_file():
        raise VectorImportError(f"content file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise VectorImportError(f"{path} is not JSON or JSON Lines: {exc}") from None
    if not all(isinstance(r, dict) for r in records):
        raise VectorImportError(f"{path}: every record must be a JSON object")
    return records


def record_doc_url(record: dict[str, Any]) -> str:
    """The record's document URL, or ``imported:<article title>`` when it has none."""
    url = record.get("doc_url") or record.get("url")
    if url:
        return str(url)
    return "imported:" + str(record.get("article_title") or "untitled")


def _section_path(record: dict[str, Any]) -> tuple[str, ...]:
    path = record.get("section_path")
    if isinstance(path, list):
        return tuple(str(p) for p in path)
    section = record.get("section")
    return (str(section),) if section else ()


def _published(record: dict[str, Any], number: int, kind: str) -> str | None:
    value = record.get("published")
    if value is None or value == "":
        return None
    if row_builders.published_value(str(value)) is None or len(str(value)) != 10:
        raise VectorImportError(f"{kind} record {number}: 'published' must be a date as YYYY-MM-DD, got {value!r}")
    return str(value)


def text_chunks(records: list[dict[str, Any]], *, chunking_key: str = DEFAULT_CHUNKING_KEY) -> list[Chunk]:
    """Chunk records of text content, positions counted per document in file order."""
    positions: Counter[str] = Counter()
    chunks = []
    for number, record in enumerate(records):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise VectorImportError(f"text record {number} has no 'text'")
        doc_url = record_doc_url(record)
        chunks.append(
            Chunk(
                doc_url=doc_url,
                article_title=str(record.get("article_title") or ""),
                section_path=_section_path(record),
                position=positions[doc_url],
                char_start=0,
                char_end=len(text),
                text=text,
                token_count=0,
                strategy=chunking_key,
                published=_published(record, number, "text"),
            )
        )
        positions[doc_url] += 1
    return chunks


def image_occurrences(
    records: list[dict[str, Any]], *, images_root: Path | None, image_cfg: ImageConfig, max_image_bytes: int
) -> list[row_builders.ImageOccurrence]:
    """Image occurrences of image records, with bytes verified when the file exists under ``images_root``."""
    positions: Counter[str] = Counter()
    occurrences = []
    for number, record in enumerate(records):
        src = record.get("image_path") or record.get("src_url")
        if not src:
            raise VectorImportError(f"image record {number} has no 'image_path' or 'src_url'")
        doc_url = record_doc_url(record)
        caption = str(record.get("caption") or "")
        ref = ImageRef(
            src=str(src),
            caption=caption,
            caption_source="imported" if caption else "none",
            alt=str(record.get("alt") or ""),
            title="",
            section_path=_section_path(record),
            position=positions[doc_url],
        )
        positions[doc_url] += 1
        file = (images_root / str(src)) if images_root is not None else None
        info = data = None
        status = "not_fetched"
        if file is not None and file.is_file():
            data = file.read_bytes()
            info = inspect_image(data, image_cfg, max_bytes=max_image_bytes, source_hint=str(src))
            status = info.status
        occurrences.append(
            row_builders.ImageOccurrence(
                doc_url=doc_url,
                article_title=str(record.get("article_title") or ""),
                ref=ref,
                status=status,
                info=info,
                data=data,
                error=None if status != "not_fetched" else f"image file not found under {images_root}",
                published=_published(record, number, "image"),
            )
        )
    return occurrences


def import_vectors(
    store: IndexStore,
    vectors_path: str | Path,
    content_path: str | Path,
    *,
    embedder: str,
    target: Literal["text", "images"],
    chunking_key: str = DEFAULT_CHUNKING_KEY,
    images_root: str | Path | None = None,
    image_cfg: ImageConfig | None = None,
    max_image_bytes: int = 20 * 1024 * 1024,
) -> ImportSummary:
    """Write precomputed vectors and their content as chunk or image rows; returns what was written.

    ``embedder`` labels the vectors (table name and ``embedder`` column); ``target`` chooses the
    chunk table (``chunks__<embedder>__<chunking_key>``) or the image table (``images__<embedder>``).
    Upserts by stable id, deletes stale rows of the imported documents, records an ``import`` run.
    """
    if target not in ("text", "images"):
        raise VectorImportError(f"target must be text or images, got {target!r}")
    if not embedder or "__" in embedder:
        raise VectorImportError(f"embedder label {embedder!r}: give a non-empty name without '__'")
    vectors = load_vectors(vectors_path)
    records = load_content(content_path)
    if len(records) != len(vectors):
        raise VectorImportError(f"{content_path} has {len(records)} records but {vectors_path} has {len(vectors)} vectors")
    started = datetime.now(timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-import-" + uuid.uuid4().hex[:6]
    images_found = 0
    if target == "text":
        name = chunks_table_name(embedder, chunking_key)
        table = row_builders.chunks_table(text_chunks(records, chunking_key=chunking_key), vectors, embedder=embedder, run_id=run_id)
        table = table.set_column(
            table.schema.get_field_index("token_count"), table.schema.field("token_count"),
            pa.nulls(table.num_rows, pa.int32()),
        )
    else:
        name = images_table_name(embedder)
        root = Path(images_root) if images_root is not None else Path(content_path).parent
        occurrences = image_occurrences(records, images_root=root, image_cfg=image_cfg or ImageConfig(),
                                        max_image_bytes=max_image_bytes)
        images_found = sum(1 for o in occurrences if o.data is not None)
        blobs = row_builders.image_blobs_table(occurrences)
        if blobs.num_rows:
            store.upsert(IMAGE_BLOBS, blobs, key="sha256", update=False)
        table = row_builders.images_table(occurrences, vectors, embedder=embedder, vector_source="imported", run_id=run_id)
    ids = set(table.column("id").to_pylist())
    doc_urls = sorted(set(table.column("doc_url").to_pylist()))
    if store.has_table(name):
        stored = int(store.open_table(name).schema.field("vector").type.list_size)
        if stored != vectors.shape[1]:
            raise VectorImportError(f"table {name} stores {stored}-d vectors; these are {vectors.shape[1]}-d")
    stale = [i for by_id in store.ids_by_doc(name, doc_urls).values() for i in by_id if i not in ids]
    store.delete_where_in(name, "id", stale)
    store.upsert(name, table)
    ensure_text_index(store, name)  # hybrid search reads it; queries never build it
    summary = ImportSummary(
        table=name, target=target, embedder=embedder, rows=table.num_rows, dimension=int(vectors.shape[1]),
        documents=len(doc_urls), deleted=len(stale), images_found=images_found, run_id=run_id,
    )
    store.record_run(
        {
            "run_id": run_id,
            "kind": "import",
            "started_at": started,
            "finished_at": datetime.now(timezone.utc),
            "sources": [str(vectors_path), str(content_path)],
            "config": {"embedder": embedder, "target": target, "chunking_key": chunking_key},
            "summary": summary.to_dict(),
            "table_versions": store.current_versions([name]),
        }
    )
    return summary

