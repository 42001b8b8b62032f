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

**Repeats and spread.** With ``eval.judge_repeats: N`` every metric is asked N times per answer; the
column holds the mean of the repeats that gave a value and ``<metric>_std`` their sample standard
deviation (null with fewer than two values). At ragas' near-greedy ``judge_temperature`` 0.01 the
repeats of a local model mostly agree; a higher temperature shows how unstable the verdict is, but
only with ``judge_top_p`` raised too: ragas' default top_p 0.1 keeps only the likeliest tokens, and
the embedded model then repeats its greedy verdict at temperature 0.7 (bench/RESULTS.md
"generated_set_agreement").

**Cache.** Each verdict (one metric, one repeat) is stored in a JSON Lines file (:class:`JudgeCache`,
``eval.judge_cache``; by default ``judge-cache.jsonl`` beside the run directories) keyed by the judge
model, the hash of the metric's prompts (:func:`prompt_hash`), the metric, question, answer,
contexts, images, reference answer, repeat number and output settings (:func:`verdict_key`). A rerun
of the same answers takes every verdict from it and makes no judge call (the embedded judge is not
even started); failures are never cached. ``judge_cached`` counts the verdicts of an answer that
came from the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrag.eval.answer_metrics import EmbedderEmbeddings  # first: it turns ragas' usage tracking off before ragas loads
import ragas  # after answer_metrics (tracking off); its version is part of every prompt hash
from mmrag.config import EvalConfig, LlmConfig
from mmrag.pipelines.llm.base import LlmError
from mmrag.pipelines.llm import parse_llm_spec
from mmrag.pipelines.llm.ollama_backend import ollama_host
from mmrag.pipelines.llm.gguf import resolve_gguf
from mmrag.pipelines.llm.llamacpp_backend import serve_http
from mmrag.pipelines.llm.openai_backend import NO_KEY
from mmrag.pipelines.llm.openai_backend import openai_error
from mmrag.records import sha256_hex

JUDGE_COLUMNS = ("faithfulness", "answer_relevancy", "multimodal_faithfulness", "multimodal_relevance")
JUDGE_SPREAD_COLUMNS = tuple(f"{c}_std" for c in JUDGE_COLUMNS)
JUDGE_INFO_COLUMNS = ("judge", "judge_error", "judge_s", "judge_tokens_in", "judge_tokens_out", "judge_repeats", "judge_cached")
CACHE_FILE = "judge-cache.jsonl"
#: ragas' InstructorModelArgs default top_p (the eval.judge_top_p default).
RAGAS_TOP_P = 0.1


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
    args = InstructorModelArgs(max_tokens=settings.judge_max_tokens, temperature=settings.judge_temperature, top_p=settings.judge_top_p)
    llm = InstructorLLM(client=patched, model=model, provider="openai", model_args=args, max_retries=settings.judge_max_retries)
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


# --------------------------------------------------------------------------- verdict cache


