"""LLM-judged answer metrics, as ragas 0.4.3 defines them, through an OpenAI-compatible endpoint.

Per answer: ``faithfulness`` (ragas Faithfulness: the judge splits the answer into statements, then
decides for each whether the contexts given to the answering model support it; the share
supported), ``answer_relevancy`` (ragas AnswerRelevancy: the judge writes ``eval.judge_strictness``
questions the answer would answer; mean cosine, with our embedder, of those and the real question;
0 when the judge calls the answer noncommittal) and, with ``eval.judge_images``, the retrieved
images given as ``data:`` URLs too: ``multimodal_faithfulness`` / ``multimodal_relevance`` (ragas
MultiModalFaithfulness / MultiModalRelevance: one verdict each, 0 or 1).

The judge (``--judge`` / ``eval.judge``): ``llamacpp[:MODEL]`` serves the embedded GGUF model with
llama.cpp's own OpenAI-compatible HTTP server on a free 127.0.0.1 port for the run and stops it
after; ``ollama[:MODEL][@URL]`` uses Ollama's ``/v1``; ``openai:MODEL[@URL]`` any other endpoint.
ragas talks to it through ``instructor`` over an ``AsyncOpenAI`` client; with ``eval.judge_output``
``json_schema`` the schema goes in ``response_format``, which llama.cpp and Ollama turn into a
decoding grammar, so even a small model returns parseable JSON (what it says is another matter).

A metric that fails (endpoint error, output that does not fit the schema after the retries, no
statements extracted, the judge refusing images) leaves its column null and is named with the
reason in ``judge_error``; the answer row is kept. ``judge_s``, ``judge_tokens_in`` and
``judge_tokens_out`` add up every judge call made for the answer (retries included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmrag.eval.answer_metrics import EmbedderEmbeddings  # first: it turns ragas' usage tracking off before ragas loads
from mmrag.config import EvalConfig, LlmConfig
from mmrag.pipelines.llm.base import LlmError
from mmrag.pipelines.llm import parse_llm_spec
from mmrag.pipelines.llm.ollama_backend import ollama_host
from mmrag.pipelines.llm.gguf import resolve_gguf
from mmrag.pipelines.llm.llamacpp_backend import serve_http
from mmrag.pipelines.llm.openai_backend import NO_KEY
from mmrag.pipelines.llm.openai_backend import openai_error

JUDGE_COLUMNS = ("faithfulness", "answer_relevancy", "multimodal_faithfulness", "multimodal_relevance")
JUDGE_INFO_COLUMNS = ("judge", "judge_error", "judge_s", "judge_tokens_in", "judge_tokens_out")


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed ``--judge``: backend, model, and endpoint (``None``: serve the embedded model for the run)."""

    backend: str
    model: str
    base_url: str | None


def parse_judge_spec(spec: str, llm: LlmConfig) -> JudgeSpec:
    """``llamacpp[:MODEL]`` | ``ollama[:MODEL][@URL]`` | ``openai[:MODEL][@URL]`` -> :class:`JudgeSpec`; bad specs raise ``LlmError(bad_spec)``."""

    name, at, url = spec.strip().partition("@")
    if at and not url.startswith(("http://", "https://")):
        raise LlmError("bad_spec", f"--judge {spec!r}: the endpoint after '@' must be an http(s) URL")
    backend, model = parse_llm_spec(name, llm)
    if backend == "llamacpp":
        if url:
            raise LlmError("bad_spec", f"--judge {spec!r}: llamacpp serves the embedded model itself; "
                           "for a running llama.cpp server use openai:MODEL@URL")
        return JudgeSpec("llamacpp", model, None)
    if backend == "ollama":
        return JudgeSpec("ollama", model, (url or ollama_host(llm.ollama_host).rstrip("/") + "/v1").rstrip("/"))
    return JudgeSpec("openai", model, (url or llm.openai_base_url).rstrip("/"))


