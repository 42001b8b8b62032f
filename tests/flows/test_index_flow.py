"""End-to-end runs of the ``index`` flow: real Prefect (ephemeral API), real LanceDB, real MiniLM,
real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zlib
from pathlib import Path

import pytest
from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning
from PIL import Image

from mmrag.flows.index import run_index
from mmrag.config import MmragConfig, load_config
from mmrag.pipelines import store
from tests.helpers import SAMPLE_DIR, serve_directory, serve_routes, shared_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_harness"),
    # colah's posts start with an XML declaration; they are HTML all the same.
    pytest.mark.filterwarnings("ignore", category=XMLParsedAsHTMLWarning),
]

CHUNKS = store.chunks_table_name("minilm", MmragConfig().chunking.key())
IMAGES = store.images_table_name("minilm")


def make_config(tmp_path: Path, **overrides):
    """A test config: private db and raw store, fast retries, no progress bars."""
    values = {
        "store.db_uri": str(tmp_path / "db"),
        "store.raw_dir": str(tmp_path / "raw"),
        "progress": False,
        "fetch.backoff_base_s": 0.01,
        "fetch.backoff_max_s": 0.05,
    }
    values.update(overrides)
    return load_config(None, values)


def rows_of(cfg, table: str) -> list[dict]:
    return store.IndexStore(cfg.store.db_uri).open_table(table).to_arrow().to_pylist()


def squash(text: str) -> str:
    return " ".join(text.replace("\xa0", " ").split()).lower()


# -- the sample corpus ---------------------------------------------------------------------


def test_sample_corpus_indexes_then_reruns_unchanged(tmp_path):
    cfg = make_config(tmp_path)
    first = run_index([str(SAMPLE_DIR)], cfg)
    articles = sorted(p for p in SAMPLE_DIR.glob("*.html") if p.name != "index.html")
    assert first.pages_ok == len(articles) >= 5 and first.pages_failed == 0
    assert first.chunks_total > 50 and first.chunks_embedded == first.chunks_total
    assert first.images_total >= 10 and first.images_embedded == first.images_total
    assert first.exit_code(strict=False) == 0

    chunk_rows = rows_of(cfg, CHUNKS)
    assert len(chunk_rows) == first.chunks_total
    assert all(r["section_path"] and len(r["vector"]) == 384 and r["embedder"] == "minilm" for r in chunk_rows)
    assert any(len(r["section_path"]) >= 3 for r in chunk_rows), "h3 under h2 under h1 gives 3-level paths"
    doc_text = {d["url"]: d["text"] for d in rows_of(cfg, store.DOCUMENTS)}
    assert all(doc_text[r["doc_url"]][r["char_start"]:r["char_end"]] == r["text"] for r in chunk_rows)
    image_rows = rows_of(cfg, IMAGES)
    statuses = {r["status"] for r in image_rows}
    assert "ok" in statuses
    missing = [r for r in image_rows if r["src_url"].endswith("missing-figure.png")]
    assert missing and missing[0]["status"] == "not_found" and missing[0]["caption"], "broken image keeps caption"
    assert all(r["vector_source"] == "text_surrogate" for r in image_rows)
    # Bytes used in several places are stored once.
    ok_shas = [r["image_sha256"] for r in image_rows if r["status"] == "ok"]
    blobs = rows_of(cfg, store.IMAGE_BLOBS)
    assert len(blobs) == len(set(ok_shas)) < len(ok_shas)
    assert all(b["thumbnail_png"] for b in blobs if b["is_raster"])
    counts = {t: store.IndexStore(cfg.store.db_uri).open_table(t).count_rows() for t in (CHUNKS, IMAGES, store.DOCUMENTS, store.IMAGE_BLOBS)}

    second = run_index([str(SAMPLE_DIR)], cfg)
    assert second.chunks_embedded == 0 and second.images_embedded == 0
    assert second.chunks_unchanged == first.chunks_total and second.images_unchanged == first.images_total
    assert second.all_unchanged and second.image_blobs_new == 0
    assert counts == {t: store.IndexStore(cfg.store.db_uri).open_table(t).count_rows() for t in counts}
    tags = store.IndexStore(cfg.store.db_uri).open_table(CHUNKS).tags.list()
    assert {f"index-{first.run_id}", f"index-{second.run_id}"} <= set(tags)


# -- real third-party corpora ----------------------------------------------------------------


def content_headings(html: str) -> list[str]:
    """h2 headings of a post that are directly followed by a paragraph (article sections, not chrome)."""
    soup = BeautifulSoup(html, "lxml")
    found = []
    for h in soup.find_all("h2"):
        nxt = h.find_next_sibling()
        if nxt is not None and nxt.name == "p" and h.get_text(strip=True):
            found.append(squash(h.get_text(" ", strip=True)))
    return found


@pytest.mark.shared
def test_colah_posts_over_http(tmp_path):
    root = shared_corpus("colah")
    posts = sorted(p.parent.name for p in (root / "posts").glob("*/index.html"))
    assert len(posts) == 14
    with serve_directory(root) as base:
        url_list = tmp_path / "urls.txt"
        url_list.write_text("# colah posts\n" + "\n".join(f"{base}/posts/{slug}/" for slug in posts) + "\n")
        cfg = make_config(tmp_path, **{"fetch.per_host_concurrency": 4})
        summary = run_index([str(url_list)], cfg)
    assert summary.pages_ok == 14, summary.failures
    docs = {r["url"]: r for r in rows_of(cfg, store.DOCUMENTS)}
    assert all(d["status"] == "ok" and d["http_status"] == 200 for d in docs.values())
    chunk_rows = rows_of(cfg, CHUNKS)
    image_rows = rows_of(cfg, IMAGES)
    for slug in posts:
        html = (root / "posts" / slug / "index.html").read_text(encoding="utf-8", errors="replace")
        url = f"{base}/posts/{slug}/"
        paths = {squash(part) for r in chunk_rows if r["doc_url"] == url for part in r["section_path"]}
        assert paths, f"{slug}: no chunks"
        for heading in content_headings(html):
            assert heading in paths, f"{slug}: section {heading!r} missing from section paths"
        assert "more posts" not in paths, f"{slug}: sidebar heading leaked into section paths"
        captions = {squash(r["caption"]) for r in image_rows if r["doc_url"] == url}
        for fig in BeautifulSoup(html, "lxml").find_all("figure"):
            caption = fig.find("figcaption")
            if caption and fig.find("img"):
                assert squash(caption.get_text(" ", strip=True)) in captions, f"{slug}: figure caption missing"
    lstm = f"{base}/posts/2015-08-Understanding-LSTMs/"
    assert any(
        r["doc_url"] == lstm and "The Core Idea Behind LSTMs" in r["section_path"] for r in chunk_rows
    )
    assert sum(1 for r in image_rows if r["status"] == "ok") > 100


@pytest.mark.shared
def test_medium_seed_matches_the_original_design(tmp_path):
    articles = shared_corpus("medium-seed", "articles")
    seed = shared_corpus("medium-seed", "seed-index")
    expected_chunks = json.loads((seed / "text_content.json").read_text(encoding="utf-8"))
    expected_images = json.loads((seed / "image_content.json").read_text(encoding="utf-8"))
    cfg = make_config(tmp_path, **{"search.preset": "seed"})  # the design: plain paragraphs, no context
    summary = run_index([str(articles)], cfg)
    assert summary.pages_ok == 2
    texts = {squash(r["text"]) for r in rows_of(cfg, store.chunks_table_name("minilm", cfg.chunking.key()))}
    found = sum(squash(c["text"]) in texts for c in expected_chunks)
    assert found / len(expected_chunks) >= 0.95, f"only {found}/{len(expected_chunks)} of the design's chunks found"
    image_rows = rows_of(cfg, IMAGES)
    for image in expected_images:
        # The design saved images as images/<id>.<ext>; some CDN URLs carry no extension.
        image_id = image["image_path"].split("/", 1)[1].rsplit(".", 1)[0]
        matches = [r for r in image_rows if r["src_url"].rsplit("/", 1)[-1].rsplit(".", 1)[0] == image_id]
        assert matches, f"image {image_id} missing"
        # The same picture can appear twice with different captions: one of its places has this one.
        assert squash(image["caption"]) in {squash(m["caption"]) for m in matches}
        assert all(m["status"] == "unreachable" and m["caption"] for m in matches), matches


# -- bad input ------------------------------------------------------------------------------


def png_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width=40_000, height=40_000) -> bytes:
    """A tiny PNG whose header declares a huge image (IHDR patched, CRC fixed)."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def article(title: str, body: str) -> bytes:
    return f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1>{body}</article></body></html>".encode()


