"""The ``ollama`` backend: a running Ollama server through the official ``ollama`` Python client.

Host: ``llm.ollama_host``, else ``OLLAMA_HOST``, else ``http://127.0.0.1:11434``. Images go as raw
bytes on the last user message (the client base64-encodes them). Every failure becomes an
:class:`~mmrag.pipelines.llm.base.LlmError`; :func:`pull_ollama_model` and :func:`list_ollama_models`
serve ``mmrag llm pull|list``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

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
    last_user_index,
)

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
NS = 1e9


def ollama_host(configured: str | None = None) -> str:
    """The Ollama host to use: the configured one, else ``OLLAMA_HOST``, else the local default."""
    return configured or os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST


def _client(host: str, timeout_s: float):
    try:
        import ollama
    except ImportError as exc:  # pragma: no cover - ollama is a declared dependency
        raise LlmError("runtime_missing", "the ollama backend needs the ollama package (pip install ollama)") from exc
    return ollama.Client(host=host, timeout=timeout_s)


def ollama_error(exc: Exception, host: str, model: str = "") -> LlmError:
    """The :class:`LlmError` for an exception raised by the ollama client (or its httpx transport)."""
    import ollama

    if isinstance(exc, LlmError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return LlmError("timeout", f"Ollama at {host} did not answer in time (raise llm.timeout_s)")
    if isinstance(exc, (ConnectionError, httpx.TransportError)):
        return LlmError("unreachable", f"cannot reach Ollama at {host} (is `ollama serve` running? set llm.ollama_host or OLLAMA_HOST)")
    if isinstance(exc, ollama.ResponseError):
        text = str(exc.error)
        kind = classify_error_text(text)
        if kind == "model_not_found" or (exc.status_code == 404 and kind is None):
            return LlmError("model_not_found", f"Ollama at {host} has no model {model!r} (run `mmrag llm pull ollama:{model}`): {text}")
        if kind == "images_rejected":
            return LlmError("images_rejected", f"Ollama model {model!r} rejected the image input: {text} "
                            "(use a vision model, or set llm.send_images=false to send captions instead)")
        if kind == "context_overflow":
            return LlmError("context_overflow", f"the prompt does not fit the context of Ollama model {model!r}: {text} "
                            "(ask with fewer hits, or raise llm.ollama_num_ctx)")
        status = exc.status_code
        return LlmError("server_error" if status is None or status < 0 or status >= 500 else "bad_request",
                        f"Ollama at {host} failed (HTTP {status}): {text}")
    return LlmError("server_error", f"Ollama at {host}: {type(exc).__name__}: {exc}")


class OllamaBackend:
    """A model served by Ollama (``ollama:NAME``)."""

    name = "ollama"

    def __init__(self, model: str, host: str | None = None, *, timeout_s: float = 120.0,
                 num_ctx: int | None = None, keep_alive: str | None = None, send_images: bool = True):
        self.model = model
        self.host = ollama_host(host)
        self.num_ctx = num_ctx
        self.keep_alive = keep_alive
        self.send_images = send_images
        self._client = _client(self.host, timeout_s)
        self._capabilities: list[str] | None = None

    def capabilities(self) -> list[str] | None:
        """The model's capabilities from ``/api/show`` (``completion``, ``vision`` …); None when the server does not say."""
        if self._capabilities is None:
            try:
                shown = self._client.show(self.model)
            except Exception as exc:  # noqa: BLE001 - mapped to LlmError
                raise ollama_error(exc, self.host, self.model) from None
            self._capabilities = list(shown.capabilities) if shown.capabilities is not None else []
        return self._capabilities or None

    @property
    def supports_images(self) -> bool:
        """Whether images go as bytes: ``vision`` in the model's capabilities (assumed when the server does not list them)."""
        if not self.send_images:
            return False
        capabilities = self.capabilities()
        return True if capabilities is None else "vision" in capabilities

    def _request_messages(self, messages: Sequence[ChatMessage], images: Sequence[ImageInput]) -> list[dict[str, Any]]:
        wire: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in messages]
        if images:
            index = last_user_index(messages)
            if index < 0:
                raise ValueError("images need a user message to go with")
            wire[index]["images"] = [image.data for image in images]
        return wire

    def generate(self, messages: Sequence[ChatMessage], images: Sequence[ImageInput] = (), *, stream: bool = True,
                 options: GenerationOptions = DEFAULT_OPTIONS) -> Iterator[StreamEvent]:
        """Chat with the model over ``/api/chat`` (NDJSON when streaming); yields text deltas, then :class:`Usage`."""
        request_options: dict[str, Any] = {"num_predict": options.max_tokens, "temperature": options.temperature}
        if options.seed is not None:
            request_options["seed"] = options.seed
        if self.num_ctx:
            request_options["num_ctx"] = self.num_ctx
        watch = Stopwatch()
        try:
            response = self._client.chat(self.model, messages=self._request_messages(messages, images), stream=stream,
                                         options=request_options, keep_alive=self.keep_alive)
            parts = response if stream else [response]
            for part in parts:
                text = part.message.content or ""
                if text:
                    watch.token()
                    yield text
                if part.done:
                    yield Usage(
                        prompt_tokens=part.prompt_eval_count,
                        completion_tokens=part.eval_count,
                        load_s=part.load_duration / NS if part.load_duration else None,
                        time_to_first_token_s=watch.ttft(),
                        total_s=watch.elapsed(),
                        finish_reason=part.done_reason,
                        model=self.model,
                    )
                    return
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one LlmError
            raise ollama_error(exc, self.host, self.model) from None
        raise LlmError("server_error", f"Ollama at {self.host} ended the answer stream without a final message")

    def first_token_logprobs(self, messages: Sequence[ChatMessage], *, top_logprobs: int = 10) -> TokenLogprobs:
        """One greedy token over ``/api/chat`` (``logprobs``, ``top_logprobs``; Ollama 0.12.11 or newer) and its alternatives."""
        request_options: dict[str, Any] = {"num_predict": 1, "temperature": 0.0}
        if self.num_ctx:
            request_options["num_ctx"] = self.num_ctx
        try:
            response = self._client.chat(self.model, messages=self._request_messages(messages, ()), stream=False,
                                         options=request_options, keep_alive=self.keep_alive, logprobs=True,
                                         top_logprobs=top_logprobs)
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one LlmError
            raise ollama_error(exc, self.host, self.model) from None
        if not response.logprobs:
            raise LlmError("no_logprobs", f"Ollama at {self.host} returned no token log-probabilities for model {self.model!r} "
                           "(they need Ollama 0.12.11 or newer)")
        first = response.logprobs[0]
        top = first.top_logprobs or [first]
        return TokenLogprobs(token=first.token, top_logprobs=tuple({"token": t.token, "logprob": t.logprob} for t in top))


