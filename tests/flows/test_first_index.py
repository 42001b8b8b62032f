"""A first index that is resumable: OCR results are saved per distinct image (``ocr_results``) and reused by
any later run; a first ``mmrag index`` killed (SIGKILL or SIGTERM) during OCR, embedding or a write loses at
most about one batch, and the rerun indexes every page exactly once with OCR calls over both runs
≤ 1.1 × distinct images. Progress lines reach stderr under ``--json``; stdout stays JSON."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import lancedb
import psutil
import pytest
from PIL import Image, ImageDraw, ImageFont

from mmrag.config import load_config
from mmrag.flows.index import run_index
from mmrag.pipelines import store
from mmrag.pipelines.ocr import ocr_available
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

WORDS = ("gradient tensor kernel stride pooling lattice neuron weight softmax vector matrix encoder decoder "
         "attention layer channel feature").split()


def words_png(text: str, seed: int) -> bytes:
    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (520, 200), (255, 255 - seed % 40, 255))
    draw = ImageDraw.Draw(image)
    draw.text((20, 30), text, fill="black", font=font)
    draw.rectangle((20 + seed % 300, 120, 60 + seed % 300, 160), outline="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_site(root: Path, pages: int, images_per_page: int, paragraphs: int) -> tuple[Path, int]:
    """Local pages, each with ``paragraphs`` paragraphs and ``images_per_page`` distinct figures with words."""
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in range(pages):
        body = "".join(f"<p>Page {p} paragraph {k}: {' '.join(WORDS[(p + k + j) % len(WORDS)] for j in range(30))}.</p>"
                       for k in range(paragraphs))
        for i in range(images_per_page):
            name = f"fig-{p}-{i}.png"
            (root / name).write_bytes(words_png(f"{WORDS[(p * 3 + i) % len(WORDS)]} {p}-{i}", p * 10 + i))
            body += f'<figure><img src="{name}"><figcaption>Figure {i} of page {p}</figcaption></figure>'
            n += 1
        (root / f"page-{p:03d}.html").write_text(
            f"<html><head><title>Page {p}</title></head><body><article><h1>Page {p}</h1>{body}</article></body></html>")
    return root, n


def make_config(tmp_path: Path, **overrides):
    values = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False,
              "images.ocr": True}
    values.update(overrides)
    return load_config(None, values)


def test_ocr_results_are_saved_per_image_and_reused_after_a_lost_commit(tmp_path, ocr_calls):
    calls = ocr_calls
    site, n_images = make_site(tmp_path / "site", pages=2, images_per_page=2, paragraphs=2)
    cfg = make_config(tmp_path, **{"images.ocr_workers": 0})  # in this process, so the counter sees every call
    first = run_index([str(site)], cfg)
    assert first.ocr_images == n_images == calls["n"]
    saved = store.IndexStore(cfg.store.db_uri).open_table(store.OCR_RESULTS).to_arrow().to_pylist()
    assert len(saved) == n_images and {r["engine"] for r in saved} == {first.ocr_engine}
    assert all(r["text"] for r in saved) and all(r["seconds"] > 0 for r in saved)
    assert first.stage_rate["ocr"] > 0 and first.batches >= 1

    # As if the run had been killed before its commits: only the OCR table survives. Nothing is read again.
    db = lancedb.connect(cfg.store.db_uri)
    chunks = store.chunks_table_name("minilm", cfg.chunking.key())
    for name in (store.DOCUMENTS, chunks, store.images_table_name("minilm")):
        db.drop_table(name)
    again = run_index([str(site)], cfg)
    assert calls["n"] == n_images and again.ocr_images == 0 and again.ocr_reused == n_images

    # Other engine settings are another key: read again (the old rows stay for the old key).
    for name in (store.DOCUMENTS, chunks, store.images_table_name("minilm")):
        db.drop_table(name)
    other = run_index([str(site)], make_config(tmp_path, **{"images.ocr_workers": 0, "images.ocr_max_side": 480}))
    assert other.ocr_images == n_images and other.ocr_engine != first.ocr_engine


SITECUSTOMIZE = textwrap.dedent('''
    import os
    if os.environ.get("MMRAG_TEST_OCR_CALLS"):
        import mmrag.pipelines.ocr as _ocr
        _real = _ocr.ocr_image
        def _counting(image, **kwargs):
            fd = os.open(os.environ["MMRAG_TEST_OCR_CALLS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, b"x\\n")
            os.close(fd)
            return _real(image, **kwargs)
        _ocr.ocr_image = _counting
''')


def _count_rows(db: Path, name: str) -> int:
    try:
        return lancedb.connect(str(db)).open_table(name).count_rows()
    except Exception:  # not created yet
        return 0


def _start(site: Path, tmp_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("mmrag")), "index", str(site), "--db", str(tmp_path / "db"), "--json"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _processes_of(marker: Path) -> list[psutil.Process]:
    """Processes started with ``MMRAG_TEST_OCR_CALLS=marker`` in their environment (a run of this test and its
    children, OCR workers included)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("MMRAG_TEST_OCR_CALLS") == str(marker):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig,moment,deferred", [
    (signal.SIGKILL, "ocr", False), (signal.SIGTERM, "embed", False), (signal.SIGKILL, "write", False),
    (signal.SIGTERM, "ocr", False), (signal.SIGKILL, "embed", True), (signal.SIGKILL, "ocr", True),
    (signal.SIGTERM, "ocr", True),
], ids=["sigkill-ocr", "sigterm-embed", "sigkill-write", "sigterm-ocr", "deferred-sigkill-embed",
        "deferred-sigkill-enrichment", "deferred-sigterm-enrichment"])
