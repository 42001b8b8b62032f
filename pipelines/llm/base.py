"""The one interface every LLM backend implements, its records and its typed error.

A backend turns chat messages (plus optional images) into a stream of events: text deltas
(``str``) and, last, one :class:`Usage` with token counts and timings. Backends are the only
place with side effects (HTTP, a loaded model); prompt building stays pure in
:mod:`mmrag.pipelines.generate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

LlmErrorKind = Literal[
    "unreachable",  # no server at the host/port, DNS failure, refused connection
    "timeout",  # the server took longer than llm.timeout_s
    "model_not_found",  # the server (or the GGUF registry) has no such model
    "images_rejected",  # the model does not accept image input
    "context_overflow",  # prompt (+ answer budget) exceeds the model's context window
    "model_parts_missing",  # a GGUF part package is not installed
    "checksum_mismatch",  # an assembled GGUF does not have the expected sha256
    "runtime_missing",  # the llama.cpp runtime (xllamacpp) is not installed
    "bad_request",  # the server refused the request for another reason
    "server_error",  # the server failed (5xx) for another reason
    "bad_spec",  # --llm BACKEND:MODEL is malformed or names an unknown backend
    "no_logprobs",  # the server answered without the token log-probabilities that were asked for
]


class LlmError(RuntimeError):
    """A failure of an LLM backend, with a ``kind`` callers can branch on and a one-line message."""

    def __init__(self, kind: LlmErrorKind, message: str):
        super().__init__(message)
        self.kind: LlmErrorKind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn: ``role`` is ``system``, ``user`` or ``assistant``."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ImageInput:
    """An image given to a model: its bytes (for vision models) and its words (for text-only models).

    ``label`` is how the prompt refers to it (source URL or file path); ``score`` orders images
    when only one can be sent; ``sha256`` is the stored image's content hash, when it comes from the index.
    """

    data: bytes = field(repr=False)
    mime_type: str = "image/png"
    label: str = ""
    caption: str = ""
    ocr_text: str = ""
    score: float = 0.0
    sha256: str = ""


@dataclass
class Usage:
    """Token counts and timings of one generation (``None`` where the backend does not report it).

    ``calls`` counts model calls (more than one under the ``per_image`` multi-image strategy).
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    load_s: float | None = None
    time_to_first_token_s: float | None = None
    total_s: float | None = None
    finish_reason: str | None = None
    model: str = ""
    calls: int = 1

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second of the generation phase, when known."""
        if not self.completion_tokens or not self.total_s:
            return None
        gen_s = self.total_s - (self.time_to_first_token_s or 0.0)
        return self.completion_tokens / gen_s if gen_s > 0 else None

    def to_dict(self) -> dict:
        """Plain JSON-able dict, including ``tokens_per_s``."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "load_s": self.load_s,
            "time_to_first_token_s": self.time_to_first_token_s,
            "total_s": self.total_s,
            "tokens_per_s": self.tokens_per_s,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "calls": self.calls,
        }

    def add(self, other: "Usage") -> "Usage":
        """Sum of two usages (token counts and times add; the later finish reason wins)."""

        def plus(a, b):
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            prompt_tokens=plus(self.prompt_tokens, other.prompt_tokens),
            completion_tokens=plus(self.completion_tokens, other.completion_tokens),
            load_s=plus(self.load_s, other.load_s),
            time_to_first_token_s=self.time_to_first_token_s if self.time_to_first_token_s is not None else other.time_to_first_token_s,
            total_s=plus(self.total_s, other.total_s),
            finish_reason=other.finish_reason or self.finish_reason,
            model=other.model or self.model,
            calls=self.calls + other.calls,
        )