@contextlib.contextmanager
def judge_endpoint(spec: JudgeSpec, llm: LlmConfig) -> Iterator[str]:
    """The judge's ``/v1`` base URL for the ``with`` block; for ``llamacpp`` a llama.cpp HTTP server on 127.0.0.1, stopped on exit."""
    if spec.base_url:
        yield spec.base_url
        return

    with serve_http(resolve_gguf(spec.model, llm.cache_dir), alias=spec.model, n_ctx=llm.n_ctx, n_threads=llm.n_threads) as url:
        yield url


class TokenMeter:
    """Token counts of the judge's completions since the last :meth:`reset` (fed by instructor's response hook)."""

    def __init__(self) -> None:
        self.tokens_in = 0
        self.tokens_out = 0

    def reset(self) -> None:
        """Start counting from zero."""
        self.tokens_in = self.tokens_out = 0

    def add(self, completion: Any) -> None:
        """Count one completion's usage (when the server reports it)."""
        usage = getattr(completion, "usage", None)
        self.tokens_in += getattr(usage, "prompt_tokens", 0) or 0
        self.tokens_out += getattr(usage, "completion_tokens", 0) or 0


def judge_client(base_url: str, settings: EvalConfig, *, api_key_env: str = "OPENAI_API_KEY") -> Any:
    """The ``AsyncOpenAI`` client of the judge at ``base_url`` (retries are instructor's, on output that does not validate)."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or NO_KEY, timeout=settings.judge_timeout_s, max_retries=0)


def judge_llm(client: Any, model: str, settings: EvalConfig) -> tuple[Any, TokenMeter]:
    """A ragas ``InstructorLLM`` over ``client`` (structured output per ``judge_output``) and the meter counting its tokens."""
    import instructor
    from ragas.llms.base import InstructorLLM, InstructorModelArgs

    mode = instructor.Mode.JSON_SCHEMA if settings.judge_output == "json_schema" else instructor.Mode.JSON
    patched = instructor.from_openai(client, mode=mode)
    meter = TokenMeter()
    patched.on("completion:response", meter.add)
    llm = InstructorLLM(client=patched, model=model, provider="openai",
                        model_args=InstructorModelArgs(max_tokens=settings.judge_max_tokens), max_retries=settings.judge_max_retries)
    return llm, meter


def judge_metrics(llm: Any, embed: Callable[[list[str]], Any], settings: EvalConfig) -> dict[str, Any]:
    """The ragas metric objects to run, by output column (the multimodal pair only with ``judge_images``)."""
    from ragas.metrics.collections import AnswerRelevancy, Faithfulness, MultiModalFaithfulness, MultiModalRelevance

    metrics: dict[str, Any] = {
        "faithfulness": Faithfulness(llm=llm),
        "answer_relevancy": AnswerRelevancy(llm=llm, embeddings=EmbedderEmbeddings(embed), strictness=settings.judge_strictness),
    }
    if settings.judge_images:
        metrics["multimodal_faithfulness"] = MultiModalFaithfulness(llm=llm)
        metrics["multimodal_relevance"] = MultiModalRelevance(llm=llm)
    return metrics


def failure_text(exc: BaseException, base_url: str, model: str) -> str:
    """One line saying why a judged metric failed: the endpoint's error when there is one, else what did not validate."""
    import openai

    attempts = getattr(exc, "failed_attempts", None) or []
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or current in seen:
            continue
        seen.append(current)
        if isinstance(current, openai.APIError):
            error = openai_error(current, base_url, model)
            if error.kind == "images_rejected":
                return (f"images_rejected: the judge {model!r} at {base_url} does not accept images "
                        "(turn eval.judge_images off, or judge with a vision model)")
            return f"{error.kind}: {error}"[:400]
        todo += [current.__cause__, current.__context__, *(getattr(a, "exception", None) for a in attempts)]
    last = getattr(attempts[-1], "exception", None) if attempts else None
    lines = [line.strip() for line in str(last or exc).strip().splitlines() if line.strip()][:2]
    if attempts:
        return f"the judge's output did not fit the schema after {len(attempts)} attempt(s): {'; '.join(lines)}"[:400]
    return f"{type(exc).__name__}: {'; '.join(lines)}"[:400]


