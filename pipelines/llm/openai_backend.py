"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with Ollama's (``http://127.0.0.1:11434/v1``, the default), vLLM's and llama.cpp server's
endpoints through the official ``openai`` client. Images go as ``data:`` URLs in ``image_url``
content parts; streaming is Server-Sent Events ending in ``data: [DONE]``, with
``stream_options.include_usage`` asking for the token counts in the last chunk. The API key is read
from the environment variable named by ``llm.openai_api_key_env`` (local servers need none).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
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
    last_user_index,
)

DEFAULT_OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
NO_KEY = "no-key"  # local servers ignore the key, but the client insists on one


def image_data_url(image: ImageInput) -> str:
    """``data:<mime>;base64,<bytes>`` for an image content part."""
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def chat_request_messages(messages: Sequence[ChatMessage], images: Sequence[ImageInput]) -> list[dict[str, Any]]:
    """Messages in the chat-completions wire form; the last user message becomes text + ``image_url`` parts when images are given."""
    wire: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in messages]
    if images:
        index = last_user_index(messages)
        if index < 0:
            raise ValueError("images need a user message to go with")
        wire[index]["content"] = [{"type": "text", "text": messages[index].content}] + [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in images
        ]
    return wire


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return " ".join(str(inner.get(k, "")) for k in ("message", "type", "code") if inner.get(k)) or str(body)
        return str(inner)
    return str(getattr(exc, "message", "") or exc)


def openai_error(exc: Exception, base_url: str, model: str) -> LlmError:
    """The :class:`LlmError` for an exception raised by the ``openai`` client."""
    import openai

    if isinstance(exc, LlmError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return LlmError("timeout", f"the endpoint {base_url} did not answer in time (raise llm.timeout_s)")
    if isinstance(exc, openai.APIConnectionError):
        return LlmError("unreachable", f"cannot reach the OpenAI-compatible endpoint {base_url} (is the server running? set llm.openai_base_url)")
    if isinstance(exc, openai.APIStatusError):
        text = _error_text(exc)
        kind = classify_error_text(text)
        status = exc.status_code
        if kind == "model_not_found" or (status == 404 and "model" in text.lower()):
            return LlmError("model_not_found", f"the endpoint {base_url} has no model {model!r}: {text}")
        if kind == "images_rejected":
            return LlmError("images_rejected", f"model {model!r} at {base_url} rejected the image input: {text} "
                            "(use a vision model, or set llm.send_images=false to send captions instead)")
        if kind == "context_overflow":
            return LlmError("context_overflow", f"the prompt does not fit the context of model {model!r}: {text} (ask with fewer hits)")
        if status == 404:
            return LlmError("bad_request", f"{base_url}/chat/completions does not exist (HTTP 404; is llm.openai_base_url right?)")
        if status in (401, 403):
            return LlmError("bad_request", f"the endpoint {base_url} refused the credentials (HTTP {status}; set the key in "
                            "the variable named by llm.openai_api_key_env)")
        return LlmError("server_error" if status >= 500 else "bad_request", f"the endpoint {base_url} failed (HTTP {status}): {text}")
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        text = _error_text(exc)
        kind = classify_error_text(text) or "server_error"
        return LlmError(kind, f"the endpoint {base_url} reported an error for model {model!r}: {text}")
    return LlmError("server_error", f"the endpoint {base_url}: {type(exc).__name__}: {exc}")


def _usage_from(usage: Any, watch: Stopwatch, finish_reason: str | None, model: str) -> Usage:
    return Usage(
        prompt_tokens=getattr(usage, "prompt_tokens", None) if usage else None,
        completion_tokens=getattr(usage, "completion_tokens", None) if usage else None,
        time_to_first_token_s=watch.ttft(),
        total_s=watch.elapsed(),
        finish_reason=finish_reason,
        model=model,
    )


class OpenAIBackend:
    """A model behind an OpenAI-compatible endpoint (``openai:NAME``)."""

    name = "openai"

    def __init__(self, model: str, base_url: str = DEFAULT_OPENAI_BASE_URL, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, max_retries: int = 1, send_images: bool = True,
                 headers: dict[str, str] | None = None):
        import openai

        self.model = model
        self.base_url = base_url.rstrip("/")
        self.supports_images = send_images
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=os.environ.get(api_key_env) or NO_KEY,
            timeout=timeout_s,
            max_retries=max_retries,
            default_headers=headers or None,
        )

    def generate(self, messages: Sequence[ChatMessage], images: Sequence[ImageInput] = (), *, stream: bool = True,
                 options: GenerationOptions = DEFAULT_OPTIONS) -> Iterator[StreamEvent]:
        """Call ``/chat/completions`` (SSE when streaming); yields text deltas, then :class:`Usage`."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": chat_request_messages(messages, images),
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        }
        if options.seed is not None:
            request["seed"] = options.seed
        watch = Stopwatch()
        try:
            if not stream:
                response = self._client.chat.completions.create(**request)
                choice = response.choices[0]
                text = choice.message.content or ""
                if text:
                    watch.token()
                    yield text
                yield _usage_from(response.usage, watch, choice.finish_reason, self.model)
                return
            finish_reason = None
            usage = None
            for chunk in self._client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}):
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        watch.token()
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
            yield _usage_from(usage, watch, finish_reason, self.model)
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one LlmError
            raise openai_error(exc, self.base_url, self.model) from None

    def first_token_logprobs(self, messages: Sequence[ChatMessage], *, top_logprobs: int = 10) -> TokenLogprobs:
        """One greedy token (``max_tokens=1``, ``logprobs``, ``top_logprobs``) and its alternatives.

        Servers that drop ``logprobs`` (Ollama's ``/v1`` does) give a ``no_logprobs`` :class:`LlmError`.
        """
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=chat_request_messages(messages, ()), max_tokens=1, temperature=0.0,
                logprobs=True, top_logprobs=top_logprobs,
            )
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one LlmError
            raise openai_error(exc, self.base_url, self.model) from None
        if not response.choices:
            raise LlmError("server_error", f"the endpoint {self.base_url} returned no choices for model {self.model!r}")
        return first_token_from_choice(response.choices[0].model_dump(), f"the endpoint {self.base_url} (model {self.model!r})")
