"""A scripted HTTP server on 127.0.0.1 for the fetch and sources tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest


class Handler(BaseHTTPRequestHandler):
    """Dispatches GETs to the route functions of its :class:`ScriptedServer`."""

    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        scripted = self.server.scripted
        path = urlsplit(self.path).path
        scripted.record(path, {k.lower(): v for k, v in self.headers.items()})
        route = scripted.routes.get(path)
        try:
            if route is None:
                self.respond(404, b"not here")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (size limit, timeout): expected in these tests

    def respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                content_length: bool = True) -> None:
        """Send a whole response; without ``content_length`` the body ends when the connection closes."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def html(self, body: bytes = b"<!doctype html><html><body>hi</body></html>", **headers: str) -> None:
        """A 200 HTML response."""
        self.respond(200, body, {"Content-Type": "text/html; charset=utf-8", **headers})

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    scripted: "ScriptedServer"


class ScriptedServer:
    """Routes by exact path; records every request's path, headers and start time; counts hits."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[Handler], None]] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str], float]] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.scripted = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.hits[path] += 1
            self.requests.append((path, headers, time.monotonic()))

    def route(self, path: str, fn: Callable[[Handler], None]) -> str:
        """Serve ``path`` with ``fn`` and return its absolute URL."""
        self.routes[path] = fn
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """Headers of every request the server saw for ``path``, in order."""
        return [headers for p, headers, _ in self.requests if p == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()
