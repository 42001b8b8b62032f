"""The ``blip2`` embedder: BLIP-2's Q-Former image-text contrastive (ITC) space.

Text goes through ``transformers.Blip2TextModelWithProjection`` (the Q-Former as a text encoder,
no image): its ``text_embeds`` are ``(batch, tokens, d)`` and the text vector is the first
([CLS]) position, as in BLIP-2's retrieval model. Images go through
``Blip2VisionModelWithProjection``: the ViT, then the Q-Former's learned query tokens
cross-attend to it, giving ``image_embeds`` of ``(batch, n_queries, d)`` — 32 vectors of
d = 256 per image for ``Salesforce/blip2-itm-vit-g`` (the default checkpoint).

Two ways to compare a text with an image, and they differ:

* **Max over queries** (:meth:`Blip2Embedder.itm_score`, from :meth:`embed_images_multi`):
  the cosine of the text with each of the 32 query vectors, maximum taken. This is how BLIP-2
  was trained and how ``Blip2ForImageTextRetrieval(..., use_image_text_matching_head=False)``
  scores (its "ITC" score; the cross-attending ITM head is not used here). It needs all 32
  vectors per image kept.
* **Mean-pooled** (:meth:`Blip2Embedder.embed_images`): the mean of the 32 unit query vectors,
  re-normalised — one vector per image, which is what a single-vector index (LanceDB column)
  stores and what the original design used. It ranks differently from max-over-queries: a text
  that matches one query strongly but the others weakly scores lower. Use it to recall
  candidates, and max-over-queries to re-rank them when the exact BLIP-2 score matters.

:attr:`Blip2Embedder.logit_scale` is ``1 / 0.07``, BLIP-2's initial temperature: the Hugging
Face checkpoint does not carry the learned one, so softmax probabilities from it (zero-shot
classification) are calibrated only roughly; their ranking is exact.

Weights are found like CLIP's (:func:`mmrag.pipelines.clip_embedder.locate_checkpoint`): ``--model-path``,
else the checkpoint in the local Hugging Face cache, never downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrag.config import EmbedConfig, ImageConfig
from mmrag.pipelines.clip_embedder import (
    TextImageEmbedder,
    l2_normalised,
    load_failure,
    load_pretrained,
    max_text_tokens,
    text_image_spec,
    require_model_type,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_CHECKPOINT = "Salesforce/blip2-itm-vit-g"
# LAVIS initialises BLIP-2's contrastive temperature at 0.07; the learned value is not in the HF checkpoint.
DEFAULT_LOGIT_SCALE = 1 / 0.07


def max_query_cosine(text_vecs: np.ndarray, image_multi: np.ndarray) -> np.ndarray:
    """``(n_texts, n_images)``: for each text and image, the largest cosine over the image's query vectors.

    ``text_vecs`` is ``(d,)`` or ``(n_texts, d)``; ``image_multi`` is ``(n_queries, d)`` or
    ``(n_images, n_queries, d)``; all unit vectors.
    """
    texts = np.atleast_2d(text_vecs)
    images = image_multi[None] if image_multi.ndim == 2 else image_multi
    return np.einsum("td,iqd->tiq", texts, images).max(axis=-1)


class Blip2Embedder(TextImageEmbedder):
    """BLIP-2 Q-Former text and image encoders with their projections, from a local checkpoint directory."""

    def __init__(self, model_dir: Path, cfg: EmbedConfig, name: str = "blip2"):
        super().__init__(cfg)
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            Blip2TextModelWithProjection,
            Blip2VisionModelWithProjection,
        )

        self.name = name
        self.model_dir = model_dir
        self._model_dtype = torch_dtype(cfg.dtype)
        require_model_type(name, model_dir, "blip-2")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self._image_processor = AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
            text_model = load_pretrained(Blip2TextModelWithProjection, model_dir, self._model_dtype)
            vision_model = load_pretrained(Blip2VisionModelWithProjection, model_dir, self._model_dtype)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise load_failure(name, model_dir, exc) from exc
        self._text_model = text_model.to(self.device).eval()
        self._vision_model = vision_model.to(self.device).eval()
        config = text_model.config
        self.dimension = int(config.image_text_hidden_size)
        self.n_queries = int(config.num_query_tokens)
        self.max_input_tokens = max_text_tokens(self._tokenizer, config.qformer_config.max_position_embeddings)
        self.logit_scale = DEFAULT_LOGIT_SCALE

    # ---- images

    def embed_images_multi(
        self, images: Sequence[Image.Image], *, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``(len(images), n_queries, dimension)`` float32: every query vector of every image, each of unit length."""
        return super().embed_images(images, on_batch=on_batch)

    def embed_image_bytes_multi(
        self,
        blobs: Sequence[bytes],
        image_cfg: ImageConfig | None = None,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """:meth:`embed_images_multi` from encoded bytes, decoding one batch ahead in a worker thread."""
        return super().embed_image_bytes(blobs, image_cfg, on_batch=on_batch)

    def embed_images(
        self, images: Sequence[Image.Image], *, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``(len(images), dimension)`` float32: the mean of each image's query vectors, re-normalised."""
        return mean_pooled(self.embed_images_multi(images, on_batch=on_batch))

    def embed_image_bytes(
        self,
        blobs: Sequence[bytes],
        image_cfg: ImageConfig | None = None,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """:meth:`embed_images` (mean-pooled) from encoded bytes, decoding one batch ahead in a worker thread."""
        return mean_pooled(self.embed_image_bytes_multi(blobs, image_cfg, on_batch=on_batch))

    # ---- scoring

    def itm_score(self, text_vec: np.ndarray, image_multi: np.ndarray) -> np.ndarray:
        """BLIP-2's image-text score: max over the image's query vectors of the cosine with the text.

        Shapes as in :func:`max_query_cosine`; returns ``(n_texts, n_images)``.
        """
        return max_query_cosine(text_vec, image_multi)

    def score(self, text_vecs: np.ndarray, image_vecs: np.ndarray) -> np.ndarray:
        """``logit_scale`` × similarity, ``(n_texts, n_images)``: max over queries for 3-D ``image_vecs``
        (from :meth:`embed_images_multi`), plain cosine for mean-pooled 2-D ones."""
        if image_vecs.ndim == 3:
            return self.logit_scale * max_query_cosine(text_vecs, image_vecs)
        return super().score(text_vecs, image_vecs)

    def zero_shot_logits(self, images: Sequence[Image.Image], labels: Sequence[str]) -> np.ndarray:
        """``(n_images, n_labels)`` logits with BLIP-2's max-over-queries score."""
        return self.score(self.embed_texts(labels), self.embed_images_multi(images)).T

    # ---- model

    @property
    def _image_vector_shape(self) -> tuple[int, ...]:
        return (self.n_queries, self.dimension)

    def _text_vectors(self, encoded: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self._text_model(input_ids=encoded["input_ids"], attention_mask=encoded.get("attention_mask"))
        return l2_normalised(output.text_embeds[:, 0, :])

    def _image_vectors(self, pixel_values: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self._vision_model(pixel_values=pixel_values)
        return l2_normalised(output.image_embeds)


def mean_pooled(image_multi: np.ndarray) -> np.ndarray:
    """``(n, d)`` unit vectors: the mean over the query axis of ``(n, n_queries, d)``, re-normalised."""
    pooled = image_multi.mean(axis=1)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


#: registered as ``blip2`` by :mod:`mmrag.pipelines.embed`
SPEC = text_image_spec(
    "blip2", Blip2Embedder, DEFAULT_CHECKPOINT,
    f"BLIP-2 Q-Former ({DEFAULT_CHECKPOINT} by default): texts and images in its 256-d ITC space; "
    "images as 32 query vectors (max-over-queries score) or their mean",
)
