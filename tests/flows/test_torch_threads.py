"""Embedding threads beside the OCR workers: every core, less one per worker busy at the time."""

from __future__ import annotations

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
