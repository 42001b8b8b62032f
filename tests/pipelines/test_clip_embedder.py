"""The ``clip`` embedder on a tiny random CLIP checkpoint, loaded the way users load real ones."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import EmbedConfig, ImageConfig
from mmrag.pipelines.embed import EmbedderUnavailable, create_embedder, embedder_specs
from tests.tiny_checkpoints import png_bytes, save_random_clip, textured_images

TEXTS = [
    "a photo of a cat sitting on a red mat",
    "a diagram of a neural network",
    "the quick brown fox",
    "long short term memory",
    "a blue circle",
    "backpropagation and the chain rule",
    "red square",
]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def clip(clip_dir):
    return create_embedder(EmbedConfig(name="clip", model_path=str(clip_dir), batch_size=4, device="cpu"))


@pytest.fixture(scope="session")
def images():
    return textured_images(6)


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_registered_with_both_modalities():
    spec = {s.name: s for s in embedder_specs()}["clip"]
    assert spec.modalities == frozenset({"text", "image"})


def test_shapes_dimension_and_unit_norm(clip, images):
    assert clip.name == "clip" and clip.modalities == frozenset({"text", "image"})
    assert clip.dimension == 16 and clip.max_input_tokens == 77
    texts = clip.embed_texts(TEXTS)
    pictures = clip.embed_images(images)
    assert texts.shape == (len(TEXTS), 16) and texts.dtype == np.float32
    assert pictures.shape == (len(images), 16) and pictures.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pictures, axis=1), 1.0, atol=1e-5)
    assert clip.embed_texts([]).shape == (0, 16)
    assert clip.embed_images([]).shape == (0, 16)


def test_batch_equals_singles(clip, images):
    batched = clip.embed_texts(TEXTS)  # batches of 4, padded to the longest text in each
    singles = np.stack([clip.embed_texts([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    batched_images = clip.embed_images(images)
    single_images = np.stack([clip.embed_images([im])[0] for im in images])
    np.testing.assert_allclose(batched_images, single_images, atol=1e-5)


def test_matches_transformers_reference_forward(clip, clip_dir, images):
    """Our vectors and scores are CLIPModel's own text_embeds / image_embeds / logits_per_text."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    inputs = processor(text=TEXTS, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs)
    texts, pictures = clip.embed_texts(TEXTS), clip.embed_images(images)
    np.testing.assert_allclose(texts, reference.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(pictures, reference.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(clip.score(texts, pictures), reference.logits_per_text.numpy(), rtol=1e-4, atol=1e-4)
    assert clip.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)


def test_all_four_directions_rank_the_planted_match_first(clip, clip_dir, images):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    text_index, image_index = clip.embed_texts(TEXTS), clip.embed_images(images)
    # text -> text and image -> image: the same item, embedded again on its own (JPEG-free: identical pixels).
    assert int(np.argmax(text_index @ clip.embed_texts([TEXTS[3]])[0])) == 3
    assert int(np.argmax(image_index @ clip.embed_image_bytes([png_bytes(images[4])])[0])) == 4
    # text -> image and image -> text: random weights know no semantics, so the planted match is the pair
    # CLIPModel's own forward scores highest; our index must find the same one first.
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        logits = model(**processor(text=TEXTS, images=images, padding=True, return_tensors="pt")).logits_per_text.numpy()
    for t in range(len(TEXTS)):
        assert int(np.argmax(clip.score(text_index[t], image_index)[0])) == int(np.argmax(logits[t]))
    for i in range(len(images)):
        assert int(np.argmax(clip.score(text_index, image_index[i])[:, 0])) == int(np.argmax(logits[:, i]))


def test_image_bytes_path_equals_pil_path_and_decodes_in_a_worker_thread(clip, images, monkeypatch):
    blobs = [png_bytes(im) for im in images]
    threads: set[str] = set()
    original = type(clip).pixel_values

    def spy(self, batch):
        threads.add(threading.current_thread().name)
        return original(self, batch)

    monkeypatch.setattr(type(clip), "pixel_values", spy)
    from_bytes = clip.embed_image_bytes(blobs)
    np.testing.assert_allclose(from_bytes, clip.embed_images(images), atol=1e-6)
    assert threads and all(name.startswith("mmrag-prefetch") for name in threads)


def test_undecodable_bytes_name_the_image(clip, images):
    with pytest.raises(ValueError, match=r"^image 1: corrupt"):
        clip.embed_image_bytes([png_bytes(images[0]), b"\x89PNG\r\n\x1a\nbroken"], ImageConfig())


def test_prefetch_prepares_the_next_batch_while_the_current_one_is_used():
    from mmrag.pipelines.clip_embedder import prefetch_batches

    next_prepared = threading.Event()

    def prepare(batch):
        if batch[0] == 2:
            next_prepared.set()
        return list(batch)

    seen = []
    for batch in prefetch_batches([0, 1, 2, 3, 4], 2, prepare):
        if batch[0] == 0:
            assert next_prepared.wait(5), "batch 2 was not prepared while batch 0 was in use"
        seen.extend(batch)
    assert seen == [0, 1, 2, 3, 4]


def test_count_tokens_uses_the_model_tokenizer(clip):
    ids = clip._tokenizer("a photo of a cat")["input_ids"]
    assert clip.count_tokens("a photo of a cat") == len(ids)
    assert ids[0] == clip._tokenizer.bos_token_id and ids[-1] == clip._tokenizer.eos_token_id
    assert clip.count_tokens("red " * 200) > 77


def test_truncation_is_recorded(clip):
    long_cat, long_dog = "red " * 100 + "cat", "red " * 100 + "dog"
    vectors, truncated = clip.embed_texts_with_truncation(["a red square", long_cat, long_dog])
    assert truncated == [False, True, True]
    # Only the first 77 tokens count: texts differing after them embed identically.
    np.testing.assert_allclose(vectors[1], vectors[2], atol=1e-6)
    clip.embed_texts(["short", long_cat])
    assert clip.last_truncated == [False, True]


def test_count_tokens_is_thread_safe(clip):
    texts = [f"{'word ' * (i % 90)} number {i}" for i in range(300)]
    expected = [clip.count_tokens(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        embedding = pool.submit(clip.embed_texts, texts[:40])
        counted = list(pool.map(clip.count_tokens, texts))
        embedding.result()
    assert counted == expected


def test_bfloat16_gives_float32_unit_vectors_close_to_float32(clip, clip_dir, images):
    half = create_embedder(EmbedConfig(name="clip", model_path=str(clip_dir), dtype="bfloat16", device="cpu"))
    texts, pictures = half.embed_texts(TEXTS), half.embed_images(images)
    assert texts.dtype == np.float32 and pictures.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pictures, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(texts * clip.embed_texts(TEXTS), axis=1)) > 0.98
    assert np.min(np.sum(pictures * clip.embed_images(images), axis=1)) > 0.98


def test_missing_weights_fail_fast_with_one_line_saying_how_to_provide_them(empty_hf_cache):
    start = time.monotonic()
    with pytest.raises(EmbedderUnavailable) as caught:
        create_embedder(EmbedConfig(name="clip"))
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "\n" not in message
    for part in ("openai/clip-vit-base-patch16", str(empty_hf_cache), "--model-path DIR", "mmrag models pull clip --out DIR"):
        assert part in message


def test_missing_model_path_names_the_directory(tmp_path):
    with pytest.raises(EmbedderUnavailable, match=r"no checkpoint at --model-path .*nowhere \(no such directory\)"):
        create_embedder(EmbedConfig(name="clip", model_path=str(tmp_path / "nowhere")))


def test_checkpoint_is_found_in_the_hugging_face_cache(clip_dir, empty_hf_cache, images):
    snapshot = empty_hf_cache / "models--someone--tiny-clip" / "snapshots" / ("0" * 40)
    shutil.copytree(clip_dir, snapshot)
    (empty_hf_cache / "models--someone--tiny-clip" / "refs").mkdir()
    (empty_hf_cache / "models--someone--tiny-clip" / "refs" / "main").write_text("0" * 40)
    cached = create_embedder(EmbedConfig(name="clip", checkpoint="someone/tiny-clip", device="cpu"))
    assert cached.model_dir == snapshot
    assert cached.embed_images(images[:1]).shape == (1, 16)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EmbedderUnavailable, match=r"is a 'bert' model, not 'clip'"):
        create_embedder(EmbedConfig(name="clip", model_path=str(tmp_path)))
