"""Session-wide test setup: an isolated Prefect home and ephemeral API, shared model fixtures."""

from __future__ import annotations

import os
import tempfile
import pytest

# Before Prefect is imported anywhere: its settings are read at import time.
_PREFECT_HOME = tempfile.mkdtemp(prefix="mmrag-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("PREFECT_API_URL", None)
# OCR costs 1-4 s per figure with rapidocr here: off unless a test is about it (config values override this).
os.environ.setdefault("MMRAG_IMAGES__OCR", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (temporary database, ephemeral API) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def minilm():
    """The real offline MiniLM embedder, loaded once."""
    from mmrag.config import EmbedConfig
    from mmrag.pipelines.embed import create_embedder

    return create_embedder(EmbedConfig(name="minilm"))


@pytest.fixture
def ocr_calls(monkeypatch):
    """Counts calls of ``pipelines.ocr.ocr_image`` in this process (``calls["n"]``; run OCR with
    ``images.ocr_workers: 0`` so every image is read here); skips when no OCR engine is installed."""
    from collections import Counter

    from mmrag.pipelines import ocr

    if not ocr.ocr_available():
        pytest.skip("no OCR engine installed")
    calls = Counter()
    real = ocr.ocr_image

    def counting(image, **kwargs):
        calls["n"] += 1
        return real(image, **kwargs)

    monkeypatch.setattr(ocr, "ocr_image", counting)
    return calls