HTML = {"Content-Type": "text/html; charset=utf-8"}
PNG = {"Content-Type": "image/png"}


def slow_page(handler):
    time.sleep(1.5)
    return 200, HTML, article("Slow", "<p>This page arrives far too late to be useful to anybody.</p>")


@pytest.mark.timeout(300)
def test_bad_input_is_recorded_per_item_and_nothing_stored_is_lost(tmp_path):
    good_body = article(
        "Good page",
        "<h2>Retrieval</h2><p>Dense retrieval embeds queries and passages into one vector space.</p>"
        '<figure><img src="/img/ok.png"><figcaption>A red square used as a test figure</figcaption></figure>'
        '<figure><img src="/img/truncated.png"><figcaption>Truncated image</figcaption></figure>'
        '<img src="/img/bomb.png" alt="A decompression bomb">'
        '<img src="/img/huge.png" alt="Too many bytes">'
        '<img src="/img/gone.png" alt="Gone image">'
        '<img src="http://images.unreachable.invalid/x.png" alt="Image on a host that does not resolve">'
        '<img src="/img/ok.png" alt="The same bytes again">',
    )
    routes = {
        "/good.html": (200, HTML, good_body),
        "/malformed.html": (200, HTML, b"<html><body><h1>Broken<p>An unclosed paragraph that still carries enough text<div><p>More text in a div that never closes <b>bold"),
        "/empty.html": (200, HTML, b"<html><head><title>Nothing</title></head><body></body></html>"),
        "/data.json": (200, {"Content-Type": "application/json"}, b'{"not": "html"}'),
        "/error.html": (500, HTML, b"server error"),
        "/slow.html": slow_page,
        "/loop-a.html": (302, {"Location": "/loop-b.html"}, b""),
        "/loop-b.html": (302, {"Location": "/loop-a.html"}, b""),
        "/big.html": (200, HTML, article("Big", "<p>" + "word " * 60_000 + "</p>")),
        "/latin1.html": (200, {"Content-Type": "text/html; charset=iso-8859-1"},
                         article("Caf\xe9", "<p>Un caf\xe9 cr\xe8me et une br\xfbl\xe9e pour la r\xe9union du matin.</p>").decode().encode("latin-1")),
        "/img/ok.png": (200, PNG, png_bytes()),
        "/img/truncated.png": (200, PNG, png_bytes((300, 300), (1, 2, 3))[:200]),
        "/img/bomb.png": (200, PNG, bomb_png()),
        "/img/huge.png": (200, PNG, b"\x89PNG" + b"\0" * 300_000),
    }
    with serve_routes(routes) as (base, live_routes):
        url_list = tmp_path / "urls.txt"
        pages = ["good.html", "malformed.html", "empty.html", "data.json", "missing.html", "error.html",
                 "slow.html", "loop-a.html", "big.html", "latin1.html", "good.html", "good.html#again"]
        url_list.write_text("\n".join(f"{base}/{p}" for p in pages))
        cfg = make_config(tmp_path, **{
            "fetch.read_timeout_s": 0.5, "fetch.max_retries": 1, "fetch.max_page_bytes": 100_000,
            "fetch.max_image_bytes": 200_000, "fetch.respect_robots": False,
        })
        summary = run_index([str(url_list)], cfg)

        docs = {r["url"].removeprefix(base + "/"): r for r in rows_of(cfg, store.DOCUMENTS)}
        assert len(docs) == 10, "duplicate URLs are indexed once"
        expected = {
            "good.html": "ok", "malformed.html": "ok", "latin1.html": "ok", "empty.html": "empty",
            "data.json": "bad_content_type", "missing.html": "http_404", "error.html": "http_500",
            "slow.html": "timeout", "loop-a.html": "redirect_loop", "big.html": "too_large",
        }
        assert {u: d["status"] for u, d in docs.items()} == expected
        assert all(docs[u]["error"] for u, s in expected.items() if s != "ok")
        assert summary.pages_ok == 3 and summary.pages_failed == 7
        assert summary.exit_code(strict=False) == 0 and summary.exit_code(strict=True) == 1

        chunk_rows = rows_of(cfg, CHUNKS)
        assert any("café crème" in r["text"] for r in chunk_rows), "latin-1 page decoded"
        assert any("unclosed paragraph" in r["text"] for r in chunk_rows)
        images = {r["src_url"].rsplit("/", 1)[-1] + ("#2" if r["alt"] == "The same bytes again" else ""): r
                  for r in rows_of(cfg, IMAGES)}
        assert images["ok.png"]["status"] == "ok" and images["ok.png"]["width"] == 64
        assert images["ok.png#2"]["status"] == "ok"
        assert images["truncated.png"]["status"] == "corrupt"
        assert images["bomb.png"]["status"] == "decompression_bomb"
        assert images["huge.png"]["status"] == "too_large"
        assert images["gone.png"]["status"] == "http_404"
        assert images["x.png"]["status"] == "unreachable"
        assert all(r["caption"] for r in images.values())
        assert len(rows_of(cfg, store.IMAGE_BLOBS)) == 1

        # The good page breaks on the next run: what was stored for it stays.
        good_chunks = {r["id"] for r in chunk_rows if r["doc_url"].endswith("/good.html")}
        live_routes["/good.html"] = (503, HTML, b"down for maintenance")
        url_list.write_text(f"{base}/good.html\n")
        again = run_index([str(url_list)], cfg)
        assert again.pages_ok == 0 and again.exit_code(strict=False) == 1
        doc = {r["url"]: r for r in rows_of(cfg, store.DOCUMENTS)}[f"{base}/good.html"]
        assert doc["status"] == "http_503" and doc["title"] == "Good page" and doc["n_chunks"] == len(good_chunks)
        assert good_chunks <= {r["id"] for r in rows_of(cfg, CHUNKS)}


