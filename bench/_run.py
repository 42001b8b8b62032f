"""Shared set-up of the index benchmarks: an isolated Prefect home and one helper to run an index."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def isolate_prefect() -> Path:
    """Point Prefect at a fresh temporary home with the settings the test suite uses; returns the work dir."""
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.pop("PREFECT_API_URL", None)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return work


def index(sources: list[str], work: Path, db: str, **overrides):
    """Run the index flow into ``work/db`` with a private raw store; returns the summary."""
    from flows.index import run_index
    from mmrag.config import load_config

    values = {"store.db_uri": str(work / db), "store.raw_dir": str(work / f"raw-{db}"), "progress": False,
              "fetch.respect_robots": False}
    values.update(overrides)
    return run_index(sources, load_config(None, values))