def test_killed_first_index_resumes_with_every_page_once_and_little_ocr_again(tmp_path, sig, moment, deferred):
    """Inline OCR: killed while batches wait for OCR, embed or write. Deferred OCR: killed while batches embed
    (no OCR has run), or during the enrichment pass (every page committed, some rows still pending)."""
    if not ocr_available():
        pytest.skip("no OCR engine installed")
    pages = 12
    # A kill loses the images in flight plus up to OcrState.SAVE_MAX_UNSAVED results and those arriving during one
    # save, a few images whatever the corpus size; the enrichment pass reads these small figures in ~20 ms each, so
    # it gets more of them.
    per_page = 5 if deferred and moment == "ocr" else 3
    site, n_images = make_site(tmp_path / "site", pages=pages, images_per_page=per_page, paragraphs=40)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    calls = tmp_path / "ocr-calls"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "MMRAG_STORE__RAW_DIR": str(tmp_path / "raw"),
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO_ROOT)]), "MMRAG_TEST_OCR_CALLS": str(calls),
           "MMRAG_OPS__PROGRESS_LOG_S": "0.5", "MMRAG_OPS__BATCH_TARGET_S": "4", "MMRAG_IMAGES__OCR": "true",
           "MMRAG_IMAGES__OCR_DEFERRED": str(deferred).lower()}
    env.pop("PREFECT_API_URL", None)
    db = tmp_path / "db"

    proc = _start(site, tmp_path, env)
    stderr = b""
    try:
        os.set_blocking(proc.stderr.fileno(), False)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            stderr += proc.stderr.read() or b""
            if moment == "ocr" and _count_rows(db, store.OCR_RESULTS) >= 3:
                break
            if moment == "embed" and b"embed chunks:" in stderr:
                break
            if moment == "write" and _count_rows(db, store.DOCUMENTS) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {stderr.decode()[-2000:]}"
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    committed = _count_rows(db, store.DOCUMENTS)
    if deferred and moment == "ocr":  # the pages were all searchable before OCR began; some rows wait for it
        assert committed == pages
        pending = store.IndexStore(str(db)).ocr_pending_rows(store.images_table_name("minilm"))
        assert pending, "killed after the enrichment pass"
    else:
        assert committed < pages, "killed before the end"

    rerun = _start(site, tmp_path, env)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)  # stdout is the JSON summary alone; progress went to stderr
    assert summary["pages_ok"] == pages and summary["documents_unchanged"] == committed
    if deferred and moment == "ocr":  # every page was committed: the rerun's long stage is the enrichment
        assert b"ocr enrichment (rows):" in err and summary["ocr_enriched_rows"] > 0
    else:
        assert b"pages:" in err or summary["elapsed_s"] < 2

    s = store.IndexStore(str(db))
    chunks = s.open_table(store.chunks_table_name("minilm", load_config(None, {}).chunking.key())).to_arrow().to_pylist()
    docs = s.open_table(store.DOCUMENTS).to_arrow().to_pylist()
    assert len(docs) == pages and {d["status"] for d in docs} == {"ok"}
    assert max(Counter(c["id"] for c in chunks).values()) == 1
    assert max(Counter(c["text"] for c in chunks).values()) == 1, "every page indexed exactly once"
    per_doc = Counter(c["doc_url"] for c in chunks)
    assert all(per_doc[d["url"]] == d["n_chunks"] > 0 for d in docs)
    images = s.open_table(store.images_table_name("minilm")).to_arrow().to_pylist()
    assert len(images) == n_images and all(r["ocr_text"] and not r["ocr_pending"] for r in images)
    n_calls = len(calls.read_text().splitlines())
    assert n_calls <= 1.1 * n_images, f"{n_calls} OCR calls for {n_images} distinct images"
    left = _processes_of(calls)  # the killed run's OCR workers, and the rerun's, are all gone
    assert psutil.wait_procs(left, timeout=30)[1] == [], f"processes of the two runs left behind: {left}"
