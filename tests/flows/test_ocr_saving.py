"""How soon OCR results reach the ``ocr_results`` table: what a kill can lose is bounded in images, not only in time."""

from __future__ import annotations

import time
from concurrent.futures import Future

from mmrag.flows.image_text import OcrState
from mmrag.pipelines import store


def _result(text: str) -> Future:
    future = Future()
    future.set_result((text, None, 0.01))
    return future


def _saved(index_store: store.IndexStore) -> set[str]:
    if not index_store.has_table(store.OCR_RESULTS):
        return set()
    return set(index_store.read_table(store.OCR_RESULTS, ["image_sha256"]).column("image_sha256").to_pylist())


def _wait_for(index_store: store.IndexStore, shas: set[str], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if shas <= _saved(index_store):
            return True
        time.sleep(0.02)
    return False


def test_results_arriving_fast_are_saved_every_few_images_not_only_once_per_gap(tmp_path, monkeypatch):
    monkeypatch.setattr(OcrState, "SAVE_GAP_S", 30.0)  # a gap far longer than the test: only the count can trigger
    index_store = store.IndexStore(str(tmp_path / "db"))
    ocr = OcrState(True, backend="rapidocr", engine="test-engine", workers=0, index_store=index_store)
    ocr.pool()  # starts the saver thread (no worker process with workers=0)
    try:
        ocr.done("a", _result("first"))
        assert _wait_for(index_store, {"a"}, 5.0), "the first result was not saved"
        for sha in ("b", "c"):  # SAVE_MAX_UNSAVED results waiting: saved without waiting out the gap
            ocr.done(sha, _result(sha))
        assert _wait_for(index_store, {"a", "b", "c"}, 5.0), "waiting results were held back for the whole gap"
        ocr.done("d", _result("one alone"))  # fewer than SAVE_MAX_UNSAVED: it waits for the gap, or for close()
        time.sleep(0.5)
        assert "d" not in _saved(index_store)
    finally:
        ocr.close()
    assert _saved(index_store) == {"a", "b", "c", "d"}
