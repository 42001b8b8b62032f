"""Embedding inside the index flow: text and pixel embedding as Prefect tasks, grouped for threads or Dask,
with reuse of stored vectors.

Chunks and image surrogates are embedded as texts; with an embedder that embeds images (``clip``,
``blip2``) decoded images are embedded from their pixels (``vector_source = "pixels"``; BLIP-2 also
gives all 32 query vectors, stored in ``vector_multi``). Stored vectors are reused by content key:
``content_hash`` for chunks, ``image_sha256`` for pixel vectors, ``surrogate_hash`` for surrogate vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mmrag.config import ImageConfig, MmragConfig
from mmrag.progress import Progress
from mmrag.pipelines import incremental, rows, store
from mmrag.pipelines.embed import Embedder, embed_in_batches
from mmrag.pipelines.embedder_base import iter_batches, resolve_batch_size
from mmrag.pipelines.summary import IndexSummary
from mmrag.pipelines.blip2_embedder import mean_pooled

PIXELS = "pixels"
TEXT_SURROGATE = "text_surrogate"


@task(name="embed-texts", cache_policy=NO_CACHE)
def embed_texts(texts: list[str], embedder: Embedder, batch_size: int, progress: Progress, label: str) -> np.ndarray:
    """Embed texts in batches of similar length (see :func:`embed_in_batches`), advancing the progress bar per batch."""
    bar = progress.bar(label, total=len(texts))
    vectors = embed_in_batches(texts, embedder.embed_texts, batch_size=batch_size, dimension=embedder.dimension,
                               on_batch=bar.advance, by_length=True)
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


def pixel_batch(blobs: Sequence[bytes], embedder, image_cfg: ImageConfig, on_batch=None) -> PixelVectors:
    """Pixel vectors of ``blobs`` (BLIP-2-like embedders: the mean of the query vectors, and all of them)."""
    if not produces_multivectors(embedder):
        return PixelVectors(embedder.embed_image_bytes(blobs, image_cfg, on_batch=on_batch))

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
        result = pixel_batch(blobs, embedder, image_cfg, bar.advance)
    except ValueError:
        singles, errors = [], {}
        for i, blob in enumerate(blobs):
            try:
                singles.append(pixel_batch([blob], embedder, image_cfg))
            except ValueError as exc:
                errors[i] = str(exc).removeprefix("image 0: ")
                singles.append(PixelVectors(np.zeros((1, embedder.dimension), dtype=np.float32),
                                            [np.zeros((1, embedder.dimension), dtype=np.float32)]))
        result = concat_pixel_vectors(singles, multi=produces_multivectors(embedder))
        result.errors = errors
    bar.close()
    return result


def concat_pixel_vectors(parts: Sequence[PixelVectors], *, multi: bool) -> PixelVectors:
    """One :class:`PixelVectors` of consecutive parts (error indices shifted to their place)."""
    errors, offset = {}, 0
    for part in parts:
        errors.update({offset + i: message for i, message in part.errors.items()})
        offset += len(part.vectors)
    return PixelVectors(np.concatenate([p.vectors for p in parts]),
                        [m for p in parts for m in p.multivectors] if multi else None, errors)


def embed_in_tasks(items: list, embed_task, embedder, setting, config: MmragConfig, progress: Progress, label: str) -> list:
    """``embed_task(group, embedder, setting, progress, label)`` over groups of ``ops.embed_task_rows`` items:
    in turn on threads (torch uses every core), all at once on Dask; returns the groups' results in order."""
    size = config.ops.embed_task_rows
    groups = list(iter_batches(items, size))
    bar = progress.bar(label, total=len(items))
    if config.ops.task_runner != "dask":  # one counter over every group, so a long stage reports as one
        parts = [embed_task(g, embedder, setting, progress.within(bar), label) for g in groups]
        bar.close()
        return parts
    futures = [embed_task.submit(g, embedder, setting, progress, label) for g in groups]
    parts = []
    for future, group in zip(futures, groups):
        parts.append(future.result())
        bar.advance(len(group))
    bar.close()
    return parts


def embed_text_groups(texts: list[str], embedder, config: MmragConfig, progress: Progress, label: str) -> np.ndarray:
    """Embed ``texts`` in tasks of ``ops.embed_task_rows`` (see :func:`embed_in_tasks`)."""
    if not texts:
        return np.empty((0, embedder.dimension), dtype=np.float32)
    return np.concatenate(embed_in_tasks(texts, embed_texts, embedder, resolve_batch_size(config.embed), config, progress,
                                         label))


def vectors_for(keys: list[str], texts: list[str], table: str, key_column: str, embedder, index_store: store.IndexStore,
                 config: MmragConfig, progress: Progress, label: str, where: str | None = None) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (same order), reusing stored ones with the same ``key_column`` (among rows matching
    the SQL ``where``); returns (vectors, reused)."""
    if not keys:  # not even the dimension: asking would load a lazy embedder for nothing
        return np.empty((0, 0), dtype=np.float32), 0
    reusable = index_store.vectors_by_key(table, key_column, keys, where)
    todo_keys, todo_texts = incremental.texts_to_embed(keys, texts, reusable)
    computed = embed_text_groups(todo_texts, embedder, config, progress, label)
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


def image_vectors(images: list[rows.ImageOccurrence], embedder, index_store: store.IndexStore, image_table: str,
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
            parts = embed_in_tasks(blobs, embed_images, embedder, config.images, config, progress, "embed images (pixels)")
            computed = concat_pixel_vectors(parts, multi=multi)
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
    surrogate_vectors, surrogate_reused = vectors_for(
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