# -- sitemaps, feeds and re-parsing from stored responses -------------------------------------


def test_sitemap_and_feed_over_http_then_reparse_without_network(tmp_path):
    import shutil

    site = tmp_path / "site"
    shutil.copytree(SAMPLE_DIR, site / "articles")
    slugs = sorted(p.stem for p in SAMPLE_DIR.glob("*.html") if p.name != "index.html")
    cfg = make_config(tmp_path)
    with serve_directory(site) as base:
        urls = [f"{base}/articles/{slug}.html" for slug in slugs]
        (site / "sitemap.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<url><loc>{u}</loc></url>" for u in urls) + "</urlset>")
        (site / "feed.xml").write_text(
            '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>' + base + "</link>"
            + "".join(f"<item><title>{s}</title><link>{u}</link></item>" for s, u in zip(slugs, urls))
            + "</channel></rss>")
        from_sitemap = run_index([f"{base}/sitemap.xml"], cfg)
        assert from_sitemap.pages_ok == len(slugs) and from_sitemap.chunks_embedded > 50
        from_feed = run_index([f"{base}/feed.xml"], cfg)
        assert from_feed.pages_ok == len(slugs) and from_feed.all_unchanged
    # The server is gone: a re-parse is served from the raw store, with no request at all.
    reparsed = run_index([f"{base}/sitemap.xml"], cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"reparse_from_raw": True})}))
    assert reparsed.pages_ok == len(slugs) and reparsed.chunks_embedded == 0 and reparsed.chunks_deleted == 0
    # Every image that was stored comes back from the raw store; only the never-stored broken one fails again.
    assert reparsed.images_ok == from_sitemap.images_ok and reparsed.images_failed == from_sitemap.images_failed == 1
    docs = rows_of(cfg, store.DOCUMENTS)
    assert len(docs) == len(slugs) and {d["status"] for d in docs} == {"ok"}
