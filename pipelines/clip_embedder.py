"""The ``clip`` embedder: text and images in one space through a Hugging Face CLIP checkpoint.

``transformers.CLIPModel`` + ``CLIPProcessor`` (the processor's image half works without
torchvision: transformers picks its Pillow backend). Text and image features go through the
projection heads (``get_text_features`` / ``get_image_features``) and come back L2-normalised
float32, so every direction (text→text, text→image, image→image, image→text) is a dot product.
:attr:`ClipEmbedder.logit_scale` × cosine is what CLIP was trained to softmax over
(:meth:`ClipEmbedder.score`, zero-shot classification).

Weights are never fetched at run time: ``EmbedConfig.model_path`` (a directory), else
``EmbedConfig.checkpoint`` or :data:`DEFAULT_CHECKPOINT` looked up in the local Hugging Face
cache. Missing weights fail at once with :class:`~mmrag.pipelines.embed.EmbedderUnavailable` saying
where we looked and how to provide them (``mmrag models pull clip --out DIR`` on a machine with
network).

Texts over :attr:`ClipEmbedder.max_input_tokens` (77 for OpenAI CLIP) should have been split by
the chunker; any that still arrive are truncated, and :meth:`ClipEmbedder.embed_texts_with_truncation`
says which were (``embed_texts`` keeps the flags of its last call in ``last_truncated``).

Images are decoded and preprocessed one batch ahead of the model in a worker thread
(:func:`prefetch_batches`), so the model never waits for Pillow between batches.

The checkpoint lookup, prefetching and batching helpers here are shared with
:mod:`mmrag.pipelines.blip2_embedder`. torch and transformers are imported only when an embedder is built.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from scipy.special import softmax  # zero-shot probabilities (re-exported for the CLI)

from mmrag.config import EmbedConfig, ImageConfig
from mmrag.pipelines.embedder_base import (
    EmbedderSpec,
    EmbedderUnavailable,
    iter_batches,
    resolve_batch_size,
    resolve_device,
)
from mmrag.pipelines.images import load_rgb

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_CHECKPOINT = "openai/clip-vit-base-patch16"
# CLIP training clamps the learned temperature at 100; checkpoints sit at (or just under) it.
MAX_LOGIT_SCALE = 100.0

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


# --------------------------------------------------------------------------- checkpoints


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory in force (``HF_HUB_CACHE`` / ``HF_HOME``), read at call time."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of ``repo_id`` in the Hugging Face cache, or None; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, ValueError):
        return None
    return snapshot if (snapshot / "config.json").is_file() else None


def how_to_provide(embedder_name: str) -> str:
    """The one sentence that tells a user how to make an embedder's weights available offline."""
    return (
        f"provide the weights with --model-path DIR (a Hugging Face model directory with config.json and the weights), "
        f"by putting the checkpoint in the Hugging Face cache, or by running "
        f"`mmrag models pull {embedder_name} --out DIR` on a machine with network and passing --model-path DIR"
    )


