"""A scripted LLM server on 127.0.0.1 (a thread) speaking Ollama's and OpenAI's real wire protocols.

Ollama: ``POST /api/chat`` (NDJSON stream or one JSON), ``GET /api/tags``, ``POST /api/pull``
(NDJSON progress), ``POST /api/show``; errors as ``{"error": "..."}`` with the server's status codes.
OpenAI: ``POST /v1/chat/completions`` (JSON, or SSE ``data:`` events ending in ``data: [DONE]``,
usage in the last chunk when ``stream_options.include_usage``); errors as ``{"error": {...}}``.

Token log-probabilities (non-streamed requests with ``logprobs: true``): a model with a ``judge``
answers one token, "Yes" or "No", with ``top_logprobs`` built from the judge's P(yes) of the last
user message, in each protocol's own shape (OpenAI: ``choices[0].logprobs.content``; Ollama: a
top-level ``logprobs`` list, as Ollama 0.12.11+ returns). A model without a judge ignores
``logprobs``, like servers that drop the field (Ollama's ``/v1``, older Ollama).

Every request is recorded (method, path, lower-cased headers, JSON body) for assertions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeModel:
    """How a served model behaves: its reply, whether it sees images, its context size (in words)."""

    reply: str = "The answer is forty two."
    vision: bool = False
    single_image: bool = False
    context_words: int = 2000
    judge: Callable[[str], float] | None = None  # P("yes") given the last user message, for logprobs requests


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeLlmServer:
    """State of the fake server: its models and what it was sent."""

    models: dict[str, FakeModel] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    pullable: set[str] = field(default_factory=set)
    url: str = ""

    def chat_requests(self, path: str) -> list[Recorded]:
        """The recorded requests to ``path`` (e.g. ``/api/chat``)."""
        return [r for r in self.requests if r.path == path]

    def reply_for(self, model: FakeModel, messages: list[dict[str, Any]]) -> str:
        """The text the model answers: its scripted reply, naming the images it saw."""
        images = sum(len(m.get("images") or []) for m in messages) + sum(
            1 for m in messages if isinstance(m.get("content"), list) for p in m["content"] if p.get("type") == "image_url"
        )
        return model.reply + (f" I saw {images} image(s)." if images else "")

    def judged_token(self, model: FakeModel, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """For a logprobs request to a judging model: the answered token and its top alternatives (best first)."""
        if not body.get("logprobs") or model.judge is None or body.get("stream"):
            return None
        user = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
        p = min(max(float(model.judge(user)), 1e-6), 1 - 1e-6)
        candidates = [("Yes", p * 0.8), ("No", (1 - p) * 0.9), (" yes", p * 0.2), (" no", (1 - p) * 0.1)]
        top = sorted(({"token": t, "logprob": math.log(q), "bytes": list(t.encode())} for t, q in candidates),
                     key=lambda e: -e["logprob"])[: max(1, int(body.get("top_logprobs") or 1))]
        return top[0], top


def _words(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
        total += len(str(content or "").split())
    return total


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - fixed by the base class
        pass

    # -- plumbing

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()

    def _record(self, body: Any) -> None:
        self.server.fake.requests.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))

    def do_GET(self) -> None:  # noqa: N802
        self._record(None)
        if self.path == "/api/tags":
            self._json(200, {"models": [
                {"name": name, "model": name, "modified_at": "2025-01-02T03:04:05Z", "size": 7_900_000_000,
                 "digest": "sha256:" + "0" * 64,
                 "details": {"format": "gguf", "family": "mllama" if m.vision else "llama", "parameter_size": "10.7B",
                             "quantization_level": "Q4_K_M"}}
                for name, m in self.server.fake.models.items()
            ]})
        else:
            self._json(404, {"error": "404 page not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        self._record(body)
        routes = {"/api/chat": self._ollama_chat, "/api/pull": self._ollama_pull, "/api/show": self._ollama_show,
                  "/v1/chat/completions": self._openai_chat}
        route = routes.get(self.path)
        if route is None:
            self._json(404, {"error": "404 page not found"})
            return
        try:
            route(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- Ollama

    def _ollama_model(self, name: str) -> FakeModel | None:
        models = self.server.fake.models
        return models.get(name) or models.get(name.removesuffix(":latest"))

    def _ollama_show(self, body: dict) -> None:
        model = self._ollama_model(body["model"])
        if model is None:
            self._json(404, {"error": f"model '{body['model']}' not found"})
            return
        self._json(200, {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                         "details": {"format": "gguf", "family": "llama"}, "model_info": {"general.architecture": "llama"},
                         "capabilities": ["completion", "vision"] if model.vision else ["completion"]})

    def _ollama_chat(self, body: dict) -> None:
        model = self._ollama_model(body["model"])
        messages = body["messages"]
        if model is None:
            self._json(404, {"error": f"model '{body['model']}' not found"})
            return
        images = [i for m in messages for i in (m.get("images") or [])]
        if images and not model.vision:
            self._json(500, {"error": "this model is missing data required for image input"})
            return
        if model.single_image and any(len(m.get("images") or []) > 1 for m in messages):
            self._json(500, {"error": "vision model only supports a single image per message"})
            return
        if _words(messages) > model.context_words:
            self._json(400, {"error": "the input length exceeds the context length"})
            return
        reply = self.server.fake.reply_for(model, messages)
        judged = self.server.fake.judged_token(model, body)
        if judged is not None:
            first, top = judged
            self._json(200, {"model": body["model"], "created_at": "2025-01-02T03:04:05Z",
                             "message": {"role": "assistant", "content": first["token"]}, "done": True, "done_reason": "length",
                             "prompt_eval_count": _words(messages), "eval_count": 1,
                             "logprobs": [{**first, "top_logprobs": top}]})
            return
        final = {"model": body["model"], "created_at": "2025-01-02T03:04:05Z", "message": {"role": "assistant", "content": ""},
                 "done": True, "done_reason": "stop", "total_duration": 1_500_000_000, "load_duration": 250_000_000,
                 "prompt_eval_count": _words(messages), "prompt_eval_duration": 100_000_000,
                 "eval_count": len(reply.split()), "eval_duration": 900_000_000}
        if body.get("stream", True):
            self._start_stream("application/x-ndjson")
            for piece in _pieces(reply):
                line = {"model": body["model"], "created_at": "2025-01-02T03:04:05Z",
                        "message": {"role": "assistant", "content": piece}, "done": False}
                self.wfile.write(json.dumps(line).encode() + b"\n")
                self.wfile.flush()
            self.wfile.write(json.dumps(final).encode() + b"\n")
        else:
            final["message"]["content"] = reply
            self._json(200, final)

    def _ollama_pull(self, body: dict) -> None:
        name = body["model"]
        if name not in self.server.fake.pullable:
            self._json(500, {"error": "pull model manifest: file does not exist"})
            return
        self._start_stream("application/x-ndjson")
        lines = [{"status": "pulling manifest"},
                 {"status": "pulling 11f274007f09", "digest": "sha256:11f274007f09", "total": 1000, "completed": 500},
                 {"status": "pulling 11f274007f09", "digest": "sha256:11f274007f09", "total": 1000, "completed": 1000},
                 {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        for line in lines:
            self.wfile.write(json.dumps(line).encode() + b"\n")
        self.server.fake.models[name] = FakeModel()

    # -- OpenAI

    def _openai_error(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})

    def _openai_chat(self, body: dict) -> None:
        model = self.server.fake.models.get(body["model"])
        messages = body["messages"]
        if model is None:
            self._openai_error(404, f'model "{body["model"]}" not found, try pulling it first', "api_error")
            return
        has_images = any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"]) for m in messages)
        if has_images and not model.vision:
            self._openai_error(500, "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
                               "server_error")
            return
        prompt_tokens = _words(messages)
        if prompt_tokens > model.context_words:
            self._openai_error(400, f"This model's maximum context length is {model.context_words} tokens. However, your messages "
                               f"resulted in {prompt_tokens} tokens.", "invalid_request_error", "context_length_exceeded")
            return
        reply = self.server.fake.reply_for(model, messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(reply.split()),
                 "total_tokens": prompt_tokens + len(reply.split())}
        base = {"id": "chatcmpl-1", "created": 1735787045, "model": body["model"], "system_fingerprint": "fp_fake"}
        judged = self.server.fake.judged_token(model, body)
        if judged is not None:
            first, top = judged
            self._json(200, {**base, "object": "chat.completion", "usage": {**usage, "completion_tokens": 1}, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": first["token"]}, "finish_reason": "length",
                 "logprobs": {"content": [{**first, "top_logprobs": top}]}}]})
            return
        if not body.get("stream"):
            self._json(200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]})
            return
        self._start_stream("text/event-stream")

        def event(data: Any) -> None:
            self.wfile.write(b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n")
            self.wfile.flush()

        chunk = {**base, "object": "chat.completion.chunk"}
        event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for piece in _pieces(reply):
            event({**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            event({**chunk, "choices": [], "usage": usage})
        event(b"[DONE]")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLlmServer


@contextlib.contextmanager
def serve_fake_llm(models: dict[str, FakeModel] | None = None, pullable: set[str] | None = None) -> Iterator[FakeLlmServer]:
    """Run a :class:`FakeLlmServer` on 127.0.0.1 (a thread) for the ``with`` block; its ``url`` has no trailing slash."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeLlmServer(models=dict(models or {}), pullable=set(pullable or ()))
    server.fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def decoded_images(message: dict[str, Any]) -> list[bytes]:
    """The image bytes in one recorded chat message (Ollama ``images`` or OpenAI ``image_url`` data URLs)."""
    if message.get("images"):
        return [base64.b64decode(i) for i in message["images"]]
    out = []
    if isinstance(message.get("content"), list):
        for part in message["content"]:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
