"""Shared set-up of the index benchmarks: an isolated Prefect home, the colah corpus served on loopback and one
helper to run an index. Light to import (no mmrag module at the top): a bench that runs an index in its own
process is the main module its OCR workers import again when they start (multiprocessing's spawn)."""

from __future__ import annotations

import functools
import os
import tempfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "colah"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass


def serve(root: Path, port: int) -> tuple[ThreadingHTTPServer, str]:
    """``root`` over HTTP on 127.0.0.1:``port`` in a thread; returns the server and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=str(root)))
    Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


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
    from mmrag.flows.index import run_index
    from mmrag.config import load_config

    values = {"store.db_uri": str(work / db), "store.raw_dir": str(work / f"raw-{db}"), "progress": False,
              "fetch.respect_robots": False}
    values.update(overrides)
    return run_index(sources, load_config(None, values))


def prefect_server_cpu_s() -> float:
    """CPU seconds used so far by this process's children: Prefect's temporary API server (psutil comes with distributed)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_for_prefect_idle(max_s: float = 300.0, busy_cpu: float = 0.05, quiet_s: int = 3) -> float:
    """Wait until Prefect's temporary server has used under ``busy_cpu`` of a core for ``quiet_s`` seconds in a row.

    After a large run the server keeps digesting its task-run events for a while (tens of seconds
    after 1,000 pages on 2 cores); a run timed meanwhile pays for the previous one. Returns the
    seconds waited (at most ``max_s``).
    """
    import time

    started = last_busy = time.perf_counter()
    used = prefect_server_cpu_s()
    while time.perf_counter() - started < max_s:
        time.sleep(1.0)
        now = prefect_server_cpu_s()
        if now - used > busy_cpu:
            last_busy = time.perf_counter()
        used = now
        if time.perf_counter() - last_busy >= quiet_s:
            break
    return max(0.0, last_busy - started)