def locate_checkpoint(embedder_name: str, default_checkpoint: str, cfg: EmbedConfig) -> Path:
    """The local directory holding the embedder's checkpoint, found without any network access.

    Order: ``cfg.model_path``; ``cfg.checkpoint`` (or ``default_checkpoint``) when it names a
    directory; else that repo id in the local Hugging Face cache. Raises
    :class:`EmbedderUnavailable` with a one-line message naming the model, where it looked and
    how to provide it.
    """
    if cfg.model_path:
        model_dir = Path(cfg.model_path).expanduser()
        if (model_dir / "config.json").is_file():
            return model_dir
        raise EmbedderUnavailable(
            f"embedder {embedder_name!r}: no checkpoint at --model-path {model_dir} "
            f"({'no config.json in it' if model_dir.is_dir() else 'no such directory'}); {how_to_provide(embedder_name)}"
        )
    checkpoint = cfg.checkpoint or default_checkpoint
    as_dir = Path(checkpoint).expanduser()
    if (as_dir / "config.json").is_file():
        return as_dir
    snapshot = cached_snapshot(checkpoint)
    if snapshot is not None:
        return snapshot
    raise EmbedderUnavailable(
        f"embedder {embedder_name!r}: weights for {checkpoint} not found: no --model-path given and the Hugging Face "
        f"cache ({hf_cache_dir()}) has no snapshot of it (mmrag never downloads at run time); "
        f"{how_to_provide(embedder_name)}"
    )


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` as a torch dtype."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"unsupported dtype {name!r}; use one of {', '.join(dtypes)}")
    return dtypes[name]


def max_text_tokens(tokenizer: Any, position_embeddings: int) -> int:
    """The longest input the text tower takes: the tokenizer's limit when it is set, capped by the positions."""
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared <= position_embeddings:
        return declared
    return int(position_embeddings)


class _DropLoadReport(logging.Filter):
    """Drops transformers' per-key load report (it lists every weight of the tower we do not load)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def load_pretrained(model_class: Any, model_dir: Path, dtype: torch.dtype) -> Any:
    """``model_class.from_pretrained`` from a local directory, refusing a checkpoint that lacks weights it needs.

    Weights the class does not use (BLIP-2's matching head, the other tower) are skipped quietly;
    missing ones raise ``ValueError`` rather than leaving randomly initialised layers in place.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    report_logger.addFilter(report_filter)
    try:
        model, loading_info = model_class.from_pretrained(
            str(model_dir), local_files_only=True, dtype=dtype, output_loading_info=True
        )
    finally:
        report_logger.removeFilter(report_filter)
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} weight(s) {model_class.__name__} needs, e.g. {missing[0]!r}"
        )
    return model


def require_model_type(embedder_name: str, model_dir: Path, expected: str) -> None:
    """Raise :class:`EmbedderUnavailable` unless ``model_dir/config.json`` declares ``model_type == expected``."""
    try:
        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise load_failure(embedder_name, model_dir, exc) from exc
    if model_type != expected:
        raise EmbedderUnavailable(
            f"embedder {embedder_name!r}: the checkpoint at {model_dir} is a {model_type or 'unknown'!r} model, "
            f"not {expected!r}; {how_to_provide(embedder_name)}"
        )


def load_failure(embedder_name: str, model_dir: Path, exc: BaseException) -> EmbedderUnavailable:
    """An :class:`EmbedderUnavailable` for a checkpoint directory that exists but does not load."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return EmbedderUnavailable(
        f"embedder {embedder_name!r}: cannot load the checkpoint at {model_dir}: {type(exc).__name__}: {reason}"
    )


# --------------------------------------------------------------------------- batching


def prefetch_batches(
    items: Sequence[Item], batch_size: int, prepare: Callable[[Sequence[Item]], Prepared]
) -> Iterator[Prepared]:
    """``prepare(batch)`` for consecutive batches of ``items``, each prepared in a worker thread
    while the caller still works on the previous one (one batch of look-ahead).

    An exception raised by ``prepare`` surfaces in the caller when that batch is reached.
    """
    batches = list(iter_batches(items, batch_size))
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmrag-prefetch") as pool:
        pending = pool.submit(prepare, batches[0])
        for following in batches[1:]:
            ready = pending.result()
            pending = pool.submit(prepare, following)
            yield ready
        yield pending.result()


def decode_images(blobs: Sequence[bytes], image_cfg: ImageConfig, first_index: int = 0) -> list[Image.Image]:
    """RGB images from encoded bytes; a blob that does not decode raises ``ValueError("image N: reason")``."""
    images = []
    for offset, blob in enumerate(blobs):
        try:
            images.append(load_rgb(blob, image_cfg))
        except ValueError as exc:
            raise ValueError(f"image {first_index + offset}: {exc}") from None
    return images


def l2_normalised(features: torch.Tensor) -> np.ndarray:
    """float32 numpy rows (along the last axis) of unit length."""
    import torch

    vectors = torch.nn.functional.normalize(features.detach().float(), dim=-1)
    return vectors.cpu().numpy().astype(np.float32, copy=False)


def _pooled(output: Any) -> torch.Tensor:
    """Projected features from ``get_*_features``: a tensor (transformers 4) or ``.pooler_output`` (5)."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


# --------------------------------------------------------------------------- the embedder


class TextImageEmbedder:
    """Shared machinery of the torch text+image embedders: tokenising under a lock, truncation
    records, batched text and prefetched image embedding, zero-shot logits.

    Subclasses set ``name``, ``dimension``, ``max_input_tokens``, ``logit_scale``, ``_tokenizer``,
    ``_image_processor``, ``_model_dtype`` and implement ``_text_vectors`` and ``_image_vectors``.
    """

    modalities = frozenset({"text", "image"})
    name: str
    dimension: int
    max_input_tokens: int
    logit_scale: float
    _tokenizer: Any
    _image_processor: Any
    _model_dtype: torch.dtype

    def __init__(self, cfg: EmbedConfig):
        self.batch_size = resolve_batch_size(cfg)
        self.device = resolve_device(cfg.device)
        self.dtype = cfg.dtype
        # Fast tokenizers raise "Already borrowed" when threads change truncation/padding state concurrently.
        self._tokenizer_lock = threading.Lock()
        self.last_truncated: list[bool] = []

    # ---- text

    def count_tokens(self, text: str) -> int:
        """Tokens the model's own tokenizer makes of ``text``, start/end tokens included, before truncation."""
        with self._tokenizer_lock:
            return len(self._tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])

    def embed_texts_with_truncation(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """``(len(texts), dimension)`` float32 unit vectors, and per text whether it was cut to ``max_input_tokens``."""
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        truncated: list[bool] = []
        done = 0
        for batch in iter_batches(list(texts), self.batch_size):
            with self._tokenizer_lock:
                full = self._tokenizer(list(batch), add_special_tokens=True, truncation=False, verbose=False)
                encoded = self._tokenizer(
                    list(batch), padding=True, truncation=True, max_length=self.max_input_tokens, return_tensors="pt"
                )
            truncated.extend(len(ids) > self.max_input_tokens for ids in full["input_ids"])
            vectors[done : done + len(batch)] = self._text_vectors(encoded.to(self.device))
            done += len(batch)
        return vectors, truncated

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32 unit vectors.

        Which texts were truncated is left in ``last_truncated`` (this call's flags; from several
        threads at once use :meth:`embed_texts_with_truncation`, which returns them).
        """
        vectors, self.last_truncated = self.embed_texts_with_truncation(texts)
        return vectors

    # ---- images

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's preprocessing (resize, crop, normalise) of PIL images, as a float tensor batch."""
        return self._image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def embed_images(
        self, images: Sequence[Image.Image], *, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``(len(images), dimension)`` float32 unit vectors; preprocessing runs one batch ahead in a thread."""
        return self._embed_prepared(prefetch_batches(images, self.batch_size, self.pixel_values), on_batch)

    def embed_image_bytes(
        self,
        blobs: Sequence[bytes],
        image_cfg: ImageConfig | None = None,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Like :meth:`embed_images` from encoded bytes: batch i+1 is decoded (``load_rgb``) and
        preprocessed in a worker thread while the model runs batch i.

        Raises ``ValueError("image N: reason")`` for bytes that do not decode (verify images first).
        """
        return self._embed_prepared(self._prefetch_decoded(blobs, image_cfg), on_batch)

    def _prefetch_decoded(self, blobs: Sequence[bytes], image_cfg: ImageConfig | None) -> Iterator[torch.Tensor]:
        image_cfg = image_cfg or ImageConfig()

        def prepare(numbered: Sequence[tuple[int, bytes]]) -> torch.Tensor:
            return self.pixel_values(decode_images([blob for _, blob in numbered], image_cfg, numbered[0][0]))

        return prefetch_batches(list(enumerate(blobs)), self.batch_size, prepare)

    def _embed_prepared(self, prepared: Iterator[torch.Tensor], on_batch: Callable[[int], None] | None) -> np.ndarray:
        parts: list[np.ndarray] = []
        for pixel_values in prepared:
            parts.append(self._image_vectors(pixel_values.to(self.device, self._model_dtype)))
            if on_batch:
                on_batch(len(pixel_values))
        if not parts:
            return np.empty((0, *self._image_vector_shape), dtype=np.float32)
        return np.concatenate(parts)

    # ---- scoring

    def score(self, text_vecs: np.ndarray, image_vecs: np.ndarray) -> np.ndarray:
        """``logit_scale`` × cosine, ``(n_texts, n_images)`` (1-D inputs count as one row)."""
        return self.logit_scale * (np.atleast_2d(text_vecs) @ np.atleast_2d(image_vecs).T)

    def zero_shot_logits(self, images: Sequence[Image.Image], labels: Sequence[str]) -> np.ndarray:
        """``(n_images, n_labels)`` logits of each image against each label text (softmax them for probabilities)."""
        return self.score(self.embed_texts(labels), self.embed_images(images)).T

    # ---- model-specific

    @property
    def _image_vector_shape(self) -> tuple[int, ...]:
        """Shape of what ``_image_vectors`` returns per image."""
        return (self.dimension,)

    def _text_vectors(self, encoded: Any) -> np.ndarray:
        raise NotImplementedError

    def _image_vectors(self, pixel_values: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


class ClipEmbedder(TextImageEmbedder):
    """CLIP text and image towers with their projection heads, loaded from a local checkpoint directory."""

    def __init__(self, model_dir: Path, cfg: EmbedConfig, name: str = "clip"):
        super().__init__(cfg)
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.name = name
        self.model_dir = model_dir
        self._model_dtype = torch_dtype(cfg.dtype)
        require_model_type(name, model_dir, "clip")
        try:
            processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)
            model = load_pretrained(CLIPModel, model_dir, self._model_dtype)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise load_failure(name, model_dir, exc) from exc
        self._tokenizer = processor.tokenizer
        self._image_processor = processor.image_processor
        self._model = model.to(self.device).eval()
        self.dimension = int(model.config.projection_dim)
        self.max_input_tokens = max_text_tokens(self._tokenizer, model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            self.logit_scale = float(min(model.logit_scale.float().exp().item(), MAX_LOGIT_SCALE))

    def _text_vectors(self, encoded: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self._model.get_text_features(
                input_ids=encoded["input_ids"], attention_mask=encoded.get("attention_mask")
            )
        return l2_normalised(_pooled(features))

    def _image_vectors(self, pixel_values: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self._model.get_image_features(pixel_values=pixel_values)
        return l2_normalised(_pooled(features))


def text_image_spec(name: str, embedder_class: type, default_checkpoint: str, description: str) -> EmbedderSpec:
    """The registry entry of a text+image embedder built by ``embedder_class(checkpoint_dir, cfg)``; the checkpoint
    is found by :func:`locate_checkpoint` (``--model-path``, the Hugging Face cache, else a clear error)."""
    return EmbedderSpec(
        name=name,
        modalities=frozenset({"text", "image"}),
        description=description,
        factory=lambda cfg: embedder_class(locate_checkpoint(name, default_checkpoint, cfg), cfg),
    )


#: registered as ``clip`` by :mod:`mmrag.pipelines.embed`
SPEC = text_image_spec(
    "clip", ClipEmbedder, DEFAULT_CHECKPOINT,
    f"CLIP ({DEFAULT_CHECKPOINT} by default; any CLIP checkpoint via --model-path): text and images in one space, "
    "77-token texts",
)