StreamEvent = str | Usage


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings of one call."""

    max_tokens: int = 512
    temperature: float = 0.2
    seed: int | None = None


DEFAULT_OPTIONS = GenerationOptions()


@runtime_checkable
class ChatBackend(Protocol):
    """What every backend offers. ``generate`` yields ``str`` deltas, then exactly one :class:`Usage`."""

    name: str  # "ollama", "openai", "llamacpp"
    model: str
    supports_images: bool

    def generate(
        self,
        messages: Sequence[ChatMessage],
        images: Sequence[ImageInput] = (),
        *,
        stream: bool = True,
        options: GenerationOptions = DEFAULT_OPTIONS,
    ) -> Iterator[StreamEvent]:
        """Answer ``messages``; ``images`` go with the last user message. Raises :class:`LlmError`."""
        ...


@dataclass(frozen=True)
class TokenLogprobs:
    """The first token a model generated and the most likely tokens at that position.

    ``top_logprobs`` entries use the OpenAI wire names: ``{"token": str, "logprob": float}``.
    """

    token: str
    top_logprobs: tuple[dict[str, Any], ...]


@runtime_checkable
class LogprobsBackend(Protocol):
    """A backend that reports the log-probabilities of the next token (what the ``llm`` reranker needs)."""

    name: str
    model: str

    def first_token_logprobs(self, messages: Sequence[ChatMessage], *, top_logprobs: int = 10) -> TokenLogprobs:
        """Generate one token greedily for ``messages``; it and its ``top_logprobs`` alternatives.

        Raises :class:`LlmError` (kind ``no_logprobs`` when the server returns none).
        """
        ...


def first_token_from_choice(choice: dict[str, Any], where: str) -> TokenLogprobs:
    """The :class:`TokenLogprobs` of an OpenAI-format chat-completion ``choice`` (llama.cpp, vLLM, OpenAI).

    ``where`` names the server in the ``no_logprobs`` error raised when the choice carries none.
    """
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content:
        raise LlmError("no_logprobs", f"{where} returned no token log-probabilities")
    first = content[0]
    top = first.get("top_logprobs") or [first]
    return TokenLogprobs(
        token=str(first.get("token", "")),
        top_logprobs=tuple({"token": str(t.get("token", "")), "logprob": float(t.get("logprob", -math.inf))} for t in top),
    )


@dataclass
class Completion:
    """A whole generation: its text and usage."""

    text: str
    usage: Usage = field(default_factory=Usage)


def collect(events: Iterable[StreamEvent]) -> Completion:
    """Drain a backend's event stream into one :class:`Completion`."""
    pieces: list[str] = []
    usage = Usage()
    for event in events:
        if isinstance(event, Usage):
            usage = event
        else:
            pieces.append(event)
    return Completion("".join(pieces), usage)


class Stopwatch:
    """Times one generation: start, first token, end."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def token(self) -> None:
        """Mark that a token arrived (only the first one counts)."""
        if self.first is None:
            self.first = time.perf_counter()

    def ttft(self) -> float | None:
        """Seconds from start to the first token."""
        return None if self.first is None else self.first - self.start

    def elapsed(self) -> float:
        """Seconds since start."""
        return time.perf_counter() - self.start


def last_user_index(messages: Sequence[ChatMessage]) -> int:
    """Index of the last user message (images attach there); ``-1`` if none."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return -1


def classify_error_text(text: str) -> LlmErrorKind | None:
    """The error kind a server's error message describes, recognised across Ollama, vLLM, llama.cpp and OpenAI wording."""
    lowered = text.lower()
    if any(s in lowered for s in ("context length", "context size", "context window", "maximum context",
                                  "context_length_exceeded", "exceed_context_size", "too many tokens",
                                  "prompt is too long", "exceeds the available context")):
        return "context_overflow"
    if any(s in lowered for s in ("image input", "does not support image", "not a multimodal", "image_url is only supported",
                                  "missing data required for image", "does not support vision", "mmproj",
                                  "images are not supported", "vision is not supported", "only supports a single image",
                                  "one image")):
        return "images_rejected"
    if ("not found" in lowered or "does not exist" in lowered or "no such model" in lowered) and "model" in lowered:
        return "model_not_found"
    return None


def images_as_text(images: Sequence[ImageInput]) -> str:
    """Images described in words for text-only models: label, caption and OCR text of each."""
    lines: list[str] = []
    for number, image in enumerate(images, 1):
        lines.append(f"[Image {number}] {image.label}".rstrip())
        if image.caption.strip():
            lines.append(f"Caption: {' '.join(image.caption.split())}")
        if image.ocr_text.strip():
            lines.append(f"Text in the image: {' '.join(image.ocr_text.split())}")
        if not image.caption.strip() and not image.ocr_text.strip():
            lines.append("(no caption or readable text)")
    return "\n".join(lines)