class JudgeCache:
    """Judge verdicts by key in a JSON Lines file: one ``{"key", "value", "metric", "judge", "created_at"}`` per line.

    Read once when opened, appended to (and flushed) per verdict, so an interrupted run keeps what it
    judged; a later line for the same key wins. ``path`` None keeps the cache in memory only.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.values: dict[str, float] = {}
        self.hits = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.values[str(record["key"])] = float(record["value"])
                except (ValueError, KeyError, TypeError):  # a torn last line of an interrupted run
                    continue

    def get(self, key: str) -> float | None:
        """The cached verdict of ``key``, or None."""
        value = self.values.get(key)
        self.hits += value is not None
        return value

    def put(self, key: str, value: float, **info: Any) -> None:
        """Store one verdict (in memory and, with a path, appended to the file)."""
        self.values[key] = float(value)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "value": float(value), **info, "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def judge_cache_for(settings: EvalConfig, run_dir: str | Path | None) -> JudgeCache | None:
    """The cache ``eval.judge_cache`` names (``none``: no cache; unset: ``judge-cache.jsonl`` beside ``run_dir``)."""
    if settings.judge_cache and settings.judge_cache.strip().lower() == "none":
        return None
    if settings.judge_cache:
        return JudgeCache(settings.judge_cache)
    return JudgeCache(Path(run_dir).parent / CACHE_FILE) if run_dir is not None else None


def prompt_hash(metric: Any) -> str:
    """SHA-256 of what a ragas metric asks: its class, ragas' version, each prompt's instruction, examples and output
    schema, and its scalar settings (answer relevancy's strictness)."""
    parts: list[Any] = [type(metric).__module__, type(metric).__qualname__, getattr(ragas, "__version__", "")]
    for name, value in sorted(vars(metric).items()):
        if isinstance(value, (bool, int, float, str)) and not name.startswith("_"):
            parts.append([name, value])
        elif hasattr(value, "instruction"):
            output = getattr(value, "output_model", None)
            schema = output.model_json_schema() if hasattr(output, "model_json_schema") else None
            parts.append([name, str(value.instruction), str(getattr(value, "examples", "")), schema])
    return sha256_hex(json.dumps(parts, sort_keys=True, default=str))


def verdict_key(*, judge: str, prompt: str, metric: str, question: str, answer: str, contexts: Sequence[str],
                images: Sequence[str], reference: str | None, repeat: int, settings: EvalConfig) -> str:
    """Cache key of one verdict (images by the SHA-256 of their ``data:`` URLs; output mode, budget, temperature and top_p
    included; top_p only when it is not ragas' default 0.1, so verdicts cached before it was a setting keep their keys)."""
    sampling = {"top_p": settings.judge_top_p} if settings.judge_top_p != RAGAS_TOP_P else {}
    return sha256_hex(json.dumps({
        "judge": judge, "prompt": prompt, "metric": metric, "question": question, "answer": answer,
        "contexts": list(contexts), "images": [sha256_hex(i) for i in images], "reference": reference, "repeat": repeat,
        "output": settings.judge_output, "max_tokens": settings.judge_max_tokens, "temperature": settings.judge_temperature,
        **sampling,
    }, sort_keys=True, ensure_ascii=False))


def spread(values: Sequence[float]) -> float | None:
    """Sample standard deviation of ``values`` (None with fewer than two)."""
    return float(statistics.stdev(values)) if len(values) >= 2 else None


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
                       images: Sequence[str] = (), base_url: str = "", model: str = "", repeats: int = 1,
                       keys: Mapping[tuple[str, int], str] | None = None, cache: JudgeCache | None = None) -> dict[str, Any]:
    """Run every metric ``repeats`` times on one answer; returns its judged columns (mean, ``<metric>_std``; null + a
    ``judge_error`` entry per failed metric), seconds, tokens, ``judge_repeats`` and ``judge_cached``.

    With ``cache`` and ``keys`` (``{(metric, repeat): key}``), a cached verdict is taken instead of a call and each new
    one is stored.
    """
    out: dict[str, Any] = {**dict.fromkeys(JUDGE_COLUMNS), **dict.fromkeys(JUDGE_SPREAD_COLUMNS)}
    errors: list[str] = []
    cached = 0
    meter.reset()
    started = time.perf_counter()
    for name, metric in metrics.items():
        values: list[float] = []
        for repeat in range(repeats):
            where = f"{name}: " + (f"repeat {repeat + 1}/{repeats}: " if repeats > 1 else "")
            key = (keys or {}).get((name, repeat))
            hit = cache.get(key) if cache is not None and key else None
            if hit is not None:
                values.append(hit)
                cached += 1
                continue
            try:
                value = (await metric.ascore(**metric_inputs(name, question=question, answer=answer, contexts=contexts,
                                                             images=images))).value
            except Exception as exc:  # noqa: BLE001 - a failed judgement is recorded, the answer kept
                errors.append(where + failure_text(exc, base_url, model))
                continue
            if value is None or (isinstance(value, float) and math.isnan(value)):
                errors.append(where + "no score (the judge extracted no statements or verdicts from the answer)")
                continue
            values.append(float(value))
            if cache is not None and key:
                cache.put(key, float(value), metric=name, judge=model, repeat=repeat)
        if values:
            out[name] = float(sum(values) / len(values))
            out[f"{name}_std"] = spread(values)
    out.update(judge_error=" | ".join(errors) or None, judge_s=round(time.perf_counter() - started, 3),
               judge_tokens_in=meter.tokens_in, judge_tokens_out=meter.tokens_out, judge_repeats=repeats, judge_cached=cached)
    return out


