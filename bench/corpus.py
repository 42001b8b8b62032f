"""A generated article site for benchmarks: N pages with a unique figure each plus a shared logo, served
over loopback HTTP with a fixed latency per request and ETag/304 support (like a real CDN-fronted blog)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("retrieval vector index passage query embedding figure caption chunk rerank recall precision latency cluster "
         "partition graph quantization cosine softmax threshold corpus article section heading model token").split()


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def generate_site(root: Path, pages: int, paragraphs: int = 2) -> Path:
    """Write ``pages`` article pages under ``root/articles`` (``paragraphs`` paragraphs, a figure, a logo)."""
    articles = root / "articles"
    (root / "img").mkdir(parents=True, exist_ok=True)
    articles.mkdir(parents=True, exist_ok=True)
    (root / "img" / "logo.png").write_bytes(_png(0, 32))
    rng = np.random.default_rng(1)
    for i in range(pages):
        (root / "img" / f"fig-{i}.png").write_bytes(_png(i + 1))
        body = "".join(f"<p>Article {i}, part {n}: " + " ".join(rng.choice(WORDS, 30)) + ".</p>" for n in range(paragraphs))
        (articles / f"a{i:05d}.html").write_text(
            f"<html><head><title>Article {i}</title></head><body><header><img src=\"../img/logo.png\" alt=\"Site logo\">"
            f"</header><article><h1>Article {i}</h1><h2>Findings</h2>{body}<figure><img src=\"../img/fig-{i}.png\">"
            f"<figcaption>Figure {i}: measured {rng.choice(WORDS)} against {rng.choice(WORDS)}</figcaption></figure>"
            f"</article></body></html>")
    return root


def write_sitemap(root: Path, base_url: str) -> str:
    """Write ``root/sitemap.xml`` listing every article under ``base_url``; returns the sitemap URL."""
    urls = [f"{base_url}/articles/{p.name}" for p in sorted((root / "articles").glob("*.html"))]
    (root / "sitemap.xml").write_text('<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                                      + "".join(f"<url><loc>{u}</loc></url>" for u in urls) + "</urlset>")
    return f"{base_url}/sitemap.xml"


class _Handler(SimpleHTTPRequestHandler):
    latency_s = 0.05
    requests = 0
    lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        time.sleep(self.latency_s)
        with _Handler.lock:
            _Handler.requests += 1
        path = Path(self.translate_path(self.path))
        if path.is_file():
            etag = '"' + hashlib.sha256(path.read_bytes()).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self._etag = etag
        super().do_GET()

    def end_headers(self):
        if getattr(self, "_etag", None):
            self.send_header("ETag", self._etag)
            self._etag = None
        super().end_headers()


@contextlib.contextmanager
def serve_site(root: Path, latency_s: float = 0.05) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 with ``latency_s`` added to every request; yields the base URL."""
    handler = type("Handler", (_Handler,), {"latency_s": latency_s})

    def factory(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), factory)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def request_count() -> int:
    """Requests served so far (all servers of this process)."""
    return _Handler.requests
