"""Helpers shared by tests: the shared corpora path and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = REPO_ROOT.parent / "shared" / "corpora"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def shared_corpus(*parts: str) -> Path:
    """Path under ../shared/corpora, skipping the test with a reason when it is absent."""
    path = SHARED_CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared corpus not available: {path} (CI provides ../shared beside the clone)")
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over real HTTP on 127.0.0.1 (a thread); yields the base URL without trailing slash."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _RoutesHandler(SimpleHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802 - http.server naming
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            route = (404, {"Content-Type": "text/plain"}, b"not found")
        if callable(route):
            route = route(self)
            if route is None:
                return
        status, headers, body = route
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (size limit, timeout): expected in these tests


@contextlib.contextmanager
def serve_routes(routes: dict) -> Iterator[tuple[str, dict]]:
    """Serve scripted routes on 127.0.0.1: ``path -> (status, headers, body)`` or a callable returning one.

    Yields ``(base_url, routes)``; the dict can be changed while serving (e.g. to make a page fail).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RoutesHandler)
    server.routes = routes
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


def embedded_llm_cache() -> str:
    """The model cache of the embedded Qwen2.5-Coder-0.5B GGUF (the app's own default, assembled once per machine).

    Skips the test with the reason when the llama.cpp runtime or the model's part packages are missing.
    """
    import os

    pytest.importorskip("xllamacpp", reason="the llamacpp runtime is installed by the [llm] extra")
    from mmrag.pipelines.llm.base import LlmError
    from mmrag.pipelines.llm.gguf import GGUF_MODELS, locate_parts

    try:
        locate_parts(GGUF_MODELS["qwen2.5-coder-0.5b"])
    except LlmError as exc:
        pytest.skip(str(exc))
    return os.environ.get("MMRAG_TEST_MODEL_CACHE") or str(REPO_ROOT / ".mmrag" / "models")


def image_rows_by_file_name(cfg, embedder: str = "minilm") -> dict[str, dict]:
    """The rows of ``cfg``'s images table for ``embedder``, keyed by the last path part of ``src_url``."""
    from mmrag.pipelines import store

    rows = store.IndexStore(cfg.store.db_uri).open_table(store.images_table_name(embedder)).to_arrow().to_pylist()
    return {r["src_url"].rsplit("/", 1)[-1]: r for r in rows}
