"""The lazily built embedder of index runs: known without loading, loaded once on first use."""

from __future__ import annotations

import contextlib
import threading

import pytest

from mmrag.config import EmbedConfig
from mmrag.pipelines.embed import EmbedderUnavailable, LazyEmbedder, load_now


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