def judge_rows(rows: list[dict[str, Any]], contexts: Sequence[Sequence[str]], images: Sequence[Sequence[str]], *,
               spec: JudgeSpec, llm_config: LlmConfig, settings: EvalConfig, embed: Callable[[list[str]], Any],
               log: Callable[[str], None] | None = None, cache: JudgeCache | None = None) -> list[dict[str, Any]]:
    """Add the judged columns to answer rows (in place; ``contexts[i]`` / ``images[i]`` belong to ``rows[i]``); returns ``rows``.

    Failed answers are not judged (their judged columns stay null). The judge endpoint is opened once
    for all rows (for ``llamacpp``: the model is served on 127.0.0.1 and stopped afterwards), and not at
    all when ``cache`` holds every verdict asked for. Each metric is asked ``settings.judge_repeats`` times.
    """
    log = log or (lambda _m: None)
    todo = [i for i, r in enumerate(rows) if r.get("error") is None and r.get("answer")]
    for row in rows:
        row.update(dict.fromkeys((*JUDGE_COLUMNS, *JUDGE_SPREAD_COLUMNS, *JUDGE_INFO_COLUMNS)))
    if not todo:
        return rows
    repeats = settings.judge_repeats
    judge_name = f"{spec.backend}:{spec.model}"
    # The metrics' prompts (for the cache keys) are known before any endpoint exists: an unconnected client builds them.
    offline_llm, _ = judge_llm(judge_client("http://127.0.0.1:9/v1", settings), spec.model, settings)
    hashes = {name: prompt_hash(metric) for name, metric in judge_metrics(offline_llm, embed, settings).items()}
    keys = {i: {(name, r): verdict_key(judge=judge_name, prompt=digest, metric=name, question=rows[i]["query"],
                                       answer=rows[i]["answer"], contexts=contexts[i], images=images[i],
                                       reference=rows[i].get("reference_answer"), repeat=r, settings=settings)
                for name, digest in hashes.items() for r in range(repeats)} for i in todo}
    missing = cache is None or any(k not in cache.values for per_row in keys.values() for k in per_row.values())

    async def run_all(base_url: str, label: str, client: Any | None) -> None:
        llm, meter = judge_llm(client, spec.model, settings) if client is not None else (offline_llm, TokenMeter())
        metrics = judge_metrics(llm, embed, settings)
        for n, i in enumerate(todo, start=1):
            row = rows[i]
            row.update(await judge_answer(metrics, meter, question=row["query"], answer=row["answer"], contexts=contexts[i],
                                          images=images[i], base_url=base_url, model=spec.model, repeats=repeats,
                                          keys=keys[i], cache=cache), judge=label)
            log(f"judge {n}/{len(todo)} {row['llm']} {row['query_id']}: {row['judge_s']} s"
                + (f", {row['judge_cached']} cached" if row["judge_cached"] else "")
                + (f" ({row['judge_error']})" if row["judge_error"] else ""))

    async def run_online(base_url: str, label: str) -> None:
        async with judge_client(base_url, settings, api_key_env=llm_config.openai_api_key_env) as client:
            await run_all(base_url, label, client)

    if not missing:  # every verdict is cached: no endpoint, no model load
        log(f"judge {judge_name}: all {sum(len(k) for k in keys.values())} verdicts cached in {cache.path}")
        asyncio.run(run_all("", f"{judge_name} (cached)", None))
        return rows
    try:
        # instructor logs every failed attempt at ERROR level; each failure is recorded in judge_error instead.
        with _quiet_logger("instructor"), judge_endpoint(spec, llm_config) as base_url:
            log(f"judge {judge_name} at {base_url}" + (f", {repeats} repeats per metric" if repeats > 1 else ""))
            asyncio.run(run_online(base_url, f"{judge_name}@{base_url}"))
    except LlmError as exc:  # the embedded judge could not start: every answer says so
        for i in todo:
            rows[i].update(judge=judge_name, judge_error=f"judge unavailable: {exc.kind}: {exc}"[:400])
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
