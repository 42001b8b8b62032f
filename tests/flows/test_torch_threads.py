"""Embedding threads beside the OCR workers: every core, less one per worker busy at the time."""

from __future__ import annotations

import copy
import os
from concurrent.futures import Future

import torch

from mmrag.config import MmragConfig
from mmrag.flows.image_text import OcrState
from mmrag.flows.image_text import apply_torch_threads


def test_torch_threads_leave_a_core_to_each_busy_ocr_worker(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    running, finished = Future(), Future()
    finished.set_result(("text", None, 0.1))
    ocr = OcrState(True, workers=2, pending={"a": running, "b": Future(), "c": Future(), "d": finished})
    try:
        assert ocr.busy_workers() == 2  # three in flight, two workers
        apply_torch_threads(MmragConfig(), ocr)
        assert torch.get_num_threads() == 2
        ocr.pending = {"a": running, "d": finished}
        assert ocr.busy_workers() == 1
        apply_torch_threads(MmragConfig(), ocr)
        assert torch.get_num_threads() == 3
        running.set_result(("x", None, 0.1))
        apply_torch_threads(MmragConfig(), ocr)
        assert torch.get_num_threads() == 4  # nothing in flight: every core
        apply_torch_threads(MmragConfig.model_validate({"ops": {"torch_threads": 1}}), ocr)
        assert torch.get_num_threads() == 1  # an explicit setting wins
    finally:
        torch.set_num_threads(before)


class _ThreadsSeen:
    """An embedder that records torch's thread count at each batch it is given."""

    name, modalities, dimension = "seen", frozenset({"text"}), 2

    def __init__(self):
        self.threads: list[int] = []

    def embed_texts(self, texts):
        self.threads.append(torch.get_num_threads())
        return [[0.0, 1.0] for _ in texts]


def test_core_sharing_embedder_sets_threads_before_every_batch(monkeypatch):
    from mmrag.flows.image_text import CoreSharingEmbedder
    from mmrag.pipelines.embed import embed_in_batches

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    reading = Future()
    ocr = OcrState(True, workers=2, pending={"a": reading})
    inner = _ThreadsSeen()
    embedder = CoreSharingEmbedder(inner, MmragConfig(), ocr)
    assert (embedder.name, embedder.dimension) == ("seen", 2)  # everything else is the embedder's own
    assert not hasattr(embedder, "embed_image_bytes")  # a text embedder stays one (produces_multivectors etc.)
    assert copy.copy(embedder).name == "seen"  # private names are never looked up on the embedder (no recursion)

    def batch(texts):
        if len(inner.threads) == 1:  # the worker finishes its image after the first batch
            reading.set_result(("text", None, 0.1))
        return embedder.embed_texts(texts)

    try:
        embed_in_batches(["a", "b", "c", "d"], batch, batch_size=2, dimension=2)
        # one worker busy: three threads for the first batch; the worker done: all four for the next one
        assert inner.threads == [3, 4]
    finally:
        torch.set_num_threads(before)
