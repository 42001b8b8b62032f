"""What every embedder is: the interface, the registry entry that builds one, and small helpers they share.

The bottom of the embedders: the registry (:mod:`mmrag.pipelines.embed`) and every embedder module
(MiniLM there, :mod:`mmrag.pipelines.clip_embedder`, :mod:`mmrag.pipelines.blip2_embedder`) build
on these, so the registry can import the embedder modules without them importing it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from mmrag.config import EmbedConfig


class EmbedderUnavailable(RuntimeError):
    """The embedder's weights or runtime cannot be loaded; the message says how to provide them."""


@runtime_checkable
class Embedder(Protocol):
    """What every embedder offers. ``embed_images`` exists only when ``"image" in modalities``."""

    name: str
    dimension: int
    modalities: frozenset[str]
    max_input_tokens: int

    def count_tokens(self, text: str) -> int:
        """Tokens the model's own tokenizer makes of ``text`` (special tokens included)."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32, L2-normalised."""
        ...


@dataclass(frozen=True)
class EmbedderSpec:
    """A registry entry: how to build an embedder and what it is, without loading it."""

    name: str
    modalities: frozenset[str]
    description: str
    factory: Callable[[EmbedConfig], Embedder]


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible to torch, else ``cpu``; anything else is kept."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Texts or images per forward pass on a CPU when ``embed.batch_size`` is not set. Larger batches run slower there:
#: 64 texts of 256 tokens keep ~300 MB of activations (attention scores, the 1536-wide feed-forward layer), far
#: beyond the caches; MiniLM over the colah posts' texts ran 1.4x faster at 8 than at 64, both batched by length
#: (``python -m bench.embed_batch_size``, bench/RESULTS.md).
CPU_BATCH_SIZE = 8
#: The same on a GPU, where a batch needs to be large to keep the device busy.
GPU_BATCH_SIZE = 64


def resolve_batch_size(cfg: EmbedConfig) -> int:
    """``embed.batch_size`` when set, else :data:`CPU_BATCH_SIZE` on a CPU and :data:`GPU_BATCH_SIZE` on a GPU."""
    if cfg.batch_size:
        return cfg.batch_size
    return CPU_BATCH_SIZE if resolve_device(cfg.device) == "cpu" else GPU_BATCH_SIZE


def iter_batches(items: Sequence, batch_size: int) -> Iterable[Sequence]:
    """Consecutive slices of ``items`` of at most ``batch_size``."""
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
