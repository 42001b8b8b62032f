"""A generated article site for benchmarks: N pages with a unique figure each plus a shared logo, served
over loopback HTTP with a fixed latency per request and ETag/304 support (like a real CDN-fronted blog).

The site can be served by several hosts at once (127.0.0.1, 127.0.0.2, ...: Linux routes all of
127.0.0.0/8 to loopback), each serving the same root; the servers count the requests they handle and
the most they had in flight at once, per host and over all hosts."""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import threading
import time
from collections.abc import Iterator, Sequence
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


def write_sitemap(root: Path, base_url: str | Sequence[str]) -> str:
    """Write ``root/sitemap.xml`` listing every article; returns the sitemap URL (on the first base URL).

    ``base_url`` is one base URL or several: article ``i`` is listed under ``base_url[i % len(base_url)]``,
    so its relative image URLs resolve on the same host.
    """
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    pages = sorted((root / "articles").glob("*.html"))
    urls = [f"{bases[i % len(bases)]}/articles/{p.name}" for i, p in enumerate(pages)]
    (root / "sitemap.xml").write_text('<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                                      + "".join(f"<url><loc>{u}</loc></url>" for u in urls) + "</urlset>")
    return f"{bases[0]}/sitemap.xml"


class _Traffic:
    """Requests served, and requests in flight at once (now and at most), per host and over all hosts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_in_flight = 0
        self.total_peak = 0

    @contextlib.contextmanager
    def request(self, host: str) -> Iterator[None]:
        """Count one request to ``host`` as in flight for the duration of the ``with`` block."""
        with self.lock:
            self.requests += 1
            self.in_flight[host] = self.in_flight.get(host, 0) + 1
            self.peak[host] = max(self.peak.get(host, 0), self.in_flight[host])
            self.total_in_flight += 1
            self.total_peak = max(self.total_peak, self.total_in_flight)
        try:
            yield
        finally:
            with self.lock:
                self.in_flight[host] -= 1
                self.total_in_flight -= 1

    def reset_peaks(self) -> None:
        """Start measuring the peaks afresh (from the requests in flight now)."""
        with self.lock:
            self.peak = {host: n for host, n in self.in_flight.items() if n}
            self.total_peak = self.total_in_flight


_traffic = _Traffic()


class _Handler(SimpleHTTPRequestHandler):
    latency_s = 0.05

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        """Answer after the latency; the request counts as in flight until its response is ready to send.

        The response is written to the socket only after that: a client that has read a whole response
        may start its next request at once, before this thread would have got to leave the count, and
        one request at a time would then show as two in flight.
        """
        socket_out, self.wfile = self.wfile, io.BytesIO()
        try:
            with _traffic.request(self.server.server_address[0]):
                time.sleep(self.latency_s)
                self._respond()
            response = self.wfile.getvalue()
        finally:
            self.wfile = socket_out
        socket_out.write(response)

    def _respond(self):
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
    with serve_hosts(root, latency_s, 1) as bases:
        yield bases[0]


@contextlib.contextmanager
def serve_hosts(root: Path, latency_s: float = 0.05, hosts: int = 1) -> Iterator[list[str]]:
    """Serve ``root`` on 127.0.0.1 ... 127.0.0.<hosts>, each on a port of its own, with ``latency_s`` added to
    every request; yields the base URLs, in that order."""
    if not 1 <= hosts <= 254:
        raise ValueError(f"hosts must be 1-254, got {hosts}")
    handler = type("Handler", (_Handler,), {"latency_s": latency_s})

    def factory(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(_running(ThreadingHTTPServer((f"127.0.0.{n}", 0), factory)))
                   for n in range(1, hosts + 1)]
        yield [f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers]


@contextlib.contextmanager
def _running(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request_count() -> int:
    """Requests served so far (all servers of this process)."""
    return _traffic.requests


def reset_in_flight_peaks() -> None:
    """Start measuring :func:`in_flight_peaks` afresh, e.g. before each timed run."""
    _traffic.reset_peaks()


def in_flight_peaks() -> tuple[dict[str, int], int]:
    """The most requests in flight at once since the last reset: per host (by IP), and over all hosts."""
    with _traffic.lock:
        peaks = sorted(_traffic.peak.items(), key=lambda item: ipaddress.ip_address(item[0]))
        return dict(peaks), _traffic.total_peak