def pull_ollama_model(name: str, host: str | None = None, *, timeout_s: float = 3600.0,
                      on_progress: Callable[[str, int | None, int | None], None] | None = None) -> str:
    """Ask the Ollama server at ``host`` to pull model ``name``; returns the last status (``success``).

    ``on_progress(status, completed_bytes, total_bytes)`` is called for every progress line.
    """
    host = ollama_host(host)
    client = _client(host, timeout_s)
    status = ""
    try:
        for progress in client.pull(name, stream=True):
            status = progress.status or status
            if on_progress:
                on_progress(status, progress.completed, progress.total)
    except Exception as exc:  # noqa: BLE001
        raise ollama_error(exc, host, name) from None
    return status


def list_ollama_models(host: str | None = None, *, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The models the Ollama server at ``host`` has (``/api/tags``): name, size, modified time, family, parameter size."""
    host = ollama_host(host)
    try:
        listed = _client(host, timeout_s).list()
    except Exception as exc:  # noqa: BLE001
        raise ollama_error(exc, host) from None
    models = []
    for model in listed.models:
        details = model.details
        models.append({
            "name": model.model,
            "size": model.size,
            "modified_at": model.modified_at.isoformat() if model.modified_at else None,
            "family": details.family if details else None,
            "parameter_size": details.parameter_size if details else None,
        })
    return models
