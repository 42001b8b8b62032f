"""SIGINT/SIGTERM stop mmrag within seconds (exit 130/143, a summary saying "interrupted"), and no child
process (the temporary Prefect server) outlives an mmrag process, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO_ROOT

MMRAG = str(Path(sys.executable).with_name("mmrag"))

HANGING_UNWIND = """
import time
from mmrag.cli.signals import stop_on_signals

def report(reason):
    print("summary so far:", reason.text, flush=True)
    return reason.exit_code

with stop_on_signals(report, grace_s=1.0):
    print("ready", flush=True)
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        time.sleep(60)  # an unwinding that hangs (thread pools waiting for in-flight work)
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_hanging_unwind_is_cut_after_the_grace_period(signum, code):
    proc = subprocess.Popen([sys.executable, "-c", HANGING_UNWIND], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert time.monotonic() - sent < 6
    assert f"summary so far: interrupted by {signal.Signals(signum).name}" in out


def _site(tmp_path: Path, pages: int = 6) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    for i in range(pages):
        (site / f"p{i}.html").write_text(
            f"<html><head><title>Page {i}</title></head><body><article><h1>Page {i}</h1>"
            + "".join(f"<p>Paragraph {j} of page {i} says something long enough to be a chunk.</p>" for j in range(5))
            + "</article></body></html>")
    return site


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum, when", [
    (signal.SIGKILL, "server"), (signal.SIGINT, "server"), (signal.SIGTERM, "committed"), (signal.SIGINT, "committed"),
])
def test_index_stops_on_a_signal_and_leaves_no_child(tmp_path, signum, when):
    site, db = _site(tmp_path), tmp_path / "db"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "MMRAG_STORE__RAW_DIR": str(tmp_path / "raw"),
           "MMRAG_IMAGES__OCR": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([MMRAG, "index", str(site), "--db", str(db), "--page-batch", "1", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    parent = psutil.Process(proc.pid)
    try:
        assert _wait(lambda: any("prefect.server" in " ".join(c.cmdline()) for c in parent.children()), 180), "no server child"
        if when == "committed":
            assert _wait(lambda: (db / "documents.lance").exists() or proc.poll() is not None, 300)
            assert proc.poll() is None, "the run ended before a signal could be sent"
        children = parent.children(recursive=True)
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(3)
    alive = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"children left behind: {alive}"
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == 128 + signum, err
    assert elapsed < 10, elapsed
    assert f"interrupted by {signal.Signals(signum).name}" in (out + err)
    assert "Traceback" not in err and "Crash detected" not in err
    if when == "committed":
        assert "written by this run" in out
