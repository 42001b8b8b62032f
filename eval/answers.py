"""Answer quality: generate answers from an eval run's retrieved hits and score them with ragas.

Per answer (one row of ``answers.parquet`` in the run directory; failures are rows too, with
``error`` set and scores null -- never dropped): ``query_id, llm, query, reference_answer, answer,
error, latency_s, time_to_first_token_s, tokens_in, tokens_out, n_contexts, contexts`` and the scores:

* without an LLM (:mod:`mmrag.eval.answer_metrics`): ``rouge_l``, ``bleu``, ``chrf``,
  ``string_similarity``, ``semantic_similarity`` against ``reference_answer`` (null without one),
  ``context_precision`` / ``context_recall`` of the contexts given against the labelled evidence;
  ``score_error`` names a metric that raised;
* with a judge LLM (:mod:`mmrag.eval.judge`, ``--judge``): ``faithfulness``, ``answer_relevancy`` and,
  with ``eval.judge_images``, ``multimodal_faithfulness`` / ``multimodal_relevance`` (each the mean over
  ``eval.judge_repeats`` verdicts, with ``<metric>_std`` their spread); plus
  ``judge`` (model and endpoint), ``judge_error`` (each failed metric with its reason),
  ``judge_s``, ``judge_tokens_in``, ``judge_tokens_out``, ``judge_repeats``, ``judge_cached`` (verdicts
  taken from the judge cache, ``judge-cache.jsonl`` beside the run directories unless ``eval.judge_cache``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrag.eval.answer_metrics import CONTEXT_COLUMNS, NON_LLM_COLUMNS, context_scores, reference_scores, semantic_similarities
from mmrag.eval.evalset import EvalEntry
from mmrag.eval.judge import JUDGE_COLUMNS, JUDGE_SPREAD_COLUMNS, JudgeSpec, judge_cache_for, judge_rows
from mmrag.config import MmragConfig
from mmrag.pipelines.generate import answer_events
from mmrag.pipelines.llm.base import collect
from mmrag.pipelines.generate import image_inputs, load_image_blobs
from mmrag.pipelines.llm.openai_backend import image_data_url
from mmrag.pipelines.store import IndexStore
from mmrag.pipelines.llm import make_backend
from mmrag.pipelines.llm.gguf import resolve_gguf
from mmrag.pipelines.llm.llamacpp_backend import _runtime
from mmrag.pipelines.embed import create_embedder
from mmrag.eval.judge import parse_judge_spec

SCORE_COLUMNS = (*NON_LLM_COLUMNS, *JUDGE_COLUMNS)
ANSWER_COLUMNS = ("query_id", "llm", "query", "reference_answer", "answer", "error", "latency_s", "time_to_first_token_s",
                  "tokens_in", "tokens_out", "n_contexts", "contexts", *SCORE_COLUMNS, "score_error",
                  *JUDGE_SPREAD_COLUMNS, "judge", "judge_error", "judge_s", "judge_tokens_in", "judge_tokens_out",
                  "judge_repeats", "judge_cached")


def generate_answer(entry: EvalEntry, hits: Sequence[Mapping[str, Any]], backend: Any, cfg: MmragConfig, *,
                    llm: str, max_contexts: int = 5) -> dict[str, Any]:
    """Answer one entry from its hits with ``backend``; returns the answer row (``error`` set on failure, never raised)."""

    text_hits = [h for h in sorted(hits, key=lambda h: h["rank"]) if h["target"] == "text"][:max_contexts]
    row: dict[str, Any] = {"query_id": entry.id, "llm": llm, "query": entry.query, "reference_answer": entry.reference_answer,
                           "answer": None, "error": None, "latency_s": None, "time_to_first_token_s": None,
                           "tokens_in": None, "tokens_out": None, "n_contexts": len(text_hits),
                           "contexts": json.dumps([h["id"] for h in text_hits])}
    t0 = time.perf_counter()
    try:
        _prompt, events = answer_events(entry.query, text_hits, backend, cfg.llm, stream=True)
        completion = collect(events)
        row.update(answer=completion.text.strip(), tokens_in=completion.usage.prompt_tokens,
                   tokens_out=completion.usage.completion_tokens, time_to_first_token_s=completion.usage.time_to_first_token_s)
    except Exception as exc:  # noqa: BLE001 - a failed answer is a result, recorded with its reason
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    row["latency_s"] = round(time.perf_counter() - t0, 3)
    return row


def score_answers(rows: list[dict[str, Any]], qrels: Mapping[str, Mapping[str, Sequence[str]]], *,
                  embed: Callable[[list[str]], Any] | None = None) -> list[dict[str, Any]]:
    """Add the non-LLM score columns to answer rows (in place; failed answers keep null answer scores); returns ``rows``.

    Context precision/recall describe what the model was given, so an answer that failed after its
    prompt was built gets them too; a row never sent to a model (``n_contexts`` null) does not.
    """
    for row in rows:
        ok = row.get("error") is None and row.get("answer") is not None
        row.update(reference_scores(row["answer"] if ok else None, row.get("reference_answer")))
        given = json.loads(row.get("contexts") or "[]") if row.get("n_contexts") is not None else None
        row.update(context_scores(given, qrels.get("text", {}).get(row["query_id"], [])) if given is not None
                   else dict.fromkeys(CONTEXT_COLUMNS))
    sims = semantic_similarities(embed, [r["answer"] if r.get("error") is None else None for r in rows],
                                 [r.get("reference_answer") for r in rows]) if embed else [None] * len(rows)
    for row, sim in zip(rows, sims):
        row["semantic_similarity"] = sim
    return rows


def judge_contexts(rows: Sequence[Mapping[str, Any]], hits: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per row: the texts of the contexts its model was given, in prompt order."""
    text = {(h["query_id"], h["id"]): h.get("text") or "" for h in hits if h["target"] == "text"}
    return [[text.get((r["query_id"], i), "") for i in json.loads(r.get("contexts") or "[]")] for r in rows]


