"""The ``blip2`` embedder on a tiny random BLIP-2 retrieval checkpoint (32 query tokens), loaded like a real one."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import EmbedConfig
from mmrag.pipelines.blip2_embedder import max_query_cosine, mean_pooled
from mmrag.pipelines.embed import EmbedderUnavailable, create_embedder, embedder_specs
from tests.tiny_checkpoints import png_bytes, save_random_blip2, textured_images

TEXTS = ["a photo of a cat", "a blue circle next to a green triangle", "the quick brown fox", "red square", "a diagram"]


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory) -> Path:
    return save_random_blip2(tmp_path_factory.mktemp("tiny-blip2"))


@pytest.fixture(scope="session")
def blip2(blip2_dir):
    return create_embedder(EmbedConfig(name="blip2", model_path=str(blip2_dir), batch_size=2, device="cpu"))


@pytest.fixture(scope="session")
def images():
    return textured_images(5, seed=1)


@pytest.fixture(scope="session")
def reference(blip2_dir, images):
    """Blip2ForImageTextRetrieval's own contrastive (ITC) output: logits_per_image = max over queries of cosine."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval

    model = Blip2ForImageTextRetrieval.from_pretrained(blip2_dir).eval()
    tokenizer, image_processor = AutoTokenizer.from_pretrained(blip2_dir), AutoImageProcessor.from_pretrained(blip2_dir)
    text_inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(
            input_ids=text_inputs["input_ids"],
            attention_mask=text_inputs["attention_mask"],
            pixel_values=pixel_values,
            use_image_text_matching_head=False,
        )
    return out


def test_registered_with_both_modalities():
    assert {s.name: s for s in embedder_specs()}["blip2"].modalities == frozenset({"text", "image"})


def test_shapes_and_unit_norms(blip2, images):
    assert blip2.dimension == 16 and blip2.n_queries == 32 and blip2.max_input_tokens == 64
    texts = blip2.embed_texts(TEXTS)
    multi = blip2.embed_images_multi(images)
    pooled = blip2.embed_images(images)
    assert texts.shape == (5, 16) and multi.shape == (5, 32, 16) and pooled.shape == (5, 16)
    assert texts.dtype == multi.dtype == pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(multi, axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    mean = multi.mean(axis=1)
    np.testing.assert_allclose(pooled, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    assert blip2.embed_images_multi([]).shape == (0, 32, 16)
    assert blip2.embed_images([]).shape == (0, 16)


def test_batch_equals_singles(blip2, images):
    np.testing.assert_allclose(
        blip2.embed_texts(TEXTS), np.stack([blip2.embed_texts([t])[0] for t in TEXTS]), atol=1e-5
    )
    np.testing.assert_allclose(
        blip2.embed_images_multi(images), np.concatenate([blip2.embed_images_multi([im]) for im in images]), atol=1e-5
    )


def test_vectors_and_score_match_transformers_retrieval_model(blip2, images, reference):
    texts, multi = blip2.embed_texts(TEXTS), blip2.embed_images_multi(images)
    np.testing.assert_allclose(texts, reference.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(multi, reference.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(blip2.itm_score(texts, multi), reference.logits_per_text.numpy(), atol=1e-5)


def test_image_bytes_paths_equal_pil_paths(blip2, images):
    blobs = [png_bytes(im) for im in images]
    np.testing.assert_allclose(blip2.embed_image_bytes_multi(blobs), blip2.embed_images_multi(images), atol=1e-6)
    np.testing.assert_allclose(blip2.embed_image_bytes(blobs), blip2.embed_images(images), atol=1e-6)


def test_all_four_directions_rank_the_planted_match_first(blip2, images, reference):
    texts, multi, pooled = blip2.embed_texts(TEXTS), blip2.embed_images_multi(images), blip2.embed_images(images)
    assert int(np.argmax(texts @ blip2.embed_texts([TEXTS[2]])[0])) == 2
    assert int(np.argmax(pooled @ blip2.embed_image_bytes([png_bytes(images[3])])[0])) == 3
    # Cross-modal: the planted match is the pair BLIP-2's own retrieval model scores highest.
    logits = reference.logits_per_text.numpy()
    for t in range(len(TEXTS)):
        assert int(np.argmax(blip2.score(texts[t], multi)[0])) == int(np.argmax(logits[t]))
    for i in range(len(images)):
        assert int(np.argmax(blip2.score(texts, multi[i : i + 1])[:, 0])) == int(np.argmax(logits[:, i]))


def test_max_over_queries_and_mean_pooled_rank_differently():
    """One query matching the text exactly beats many matching it moderately under max, not under mean."""
    d = 8
    text = np.eye(d, dtype=np.float32)[0]
    spiky = -np.tile(np.eye(d, dtype=np.float32)[1], (4, 1))  # three queries point away from the text...
    spiky[0] = text  # ...one points at it exactly
    broad = np.tile(np.array([0.6, 0.8, 0, 0, 0, 0, 0, 0], dtype=np.float32), (4, 1))  # all at cosine 0.6
    multi = np.stack([spiky, broad])
    by_max = max_query_cosine(text, multi)[0]
    by_mean = mean_pooled(multi) @ text
    np.testing.assert_allclose(by_max, [1.0, 0.6], atol=1e-6)
    assert np.argmax(by_max) == 0 and np.argmax(by_mean) == 1


def test_score_uses_max_for_query_vectors_and_cosine_for_pooled(blip2, images):
    texts, multi = blip2.embed_texts(TEXTS), blip2.embed_images_multi(images)
    np.testing.assert_allclose(blip2.score(texts, multi), blip2.logit_scale * max_query_cosine(texts, multi), rtol=1e-5, atol=1e-6)
    pooled = mean_pooled(multi)
    np.testing.assert_allclose(blip2.score(texts, pooled), blip2.logit_scale * texts @ pooled.T, rtol=1e-5, atol=1e-6)
    assert not np.allclose(blip2.score(texts, multi), blip2.score(texts, pooled))
    logits = blip2.zero_shot_logits(images, TEXTS)
    np.testing.assert_allclose(logits, blip2.score(texts, multi).T, rtol=1e-5)


def test_count_tokens_and_truncation(blip2):
    assert blip2.count_tokens("a photo of a cat") == 7  # [CLS] a photo of a cat [SEP]
    long_text = "red " * 80
    assert blip2.count_tokens(long_text) == 82
    _, truncated = blip2.embed_texts_with_truncation(["a cat", long_text])
    assert truncated == [False, True]


def test_missing_weights_fail_fast_naming_the_checkpoint(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(EmbedderUnavailable) as caught:
        create_embedder(EmbedConfig(name="blip2"))
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "Salesforce/blip2-itm-vit-g" in message and str(tmp_path) in message
    assert "mmrag models pull blip2 --out DIR" in message and "\n" not in message


def test_a_clip_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(EmbedderUnavailable, match=r"is a 'clip' model, not 'blip-2'"):
        create_embedder(EmbedConfig(name="blip2", model_path=str(tmp_path)))


def test_bfloat16_runs_the_towers_in_bf16_and_returns_float32(blip2, blip2_dir, images):
    half = create_embedder(EmbedConfig(name="blip2", model_path=str(blip2_dir), dtype="bfloat16", device="cpu"))
    multi = half.embed_images_multi(images)
    assert multi.dtype == np.float32
    assert np.min(np.sum(multi * blip2.embed_images_multi(images), axis=-1)) > 0.98
    assert np.min(np.sum(half.embed_texts(TEXTS) * blip2.embed_texts(TEXTS), axis=-1)) > 0.98