def metric_inputs(name: str, *, question: str, answer: str, contexts: Sequence[str], images: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of one ragas metric's ``ascore`` (images are ``data:`` URLs, after the text contexts)."""
    if name == "faithfulness":
        return {"user_input": question, "response": answer, "retrieved_contexts": list(contexts)}
    if name == "answer_relevancy":
        return {"user_input": question, "response": answer}
    mixed = [*contexts, *images]
    if name == "multimodal_faithfulness":
        return {"response": answer, "retrieved_contexts": mixed}
    return {"user_input": question, "response": answer, "retrieved_contexts": mixed}


async def judge_answer(metrics: Mapping[str, Any], meter: TokenMeter, *, question: str, answer: str, contexts: Sequence[str],
                       images: Sequence[str] = (), base_url: str = "", model: str = "") -> dict[str, Any]:
    """Run every metric on one answer; returns its judged columns (null + ``judge_error`` entry per failed metric), seconds and tokens."""
    out: dict[str, Any] = dict.fromkeys(JUDGE_COLUMNS)
    errors: list[str] = []
    meter.reset()
    started = time.perf_counter()
    for name, metric in metrics.items():
        try:
            value = (await metric.ascore(**metric_inputs(name, question=question, answer=answer, contexts=contexts, images=images))).value
        except Exception as exc:  # noqa: BLE001 - a failed judgement is recorded, the answer kept
            errors.append(f"{name}: {failure_text(exc, base_url, model)}")
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            errors.append(f"{name}: no score (the judge extracted no statements or verdicts from the answer)")
        else:
            out[name] = float(value)
    out.update(judge_error=" | ".join(errors) or None, judge_s=round(time.perf_counter() - started, 3),
               judge_tokens_in=meter.tokens_in, judge_tokens_out=meter.tokens_out)
    return out


def judge_rows(rows: list[dict[str, Any]], contexts: Sequence[Sequence[str]], images: Sequence[Sequence[str]], *,
               spec: JudgeSpec, llm_config: LlmConfig, settings: EvalConfig, embed: Callable[[list[str]], Any],
               log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Add the judged columns to answer rows (in place; ``contexts[i]`` / ``images[i]`` belong to ``rows[i]``); returns ``rows``.

    Failed answers are not judged (their judged columns stay null). The judge endpoint is opened once
    for all rows (for ``llamacpp``: the model is served on 127.0.0.1 and stopped afterwards).
    """
    log = log or (lambda _m: None)
    todo = [i for i, r in enumerate(rows) if r.get("error") is None and r.get("answer")]
    for row in rows:
        row.update(dict.fromkeys((*JUDGE_COLUMNS, *JUDGE_INFO_COLUMNS)))
    if not todo:
        return rows
    async def run_all(base_url: str, label: str) -> None:
        async with judge_client(base_url, settings, api_key_env=llm_config.openai_api_key_env) as client:
            llm, meter = judge_llm(client, spec.model, settings)
            metrics = judge_metrics(llm, embed, settings)
            for n, i in enumerate(todo, start=1):
                row = rows[i]
                row.update(await judge_answer(metrics, meter, question=row["query"], answer=row["answer"], contexts=contexts[i],
                                              images=images[i], base_url=base_url, model=spec.model), judge=label)
                log(f"judge {n}/{len(todo)} {row['llm']} {row['query_id']}: {row['judge_s']} s"
                    + (f" ({row['judge_error']})" if row["judge_error"] else ""))

    try:
        # instructor logs every failed attempt at ERROR level; each failure is recorded in judge_error instead.
        with _quiet_logger("instructor"), judge_endpoint(spec, llm_config) as base_url:
            log(f"judge {spec.backend}:{spec.model} at {base_url}")
            asyncio.run(run_all(base_url, f"{spec.backend}:{spec.model}@{base_url}"))
    except LlmError as exc:  # the embedded judge could not start: every answer says so
        for i in todo:
            rows[i].update(judge=f"{spec.backend}:{spec.model}", judge_error=f"judge unavailable: {exc.kind}: {exc}"[:400])
    return rows


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