def judge_images(rows: Sequence[Mapping[str, Any]], hits: Sequence[Mapping[str, Any]], cfg: MmragConfig) -> list[list[str]]:
    """Per row: the query's retrieved images (at most ``llm.max_images``, best first) as ``data:`` URLs, read from ``image_blobs``."""

    image_hits: dict[str, list[Mapping[str, Any]]] = {}
    for h in hits:
        if h["target"] == "image":
            image_hits.setdefault(h["query_id"], []).append(h)
    if not any(image_hits.get(r["query_id"]) for r in rows):
        return [[] for _ in rows]
    blobs = load_image_blobs(IndexStore(cfg.store.db_uri), [h.get("image_sha256") or "" for hs in image_hits.values() for h in hs])
    return [[image_data_url(i) for i in image_inputs(image_hits.get(r["query_id"], []), blobs, None, cfg.llm.max_images)]
            for r in rows]


def failed_row(entry: EvalEntry, llm: str, error: str) -> dict[str, Any]:
    """The row of an answer that was not produced (backend unavailable, budget exhausted)."""
    return {"query_id": entry.id, "llm": llm, "query": entry.query, "reference_answer": entry.reference_answer, "answer": None,
            "error": error[:500], "contexts": "[]"}


def answer_run_dir(run_dir: str | Path, entries: Sequence[EvalEntry], cfg: MmragConfig, llms: Sequence[str], *,
                   limit: int | None = None, embed: Callable[[list[str]], Any] | None = None,
                   log: Callable[[str], None] | None = None, budget_s: float | None = None,
                   judge: JudgeSpec | None = None) -> list[dict[str, Any]]:
    """Answer the run's text queries (hits from its ``hits.parquet``) with each of ``llms``, score them; writes ``answers.parquet``.

    Entries whose query is an image are left out; entries without hits are answered from nothing.
    A backend that cannot be built records one failed row per query; once ``budget_s`` seconds have
    passed, the remaining queries are recorded as failed rows (``error``: budget exhausted), not dropped.
    With ``judge`` (needs ``embed``), the judged metrics are added by :func:`mmrag.eval.judge.judge_rows`.
    """
    log = log or (lambda _m: None)
    run_dir = Path(run_dir)
    hits = pq.read_table(run_dir / "hits.parquet").to_pylist()
    qrels = json.loads((run_dir / "qrels.json").read_text(encoding="utf-8"))
    by_query: dict[str, list[dict[str, Any]]] = {}
    for h in hits:
        by_query.setdefault(h["query_id"], []).append(h)
    chosen = [e for e in entries if not e.query_image][: limit or None]
    rows: list[dict[str, Any]] = []
    for llm in llms:
        try:
            backend = make_backend(cfg.llm, llm)
        except Exception as exc:  # noqa: BLE001
            rows += [failed_row(e, llm, f"{type(exc).__name__}: {exc}") for e in chosen]
            continue
        started = time.perf_counter()
        for n, entry in enumerate(chosen, start=1):
            if budget_s is not None and time.perf_counter() - started > budget_s:
                rows.append(failed_row(entry, llm, f"not run: answer time budget of {budget_s:.0f} s exhausted"))
                continue
            row = generate_answer(entry, by_query.get(entry.id, []), backend, cfg, llm=llm)
            log(f"{llm} {n}/{len(chosen)} {entry.id}: {row['latency_s']} s" + (f" FAILED {row['error']}" if row["error"] else ""))
            rows.append(row)
    score_answers(rows, qrels, embed=embed)
    if judge is not None:
        if embed is None:
            raise ValueError("the judged answer relevancy needs an embedder (embed=)")
        images = judge_images(rows, hits, cfg) if cfg.eval.judge_images else [[] for _ in rows]
        judge_rows(rows, judge_contexts(rows, hits), images, spec=judge, llm_config=cfg.llm, settings=cfg.eval, embed=embed, log=log,
                   cache=judge_cache_for(cfg.eval, run_dir))
    write_answers(rows, run_dir / "answers.parquet")
    return rows


