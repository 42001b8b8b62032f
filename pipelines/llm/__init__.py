"""LLM backends behind one interface (:class:`~mmrag.pipelines.llm.base.ChatBackend`), chosen by ``--llm BACKEND:MODEL``.

* ``llamacpp:MODEL`` — in process, offline (default ``llamacpp:qwen2.5-coder-0.5b``; also
  ``qwen2.5-coder-1.5b`` or a path to any ``.gguf``), see :mod:`mmrag.pipelines.llm.llamacpp_backend`.
* ``ollama:MODEL`` — an Ollama server (``llm.ollama_host`` / ``OLLAMA_HOST``).
* ``openai:MODEL`` — any OpenAI-compatible ``/v1/chat/completions`` (``llm.openai_base_url``).

The model part may itself contain colons (``ollama:llama3.2-vision:11b``); a bare backend name uses
``llm.model`` when ``llm.backend`` is that backend, else the backend's default model.

Why ``xllamacpp`` runs ``llamacpp``: see :mod:`mmrag.pipelines.llm.llamacpp_backend`.
"""

from __future__ import annotations

from mmrag.config import LlmConfig
from mmrag.pipelines.llm.base import ChatBackend, LlmError
from mmrag.pipelines.llm.llamacpp_backend import LlamaCppBackend
from mmrag.pipelines.llm.ollama_backend import OllamaBackend
from mmrag.pipelines.llm.openai_backend import OpenAIBackend

BACKENDS = ("llamacpp", "ollama", "openai")
DEFAULT_MODELS = {"llamacpp": "qwen2.5-coder-0.5b", "ollama": "llama3.2-vision", "openai": "llama3.2-vision"}


def parse_llm_spec(spec: str | None, config: LlmConfig) -> tuple[str, str]:
    """``"ollama:llama3.2-vision:11b"`` -> ``("ollama", "llama3.2-vision:11b")``; ``None`` -> the configured backend and model."""
    if not spec:
        return config.backend, config.model or DEFAULT_MODELS[config.backend]
    backend, _, model = spec.partition(":")
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise LlmError("bad_spec", f"--llm {spec!r}: unknown backend {backend!r} (use one of {', '.join(BACKENDS)}, as BACKEND:MODEL)")
    if not model:
        model = (config.model if config.backend == backend and config.model else "") or DEFAULT_MODELS[backend]
    return backend, model


def make_backend(config: LlmConfig, spec: str | None = None) -> ChatBackend:
    """The backend named by ``spec`` (``BACKEND:MODEL``) or by the config, built with the config's settings."""
    backend, model = parse_llm_spec(spec, config)
    if backend == "ollama":
        return OllamaBackend(model, config.ollama_host, timeout_s=config.timeout_s, num_ctx=config.ollama_num_ctx,
                             keep_alive=config.ollama_keep_alive, send_images=config.send_images)
    if backend == "openai":
        return OpenAIBackend(model, config.openai_base_url, api_key_env=config.openai_api_key_env, timeout_s=config.timeout_s,
                             max_retries=config.max_retries, send_images=config.send_images)

    return LlamaCppBackend(model, config.cache_dir, n_ctx=config.n_ctx, n_threads=config.n_threads)
