"""Incremental re-indexing end to end: unchanged pages skip parse and embed, changed pages reuse the
vectors of unchanged text, gone pages are retired by policy, shared images survive, blob GC.
Real Prefect, real LanceDB, real MiniLM, a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import mmrag.flows.index as index_module
from mmrag.flows.index import run_index
from mmrag.config import load_config
from mmrag.pipelines import maintenance, store
from tests.helpers import serve_routes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

# the design's chunks (one per paragraph, no context): the counts and vector reuse below follow the pages' paragraphs
UNMERGED = {"chunking.merge_min_tokens": 0, "chunking.context": "none"}
CHUNKS = store.chunks_table_name("minilm", load_config(None, UNMERGED).chunking.key())
IMAGES = store.images_table_name("minilm")
HTML = {"Content-Type": "text/html; charset=utf-8"}
PNG = {"Content-Type": "image/png"}

PARAS = [
    "Dense retrieval maps questions and passages into one shared vector space for search.",
    "Sparse retrieval scores passages by the overlap of weighted terms with the question.",
    "Hybrid retrieval fuses both rankings, often with reciprocal rank fusion of the lists.",
    "Cross-encoders rerank a short list by reading the question and passage together.",
]


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


def page(title: str, paragraphs: list[str], images: list[str] = ()) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    body += "".join(f'<figure><img src="{src}"><figcaption>Figure of {title} from {src}</figcaption></figure>' for src in images)
    return f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1>{body}</article></body></html>".encode()


def sitemap(base: str, paths: list[str]) -> bytes:
    return ('<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<url><loc>{base}{p}</loc></url>" for p in paths) + "</urlset>").encode()


def make_config(tmp_path, **overrides):
    values = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False,
              "fetch.respect_robots": False, "fetch.backoff_base_s": 0.01, "fetch.max_retries": 0, **UNMERGED}
    values.update(overrides)
    return load_config(None, values)


def table_rows(cfg, name):
    s = store.IndexStore(cfg.store.db_uri)
    return s.open_table(name).to_arrow().to_pylist() if s.has_table(name) else []


@pytest.fixture
def parse_calls(monkeypatch):
    """Counts parse_html calls made by the index flow (tasks run in threads of this process)."""
    calls = []
    real = index_module.parse_html

    def counting(body, url, content_type):
        calls.append(url)
        return real(body, url, content_type)

    monkeypatch.setattr(index_module, "parse_html", counting)
    return calls


def test_unchanged_changed_gone_and_dropped_pages(tmp_path, parse_calls):
    routes = {
        "/a.html": (200, HTML, page("Alpha", PARAS[:3], ["/img/shared.png"])),
        "/b.html": (200, HTML, page("Beta", [PARAS[3]], ["/img/b-only.png"])),
        "/c.html": (200, HTML, page("Gamma", ["Gamma pages talk about evaluation with recall at ten and MRR."],
                                    ["/img/shared.png", "/img/c-only.png"])),
        "/img/shared.png": (200, PNG, png((200, 0, 0))),
        "/img/b-only.png": (200, PNG, png((0, 200, 0))),
        "/img/c-only.png": (200, PNG, png((0, 0, 200))),
    }
    with serve_routes(routes) as (base, live):
        live["/sitemap.xml"] = (200, {"Content-Type": "application/xml"}, sitemap(base, ["/a.html", "/b.html", "/c.html"]))
        source = f"{base}/sitemap.xml"
        cfg = make_config(tmp_path)

        first = run_index([source], cfg)
        assert first.pages_ok == 3 and first.documents_added == 3 and first.chunks_added == first.chunks_total == 5
        assert len(parse_calls) == 3
        before = {r["id"]: r for r in table_rows(cfg, CHUNKS)}
        docs_before = {r["url"]: r for r in table_rows(cfg, store.DOCUMENTS)}
        docs_version = store.IndexStore(cfg.store.db_uri).open_table(store.DOCUMENTS).version
        assert "load_embedder" in first.stage_seconds

        # 1. Nothing changed: no page is parsed, nothing embedded or written, not even the documents rows
        #    (their fetch facts are the same), and the embedder is never loaded.
        parse_calls.clear()
        second = run_index([source], cfg)
        assert parse_calls == []
        assert second.documents_unchanged == 3 and second.documents_added == second.documents_updated == 0
        assert second.chunks_unchanged == 5 and second.images_unchanged == 4 and second.all_unchanged
        assert second.images_ok == first.images_ok and second.chunks_total == first.chunks_total
        docs_after = {r["url"]: r for r in table_rows(cfg, store.DOCUMENTS)}
        assert all(docs_after[u]["indexed_at"] == docs_before[u]["indexed_at"] for u in docs_before)
        assert docs_after == docs_before
        assert store.IndexStore(cfg.store.db_uri).open_table(store.DOCUMENTS).version == docs_version
        assert "load_embedder" not in second.stage_seconds, "nothing to parse or embed: no model loaded"
        assert {r["id"] for r in table_rows(cfg, CHUNKS)} == set(before)

        # 2. Alpha changes: paragraphs reordered, one edited, one added. Moved text keeps its vector.
        edited = "Dense retrieval maps questions and passages into one shared vector space, then runs ANN search."
        live["/a.html"] = (200, HTML, page("Alpha", [PARAS[2], edited, PARAS[1], PARAS[3]], ["/img/shared.png"]))
        parse_calls.clear()
        third = run_index([source], cfg)
        assert parse_calls == [f"{base}/a.html"]
        assert third.documents_updated == 1 and third.documents_unchanged == 2
        # PARAS[2] and PARAS[1] moved (updated), edited + PARAS[3] are new (PARAS[3] text exists on Beta).
        assert third.chunks_updated == 2 and third.chunks_added == 2 and third.chunks_deleted == 1
        assert third.chunks_vectors_reused == 3  # two moved + one whose text Beta already had
        assert third.chunks_embedded == 4 and third.chunks_embedded - third.chunks_vectors_reused == 1
        after = table_rows(cfg, CHUNKS)
        alpha = sorted((r for r in after if r["doc_url"] == f"{base}/a.html"), key=lambda r: r["position"])
        assert [r["text"] for r in alpha] == [PARAS[2], edited, PARAS[1], PARAS[3]]
        old_vectors = {r["text"]: np.asarray(r["vector"]) for r in before.values()}
        assert np.array_equal(np.asarray(alpha[0]["vector"]), old_vectors[PARAS[2]])
        assert not any(r["text"] == PARAS[0] for r in after), "the edited paragraph's old chunk is gone"
        ids = [r["id"] for r in after]
        assert len(ids) == len(set(ids))

        # 3. Beta answers 404 (tombstone) and the sitemap drops Gamma (retired too).
        del live["/b.html"]
        live["/sitemap.xml"] = (200, {"Content-Type": "application/xml"}, sitemap(base, ["/a.html", "/b.html"]))
        fourth = run_index([source], cfg)
        assert fourth.documents_deleted == 2 and fourth.page_status.get("gone") == 2
        docs = {r["url"].removeprefix(base): r for r in table_rows(cfg, store.DOCUMENTS)}
        assert docs["/b.html"]["status"] == "gone" and docs["/b.html"]["http_status"] == 404
        assert docs["/c.html"]["status"] == "gone" and "no longer listed" in docs["/c.html"]["error"]
        assert docs["/b.html"]["title"] == "Beta" and docs["/a.html"]["status"] == "ok"
        assert {r["doc_url"].removeprefix(base) for r in table_rows(cfg, CHUNKS)} == {"/a.html"}
        images = table_rows(cfg, IMAGES)
        assert {r["doc_url"].removeprefix(base) for r in images} == {"/a.html"}

        # 4. Blob GC: only the bytes no remaining image row references go; the shared image stays.
        blobs_before = {r["sha256"] for r in table_rows(cfg, store.IMAGE_BLOBS)}
        assert len(blobs_before) == 3
        assert maintenance.gc_image_blobs(store.IndexStore(cfg.store.db_uri)) == 2
        assert {r["sha256"] for r in table_rows(cfg, store.IMAGE_BLOBS)} == {r["image_sha256"] for r in images}

        # 5. Gone again: nothing left to delete, tombstones stay.
        fifth = run_index([source], cfg)
        assert fifth.documents_deleted == 0 and fifth.documents_unchanged == 1

        # 6. Beta comes back: indexed as new content again.
        live["/b.html"] = (200, HTML, page("Beta", [PARAS[3]], ["/img/b-only.png"]))
        sixth = run_index([source], cfg)
        assert sixth.documents_added == 1 and sixth.chunks_vectors_reused == 1
        assert {r["url"]: r["status"] for r in table_rows(cfg, store.DOCUMENTS)}[f"{base}/b.html"] == "ok"


@pytest.mark.parametrize("policy", ["delete", "keep"])
def test_gone_policies(tmp_path, policy):
    routes = {"/a.html": (200, HTML, page("Alpha", PARAS[:2])), "/b.html": (200, HTML, page("Beta", PARAS[2:]))}
    with serve_routes(routes) as (base, live):
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{base}/a.html\n{base}/b.html\n")
        cfg = make_config(tmp_path, **{"ops.gone_policy": policy})
        run_index([str(urls)], cfg)
        live["/a.html"] = (410, HTML, b"gone")
        summary = run_index([str(urls)], cfg)
    docs = {r["url"].removeprefix(base): r for r in table_rows(cfg, store.DOCUMENTS)}
    chunk_docs = {r["doc_url"].removeprefix(base) for r in table_rows(cfg, CHUNKS)}
    if policy == "delete":
        assert set(docs) == {"/b.html"} and chunk_docs == {"/b.html"} and summary.documents_deleted == 1
    else:
        assert docs["/a.html"]["status"] == "http_410" and chunk_docs == {"/a.html", "/b.html"}
        assert summary.documents_deleted == 0 and summary.pages_failed == 1