def write_answers(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write answer rows as Parquet with :func:`answers_schema` (missing columns null); returns ``path``."""
    table = pa.Table.from_pylist([{c: r.get(c) for c in ANSWER_COLUMNS} for r in rows], schema=answers_schema())
    pq.write_table(table, path)
    return Path(path)


def answers_schema() -> pa.Schema:
    """Schema of ``answers.parquet``."""
    ints = {"tokens_in", "tokens_out", "n_contexts", "judge_tokens_in", "judge_tokens_out", "judge_repeats", "judge_cached"}
    floats = {"latency_s", "time_to_first_token_s", "judge_s", *SCORE_COLUMNS, *JUDGE_SPREAD_COLUMNS}
    return pa.schema([pa.field(c, pa.int64() if c in ints else pa.float64() if c in floats else pa.string()) for c in ANSWER_COLUMNS])


def answer_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per LLM: ``n``, ``failures``, ``judge_failures`` (answers with a failed judged metric) and the mean of every
    score, latency, judge time and token column (nulls left out)."""
    out: dict[str, dict[str, Any]] = {}
    for llm in sorted({r["llm"] for r in rows}):
        mine = [r for r in rows if r["llm"] == llm]
        stats: dict[str, Any] = {"n": len(mine), "failures": sum(1 for r in mine if r.get("error")),
                                 "judge_failures": sum(1 for r in mine if r.get("judge_error"))}
        for c in ("latency_s", "tokens_in", "tokens_out", *SCORE_COLUMNS, *JUDGE_SPREAD_COLUMNS, "judge_s", "judge_tokens_in",
                  "judge_tokens_out", "judge_cached"):
            vals = [float(r[c]) for r in mine if r.get(c) is not None]
            stats[c] = round(float(np.mean(vals)), 4) if vals else None
        out[llm] = stats
    return out


def llamacpp_ready(cfg: MmragConfig, model: str) -> str | None:
    """None when the embedded llama.cpp backend can load ``model``; else the reason it cannot."""
    try:

        _runtime()
        resolve_gguf(model, cfg.llm.cache_dir)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def answer_step(run_dir: str | Path, entries: Sequence[EvalEntry], cfg: MmragConfig, *, llm: str, limit: int,
                base_dir: str | Path | None = None, max_tokens: int = 64, budget_s: float | None = 180.0) -> str:
    """The main job's answer step: answer ``limit`` queries of ``run_dir`` with ``llm``; returns a one-line outcome."""
    backend_name, _, model = llm.partition(":")
    if backend_name == "llamacpp":
        reason = llamacpp_ready(cfg, model or "default")
        if reason:
            return f"skipped: llamacpp backend not ready ({reason})"
    cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"max_tokens": max_tokens})})

    embedder = create_embedder(cfg.embed)
    judge = parse_judge_spec(cfg.eval.judge, cfg.llm) if cfg.eval.judge else None
    rows = answer_run_dir(run_dir, entries, cfg, [llm], limit=limit, embed=embedder.embed_texts,
                          log=lambda m: print(f"      {m}", flush=True), budget_s=budget_s, judge=judge)
    s = answer_summary(rows)[llm]
    judged = f", faithfulness {s['faithfulness']}, answer_relevancy {s['answer_relevancy']}" if judge else ""
    return (f"{s['n']} answers ({s['failures']} failed), mean latency {s['latency_s']} s, rouge_l {s['rouge_l']}, "
            f"semantic_similarity {s['semantic_similarity']}{judged} -> {Path(run_dir) / 'answers.parquet'}")
