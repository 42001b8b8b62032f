"""Crash safety and concurrency of index runs: SIGKILL mid-run then rerun, one writer at a time,
disk-full and read-only failures reported in one line with the last committed version readable."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import lancedb
import numpy as np
import pytest
from filelock import FileLock
from PIL import Image
from typer.testing import CliRunner

from mmrag.flows.index import run_index
from mmrag.cli import app
from mmrag.config import MmragConfig, load_config
from mmrag.pipelines import guard, store
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CHUNKS = store.chunks_table_name("minilm", MmragConfig().chunking.key())
IMAGES = store.images_table_name("minilm")
PARAGRAPHS_PER_PAGE = 4
WORDS = ("retrieval vector index passage query embedding figure caption chunk rerank recall precision latency "
         "cluster partition graph quantization cosine softmax threshold corpus article section heading").split()


def paragraph(page: int, n: int) -> str:
    rng = np.random.default_rng(page * 1000 + n)
    words = " ".join(rng.choice(WORDS, size=56))  # over chunking.merge_min_tokens: one chunk per paragraph
    return f"Page {page} paragraph {n}: {words}."


def make_corpus(folder: Path, pages: int, figure: Path | None = None) -> Path:
    """``pages`` local article pages of ``PARAGRAPHS_PER_PAGE`` paragraphs each (one chunk per paragraph)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(pages):
        body = "".join(f"<p>{paragraph(i, n)}</p>" for n in range(PARAGRAPHS_PER_PAGE))
        if figure is not None:
            body += f'<figure><img src="{figure.as_uri()}"><figcaption>Figure for page {i}</figcaption></figure>'
        (folder / f"page-{i:03d}.html").write_text(
            f"<html><head><title>Page {i}</title></head><body><article><h1>Page {i}</h1>{body}</article></body></html>")
    return folder


def make_config(tmp_path: Path, **overrides):
    values = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False}
    values.update(overrides)
    return load_config(None, values)


def count_rows(db: Path, name: str) -> int:
    try:
        return lancedb.connect(str(db)).open_table(name).count_rows()
    except Exception:  # table not created yet, or mid-creation
        return 0


def assert_consistent(cfg, expected_pages: int) -> None:
    """No duplicate ids, no chunk without its document, no ok document without all its chunks."""
    s = store.IndexStore(cfg.store.db_uri)
    docs = s.open_table(store.DOCUMENTS).to_arrow().to_pylist()
    chunks = s.open_table(CHUNKS).to_arrow().to_pylist()
    for name, rows_ in ((store.DOCUMENTS, docs), (CHUNKS, chunks)):
        ids = Counter(r["id"] for r in rows_)
        assert not [i for i, n in ids.items() if n > 1], f"duplicate ids in {name}"
    assert len(docs) == expected_pages and {d["status"] for d in docs} == {"ok"}
    per_doc = Counter(c["doc_url"] for c in chunks)
    assert set(per_doc) == {d["url"] for d in docs}, "a chunk without its document"
    for d in docs:
        assert per_doc[d["url"]] == d["n_chunks"] == PARAGRAPHS_PER_PAGE, d["url"]
    texts = Counter(c["text"] for c in chunks)
    assert max(texts.values()) == 1, "every page indexed exactly once"


@pytest.mark.timeout(600)
def test_sigkill_mid_run_then_rerun_indexes_every_page_once(tmp_path):
    corpus = make_corpus(tmp_path / "site", 60)
    db = tmp_path / "db"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "MMRAG_STORE__RAW_DIR": str(tmp_path / "raw"),
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mmrag")), "index", str(corpus), "--db", str(db), "--page-batch", "5", "--batch-size", "8",
         "--json"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        committed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            committed = count_rows(db, store.DOCUMENTS)
            if committed >= 5:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert 5 <= committed < 60
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    at_kill = count_rows(db, store.DOCUMENTS)
    assert at_kill < 60, "killed before the end"
    # What was committed is consistent already: documents are written after their chunks.
    s = store.IndexStore(str(db))
    chunk_docs = Counter(r["doc_url"] for r in s.open_table(CHUNKS).to_arrow().to_pylist())
    for d in s.open_table(store.DOCUMENTS).to_arrow().to_pylist():
        assert chunk_docs[d["url"]] == d["n_chunks"]

    cfg = make_config(tmp_path, page_batch=5)
    rerun = run_index([str(corpus)], cfg)
    assert rerun.pages_ok == 60 and rerun.documents_unchanged == at_kill
    assert rerun.documents_added == 60 - at_kill
    assert_consistent(cfg, 60)


