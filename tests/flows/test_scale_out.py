"""Scale-out: the index flow on a 2-worker Dask cluster gives the same rows as the thread pool; LanceDB on
S3 (moto's server on 127.0.0.1) holds tables and image bytes, with credentials from the environment only."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.flows.index import run_index
from mmrag.config import load_config
from mmrag.pipelines import store
from mmrag.pipelines.fetch import Fetcher

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

# one chunk per paragraph (no merging): the counts below follow the pages' paragraphs
UNMERGED = {"chunking.merge_min_tokens": 0}
CHUNKS = store.chunks_table_name("minilm", load_config(None, UNMERGED).chunking.key())
IMAGES = store.images_table_name("minilm")
TOPICS = ["dense retrieval", "sparse retrieval", "reranking", "chunking", "image captions", "vector indexes"]


def make_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, topic in enumerate(TOPICS):
        buf = io.BytesIO()
        Image.new("RGB", (32 + i, 24), (40 * i, 90, 200 - 30 * i)).save(buf, "PNG")
        (folder / f"fig-{i}.png").write_bytes(buf.getvalue())
        paragraphs = "".join(f"<p>Notes on {topic}, part {n}: how it changes recall and latency in practice.</p>"
                             for n in range(3))
        (folder / f"{i}.html").write_text(
            f"<html><head><title>{topic}</title></head><body><article><h1>{topic}</h1>{paragraphs}"
            f'<figure><img src="fig-{i}.png"><figcaption>Figure about {topic}</figcaption></figure></article></body></html>')
    return folder


def make_config(tmp_path: Path, name: str, **overrides):
    values = {"store.db_uri": str(tmp_path / name), "store.raw_dir": str(tmp_path / "raw"), "progress": False, **UNMERGED,
              "ops.embed_task_rows": 4}
    values.update(overrides)
    return load_config(None, values)


def by_id(db_uri: str, table: str) -> dict[str, dict]:
    return {r["id"]: r for r in store.IndexStore(db_uri).open_table(table).to_arrow().to_pylist()}


def assert_same_index(a: str, b: str) -> None:
    for table in (store.DOCUMENTS, CHUNKS, IMAGES):
        rows_a, rows_b = by_id(a, table), by_id(b, table)
        assert rows_a.keys() == rows_b.keys(), table
        for key, row in rows_a.items():
            other = rows_b[key]
            for column in ("text", "caption", "status", "content_hash", "surrogate_hash", "n_chunks", "n_images"):
                if column in row:
                    assert row[column] == other[column], (table, column)
            if "vector" in row:
                np.testing.assert_allclose(row["vector"], other["vector"], atol=1e-5)


def test_dask_local_cluster_gives_the_same_index_as_threads(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "site")
    threads = run_index([str(corpus)], make_config(tmp_path, "threads"))

    seen_threads: set[str] = set()
    real_fetch_local = Fetcher.fetch_local

    def recording(self, *args, **kwargs):
        seen_threads.add(threading.current_thread().name)
        return real_fetch_local(self, *args, **kwargs)

    monkeypatch.setattr(Fetcher, "fetch_local", recording)
    cfg = make_config(tmp_path, "dask", **{"ops.task_runner": "dask", "ops.dask_workers": 2})
    dask = run_index([str(corpus)], cfg)
    assert dask.pages_ok == threads.pages_ok == len(TOPICS)
    assert dask.chunks_total == threads.chunks_total == 3 * len(TOPICS)
    assert dask.images_ok == threads.images_ok == len(TOPICS)
    assert any("Dask" in name or "worker" in name.lower() for name in seen_threads), seen_threads
    assert_same_index(str(tmp_path / "threads"), str(tmp_path / "dask"))
    # The incremental path works on Dask too: nothing to do the second time.
    assert run_index([str(corpus)], cfg).all_unchanged


# -- S3 through moto's server ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_env(monkeypatch):
    """moto's S3 server on 127.0.0.1 and the AWS_* environment pointing at it; yields the endpoint."""
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto is None:
        pytest.skip("moto[server] is not installed in this environment (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"moto server did not start: {exc}") from exc
                time.sleep(0.2)
        for name, value in {"AWS_ACCESS_KEY_ID": "mmrag-test-key", "AWS_SECRET_ACCESS_KEY": "mmrag-secret-9f3k",
                            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket="mmrag-index")
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_index_into_s3_with_credentials_from_the_environment(tmp_path, s3_env, caplog):
    corpus = make_corpus(tmp_path / "site")
    cfg = make_config(tmp_path, "unused", **{"store.db_uri": "s3://mmrag-index/db", "ops.maintain_after_index": True,
                                             "ops.cleanup_older_than_days": 0})
    with caplog.at_level(logging.DEBUG):
        summary = run_index([str(corpus)], cfg)
    assert summary.pages_ok == len(TOPICS) and summary.images_ok == len(TOPICS)
    assert summary.maintenance["tables"][CHUNKS]["versions_removed"] >= 1  # compaction and cleanup ran on S3
    s = store.IndexStore("s3://mmrag-index/db")
    assert s.open_table(CHUNKS).count_rows() == 3 * len(TOPICS)
    blobs = {r["sha256"]: r["data"] for r in s.open_table(store.IMAGE_BLOBS).to_arrow().to_pylist()}
    assert sorted(blobs.values()) == sorted((corpus / f"fig-{i}.png").read_bytes() for i in range(len(TOPICS)))
    assert f"index-{summary.run_id}" in s.open_table(CHUNKS).tags.list()
    assert not list(tmp_path.glob("*.lock")), "no lock file for an object store"
    logged = caplog.text + summary.to_text() + str(s.last_run()["config"])
    assert "mmrag-secret-9f3k" not in logged and "mmrag-test-key" not in logged
    # Incremental on S3 too.
    assert run_index([str(corpus)], cfg).all_unchanged
