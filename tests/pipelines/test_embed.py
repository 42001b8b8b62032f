"""The lazily built embedder of index runs: known without loading, loaded once on first use."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from mmrag.config import EmbedConfig
from mmrag.pipelines.embed import EmbedderUnavailable, LazyEmbedder, create_embedder, embed_in_batches, load_now
from mmrag.pipelines.embedder_base import CPU_BATCH_SIZE, GPU_BATCH_SIZE, resolve_batch_size


def test_unknown_name_fails_at_once():
    with pytest.raises(EmbedderUnavailable, match="unknown embedder 'nope'"):
        LazyEmbedder(EmbedConfig.model_construct(name="nope"))


@pytest.mark.slow
def test_lazy_minilm_loads_once_on_first_use_from_any_thread():
    loads = []

    @contextlib.contextmanager
    def timer():
        loads.append(threading.get_ident())
        yield

    lazy = LazyEmbedder(EmbedConfig(name="minilm"), load_timer=timer)
    assert (lazy.name, lazy.modalities, lazy.loaded) == ("minilm", frozenset({"text"}), False)
    with pytest.raises(AttributeError):
        lazy._private  # noqa: B018 - private names are never forwarded (pickling, Prefect introspection)
    assert not lazy.loaded and loads == []
    counts = []
    threads = [threading.Thread(target=lambda: counts.append(lazy.count_tokens("two words"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lazy.loaded and len(loads) == 1 and len(set(counts)) == 1 and counts[0] >= 4
    load_now(lazy)
    assert len(loads) == 1 and lazy.embed_texts(["a text"]).shape == (1, lazy.dimension) == (1, 384)


def test_by_length_batches_texts_of_similar_length_and_keeps_the_callers_order():
    texts = ["x" * n for n in (5, 300, 40, 120, 7, 260, 41, 6, 299)]
    batches = []

    def embed_batch(batch):
        batches.append([len(t) for t in batch])
        return np.array([[len(t), 1.0] for t in batch], dtype=np.float32)

    out = embed_in_batches(texts, embed_batch, batch_size=3, dimension=2, by_length=True)
    assert batches == [[300, 299, 260], [120, 41, 40], [7, 6, 5]]
    assert out[:, 0].tolist() == [len(t) for t in texts]  # back in the order given
    batches.clear()
    embed_in_batches(texts, embed_batch, batch_size=3, dimension=2)
    assert batches[0] == [5, 300, 40]  # without by_length: consecutive slices (images, whose order is their own)


def test_batch_size_defaults_to_the_device_and_a_set_value_wins():
    assert resolve_batch_size(EmbedConfig(device="cpu")) == CPU_BATCH_SIZE == 8
    assert resolve_batch_size(EmbedConfig(device="cuda")) == GPU_BATCH_SIZE == 64
    assert resolve_batch_size(EmbedConfig(device="cpu", batch_size=32)) == 32


@pytest.mark.slow
def test_minilm_vectors_do_not_depend_on_batching_by_length():
    embedder = create_embedder(EmbedConfig(name="minilm", device="cpu"))
    assert embedder.batch_size == CPU_BATCH_SIZE
    texts = [("word " * n).strip() + f" {n}" for n in (3, 200, 17, 90, 1, 150, 60, 8, 230, 33)]
    kwargs = {"batch_size": 4, "dimension": embedder.dimension}
    by_length = embed_in_batches(texts, embedder.embed_texts, by_length=True, **kwargs)
    one_by_one = np.stack([embedder.embed_texts([t])[0] for t in texts])  # no padding at all
    assert np.allclose(by_length, one_by_one, atol=1e-5)
    assert np.allclose(embed_in_batches(texts, embedder.embed_texts, **kwargs), one_by_one, atol=1e-5)