def test_second_writer_waits_for_the_lock_or_fails_clearly(tmp_path):
    corpus = make_corpus(tmp_path / "site", 2)
    cfg = make_config(tmp_path, **{"ops.lock_timeout_s": 0.5})
    lock_file = guard.lock_path(cfg.store.db_uri)
    assert lock_file == tmp_path / "db.lock"
    held = FileLock(str(lock_file), thread_local=False)
    held.acquire()
    try:
        with pytest.raises(guard.DatabaseLocked, match=r"locked by another mmrag run .*db\.lock.*waited 0\.5 s"):
            run_index([str(corpus)], cfg)
        result = CliRunner().invoke(app, ["index", str(corpus), "--db", cfg.store.db_uri, "--json"],
                                    env={"MMRAG_STORE__RAW_DIR": cfg.store.raw_dir, "MMRAG_OPS__LOCK_TIMEOUT_S": "0.2"})
        assert result.exit_code == 1 and "locked by another mmrag run" in result.output
        assert "Traceback" not in result.output
        # With a longer timeout the second run waits for the first to finish.
        threading.Timer(2.0, held.release).start()
        started = time.monotonic()
        summary = run_index([str(corpus)], cfg.model_copy(update={"ops": cfg.ops.model_copy(update={"lock_timeout_s": 60})}))
        assert time.monotonic() - started >= 1.5 and summary.pages_ok == 2
    finally:
        if held.is_locked:
            held.release()


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount not permitted here ({result.stderr.strip() or result.returncode}): needs root with CAP_SYS_ADMIN")


def test_read_only_database_fails_in_one_line_and_stays_readable(tmp_path):
    corpus = make_corpus(tmp_path / "site", 2)
    cfg = make_config(tmp_path)
    run_index([str(corpus)], cfg)
    before = count_rows(Path(cfg.store.db_uri), CHUNKS)
    (corpus / "page-000.html").write_text("<html><body><article><h1>New</h1><p>" + "Changed text of the page. " * 5
                                         + "</p></article></body></html>")
    _mount("--bind", "-o", "ro", cfg.store.db_uri, cfg.store.db_uri)
    try:
        with pytest.raises(guard.StoreWriteError) as err:
            run_index([str(corpus)], cfg)
        message = str(err.value)
        assert "\n" not in message and cfg.store.db_uri in message and "Read-only file system" in message
        assert count_rows(Path(cfg.store.db_uri), CHUNKS) == before
    finally:
        subprocess.run(["umount", cfg.store.db_uri], check=False)


def noise_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_disk_full_fails_in_one_line_and_last_version_stays_readable(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk))
    try:
        cfg = make_config(tmp_path, **{"store.db_uri": str(disk / "db")})
        first = run_index([str(make_corpus(tmp_path / "small", 2))], cfg)
        assert first.pages_ok == 2
        before = count_rows(Path(cfg.store.db_uri), CHUNKS)
        figure = tmp_path / "noise.png"
        figure.write_bytes(noise_png(1100))  # ~3.6 MB of incompressible pixels: over the 3 MB disk
        with pytest.raises(guard.StoreWriteError) as err:
            run_index([str(make_corpus(tmp_path / "big", 1, figure=figure))], cfg)
        message = str(err.value)
        assert "\n" not in message and "No space left on device" in message and str(disk) in message
        assert count_rows(Path(cfg.store.db_uri), CHUNKS) == before
        assert count_rows(Path(cfg.store.db_uri), store.DOCUMENTS) == 2
    finally:
        subprocess.run(["umount", str(disk)], check=False)
