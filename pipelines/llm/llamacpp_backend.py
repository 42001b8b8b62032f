"""The ``llamacpp`` backend: a GGUF model run in process by llama.cpp (the ``xllamacpp`` runtime), fully offline.

The default model is Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled from its PyPI part packages by
:mod:`mmrag.pipelines.llm.gguf` into ``llm.cache_dir``.

Runtime: ``xllamacpp`` (a prebuilt CPU wheel that installs in seconds) rather than ``llama-cpp-python``,
which compiles llama.cpp from its sdist and so needs cmake, a C++ compiler and minutes of both cores on
every fresh machine and CI run. ``bench/llm_runtime.py`` compares the two on the same GGUF (figures in
bench/RESULTS.md, llm_runtime): the native build answers somewhat faster, the install cost decides. On a
busy shared 2-core box llama.cpp's threads spin at barriers, so ``llm.n_threads=1`` can be faster there.

The model is text only: images reach it as words (caption, OCR text) rendered into the prompt by
:func:`mmrag.pipelines.llm.base.images_as_text`. A loaded model is kept per process (keyed by file,
context size and threads), so repeated questions pay the load once.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmrag.pipelines.llm.base import (
    DEFAULT_OPTIONS,
    ChatMessage,
    GenerationOptions,
    ImageInput,
    LlmError,
    StreamEvent,
    Stopwatch,
    TokenLogprobs,
    Usage,
    classify_error_text,
    first_token_from_choice,
    images_as_text,
    last_user_index,
)
from mmrag.pipelines.llm.gguf import resolve_gguf

_SERVERS: dict[tuple[str, int, int], tuple[Any, float]] = {}
_SERVERS_LOCK = threading.Lock()
_DONE = object()


def _runtime():
    try:
        import xllamacpp
    except ImportError as exc:
        raise LlmError("runtime_missing", "the llamacpp backend needs the xllamacpp runtime (pip install xllamacpp)") from exc
    return xllamacpp


def server_params(model_path: Path, n_ctx: int, n_threads: int) -> Any:
    """llama.cpp server parameters (``xllamacpp.CommonParams``) for one model file: one slot, no warm-up, quiet."""
    params = _runtime().CommonParams()
    params.model.path = str(model_path)
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.warmup = False
    params.verbosity = -1
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    return params


def start_server(params: Any) -> Any:
    """An ``xllamacpp.Server`` for ``params`` (the model loaded); a load failure becomes an :class:`LlmError`."""
    try:
        return _runtime().Server(params)
    except Exception as exc:  # noqa: BLE001 - a bad file, too little memory or a port in use
        raise LlmError("server_error", f"llama.cpp could not load {params.model.path}: {exc}") from None


def load_server(model_path: Path, n_ctx: int, n_threads: int) -> tuple[Any, float]:
    """The loaded llama.cpp server for this model file and settings (loaded once per process) and its load seconds."""
    key = (str(model_path), n_ctx, n_threads)
    with _SERVERS_LOCK:
        if key not in _SERVERS:
            started = time.perf_counter()
            server = start_server(server_params(model_path, n_ctx, n_threads))
            _SERVERS[key] = (server, time.perf_counter() - started)
        return _SERVERS[key]


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_http(model_path: Path, *, alias: str, n_ctx: int = 4096, n_threads: int | None = None) -> Iterator[str]:
    """Serve ``model_path`` with llama.cpp's own OpenAI-compatible HTTP API on a free 127.0.0.1 port for the ``with`` block.

    Yields the base URL (``http://127.0.0.1:PORT/v1``); requests name the model ``alias``. The
    server (a separate model instance, not the cached in-process one) is stopped on exit.
    """
    params = server_params(model_path, n_ctx, n_threads or os.cpu_count() or 1)
    params.hostnames = ["127.0.0.1"]
    params.port = free_loopback_port()
    params.n_threads_http = 2
    params.model_alias = {alias}
    server = start_server(params)
    try:
        yield f"http://127.0.0.1:{params.port}/v1"
    finally:
        # xllamacpp stops the HTTP listener and frees the model when the Server object is destroyed.
        del server
        gc.collect()


def _error_from_payload(payload: dict, model: str) -> LlmError:
    error = payload.get("error") or {}
    text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    kind = classify_error_text(text + " " + str(error.get("type", "") if isinstance(error, dict) else ""))
    if kind == "context_overflow":
        return LlmError("context_overflow", f"the prompt does not fit llamacpp model {model!r}: {text} (ask with fewer hits, or raise llm.n_ctx)")
    return LlmError(kind or "bad_request", f"llamacpp model {model!r}: {text}")


class LlamaCppBackend:
    """A GGUF model run in this process (``llamacpp:NAME`` or ``llamacpp:/path/model.gguf``)."""

    name = "llamacpp"
    supports_images = False

    def __init__(self, model: str, cache_dir: str | Path = ".mmrag/models", *, n_ctx: int = 4096, n_threads: int | None = None):
        self.model = model
        self.cache_dir = Path(cache_dir)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self._server: Any = None
        self._pending_load_s: float | None = None
        self._lock = threading.Lock()

    def load(self) -> float:
        """Assemble (first time) and load the model; returns the seconds loading took in this process (0 when cached)."""
        if self._server is None:
            path = resolve_gguf(self.model, self.cache_dir)
            cached = (str(path), self.n_ctx, self.n_threads) in _SERVERS
            self._server, load_s = load_server(path, self.n_ctx, self.n_threads)
            self._pending_load_s = 0.0 if cached else load_s
        return self._pending_load_s or 0.0

    def generate(self, messages: Sequence[ChatMessage], images: Sequence[ImageInput] = (), *, stream: bool = True,
                 options: GenerationOptions = DEFAULT_OPTIONS) -> Iterator[StreamEvent]:
        """Generate with llama.cpp; images are rendered as text into the last user message. Yields deltas, then :class:`Usage`."""
        load_s = self.load()
        self._pending_load_s = None
        if images:
            index = last_user_index(messages)
            messages = list(messages)
            messages[index] = replace(messages[index], content=messages[index].content + "\n\n" + images_as_text(images))
        request: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "stream": stream,
        }
        if options.seed is not None:
            request["seed"] = options.seed
        if stream:
            request["stream_options"] = {"include_usage": True}
        watch = Stopwatch()
        with self._lock:
            if not stream:
                result = self._complete(request)
                choice = result["choices"][0]
                text = choice["message"].get("content") or ""
                if text:
                    watch.token()
                    yield text
                yield self._usage(result.get("usage"), watch, choice.get("finish_reason"), load_s)
                return
            yield from self._stream(request, watch, load_s)

    def first_token_logprobs(self, messages: Sequence[ChatMessage], *, top_logprobs: int = 10) -> TokenLogprobs:
        """One greedy token for ``messages`` with its ``top_logprobs`` alternatives (llama.cpp's OpenAI-style logprobs)."""
        self.load()
        request = {"messages": [{"role": m.role, "content": m.content} for m in messages], "max_tokens": 1,
                   "temperature": 0.0, "logprobs": True, "top_logprobs": top_logprobs}
        with self._lock:
            result = self._complete(request)
        return first_token_from_choice(result["choices"][0], f"llamacpp model {self.model!r}")

    def _complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed chat completion (the caller holds the lock); server errors become :class:`LlmError`."""
        try:
            result = self._server.handle_chat_completions(request)
        except RuntimeError as exc:
            raise _error_from_payload({"error": {"message": str(exc)}}, self.model) from None
        if "error" in result:
            raise _error_from_payload(result, self.model)
        return result

    def _stream(self, request: dict[str, Any], watch: Stopwatch, load_s: float) -> Iterator[StreamEvent]:
        chunks: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                self._server.handle_chat_completions(request, chunks.put)
            except Exception as exc:  # noqa: BLE001 - handed to the consuming thread
                chunks.put({"error": {"message": str(exc)}})
            finally:
                chunks.put(_DONE)

        worker = threading.Thread(target=run, name="llamacpp-generate", daemon=True)
        worker.start()
        usage = None
        finish_reason = None
        try:
            while (chunk := chunks.get()) is not _DONE:
                if "error" in chunk:
                    raise _error_from_payload(chunk, self.model)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        watch.token()
                        yield text
                    finish_reason = choice.get("finish_reason") or finish_reason
        finally:
            worker.join()
        yield self._usage(usage, watch, finish_reason, load_s)

    def _usage(self, usage: dict | None, watch: Stopwatch, finish_reason: str | None, load_s: float) -> Usage:
        return Usage(
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens"),
            load_s=load_s or None,
            time_to_first_token_s=watch.ttft(),
            total_s=watch.elapsed(),
            finish_reason=finish_reason,
            model=self.model,
        )
