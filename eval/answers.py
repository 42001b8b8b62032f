"""Answer quality: generate answers from an eval run's retrieved hits and score them without an LLM.

Per answer (one row of ``answers.parquet`` in the run directory; failures are rows too, with
``error`` set and scores null -- never dropped): ``query_id, llm, query, reference_answer, answer,
error, latency_s, time_to_first_token_s, tokens_in, tokens_out, n_contexts`` and the scores:

* ``rouge_l`` (rouge-score, F-measure), ``bleu`` and ``chrf`` (sacrebleu sentence scores / 100),
  ``string_similarity`` (rapidfuzz normalised Levenshtein) -- the same libraries ragas' non-LLM
  metrics wrap (ragas itself is not installed: ragas 0.4.3 pins openai<2 and rich<14, which would
  downgrade packages the LLM backends and CLI use);
* ``semantic_similarity``: cosine of answer and reference embedded with our embedder (MiniLM);
* ``context_precision`` / ``context_recall``: non-LLM, against the labelled evidence -- average
  precision of the relevant flags of the text contexts given to the model, and relevant contexts
  given / relevant items labelled (``qrels.json``).

Scores need ``reference_answer``; entries without one get null text scores.
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

from eval.evalset import EvalEntry
from mmrag.config import MmragConfig

SCORE_COLUMNS = ("rouge_l", "bleu", "chrf", "string_similarity", "semantic_similarity", "context_precision", "context_recall")


def text_scores(answer: str, reference: str | None) -> dict[str, float | None]:
    """ROUGE-L F, sentence BLEU and chrF (0..1) and normalised Levenshtein similarity of ``answer`` against ``reference``."""
    if not reference or answer is None:
        return {"rouge_l": None, "bleu": None, "chrf": None, "string_similarity": None}
    import sacrebleu
    from rapidfuzz.distance import Levenshtein
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return {
        "rouge_l": float(scorer.score(reference, answer)["rougeL"].fmeasure),
        "bleu": float(sacrebleu.sentence_bleu(answer, [reference]).score) / 100.0,
        "chrf": float(sacrebleu.sentence_chrf(answer, [reference]).score) / 100.0,
        "string_similarity": float(Levenshtein.normalized_similarity(answer, reference)),
    }


def context_scores(relevant_flags: Sequence[bool], n_labelled: int | None) -> dict[str, float | None]:
    """Non-LLM context precision (average precision of the flags, in rank order) and recall (relevant given / labelled)."""
    flags = [bool(f) for f in relevant_flags]
    hits = 0
    precisions = []
    for i, flag in enumerate(flags, start=1):
        if flag:
            hits += 1
            precisions.append(hits / i)
    precision = float(np.mean(precisions)) if precisions else (0.0 if flags else None)
    recall = (hits / n_labelled) if n_labelled else None
    return {"context_precision": precision, "context_recall": recall}


def semantic_similarities(embed: Callable[[list[str]], Any], answers: Sequence[str | None], references: Sequence[str | None]) -> list[float | None]:
    """Cosine similarity of each (answer, reference) pair embedded with ``embed`` (None where either is missing)."""
    pairs = [i for i, (a, r) in enumerate(zip(answers, references)) if a and r]
    out: list[float | None] = [None] * len(answers)
    if not pairs:
        return out
    a = np.asarray(embed([answers[i] for i in pairs]), dtype=np.float32)
    r = np.asarray(embed([references[i] for i in pairs]), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    r /= np.linalg.norm(r, axis=1, keepdims=True) + 1e-12
    for j, i in enumerate(pairs):
        out[i] = float(a[j] @ r[j])
    return out


def generate_answer(entry: EvalEntry, hits: Sequence[Mapping[str, Any]], backend: Any, cfg: MmragConfig, *,
                    llm: str, max_contexts: int = 5) -> dict[str, Any]:
    """Answer one entry from its hits with ``backend``; returns the answer row (``error`` set on failure, never raised)."""
    from pipelines.generate import answer_events
    from pipelines.llm.base import collect

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


def score_answers(rows: list[dict[str, Any]], hits: Sequence[Mapping[str, Any]], qrels: Mapping[str, Mapping[str, Sequence[str]]], *,
                  embed: Callable[[list[str]], Any] | None = None) -> list[dict[str, Any]]:
    """Add the score columns to answer rows (in place; failed answers keep null scores); returns ``rows``."""
    by_id: dict[str, dict[str, Mapping[str, Any]]] = {}
    for h in hits:
        if h["target"] == "text":
            by_id.setdefault(h["query_id"], {})[h["id"]] = h
    for row in rows:
        ok = row.get("error") is None and row.get("answer") is not None
        row.update(text_scores(row["answer"], row.get("reference_answer")) if ok else
                   {"rouge_l": None, "bleu": None, "chrf": None, "string_similarity": None})
        ids = json.loads(row.get("contexts") or "[]")
        flags = [bool(by_id.get(row["query_id"], {}).get(i, {}).get("relevant")) for i in ids]
        n_labelled = len(qrels.get("text", {}).get(row["query_id"], []))
        row.update(context_scores(flags, n_labelled))
    sims = semantic_similarities(embed, [r["answer"] if r.get("error") is None else None for r in rows],
                                 [r.get("reference_answer") for r in rows]) if embed else [None] * len(rows)
    for row, sim in zip(rows, sims):
        row["semantic_similarity"] = sim
    return rows


def answer_run_dir(run_dir: str | Path, entries: Sequence[EvalEntry], cfg: MmragConfig, llms: Sequence[str], *,
                   limit: int | None = None, embed: Callable[[list[str]], Any] | None = None,
                   log: Callable[[str], None] | None = None, budget_s: float | None = None) -> list[dict[str, Any]]:
    """Answer the run's queries (hits from its ``hits.parquet``) with each of ``llms``; writes ``answers.parquet``; returns the rows.

    Image-query entries and entries without hits are answered too (from whatever was retrieved).
    A backend that cannot be built records one failed row per query; once ``budget_s`` seconds have
    passed, the remaining queries are recorded as failed rows (``error``: budget exhausted), not dropped.
    """
    from pipelines.llm import make_backend

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
            rows += [{"query_id": e.id, "llm": llm, "query": e.query, "reference_answer": e.reference_answer, "answer": None,
                      "error": f"{type(exc).__name__}: {exc}"[:500], "contexts": "[]"} for e in chosen]
            continue
        started = time.perf_counter()
        for n, entry in enumerate(chosen, start=1):
            if budget_s is not None and time.perf_counter() - started > budget_s:
                rows.append({"query_id": entry.id, "llm": llm, "query": entry.query, "reference_answer": entry.reference_answer,
                             "answer": None, "error": f"not run: answer time budget of {budget_s:.0f} s exhausted",
                             "contexts": "[]"})
                continue
            row = generate_answer(entry, by_query.get(entry.id, []), backend, cfg, llm=llm)
            log(f"{llm} {n}/{len(chosen)} {entry.id}: {row['latency_s']} s" + (f" FAILED {row['error']}" if row["error"] else ""))
            rows.append(row)
    score_answers(rows, hits, qrels, embed=embed)
    columns = ["query_id", "llm", "query", "reference_answer", "answer", "error", "latency_s", "time_to_first_token_s",
               "tokens_in", "tokens_out", "n_contexts", "contexts", *SCORE_COLUMNS]
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=answers_schema())
    pq.write_table(table, run_dir / "answers.parquet")
    return rows


def answers_schema() -> pa.Schema:
    """Schema of ``answers.parquet``."""
    strings = ("query_id", "llm", "query", "reference_answer", "answer", "error", "contexts")
    ints = ("tokens_in", "tokens_out", "n_contexts")
    floats = ("latency_s", "time_to_first_token_s", *SCORE_COLUMNS)
    return pa.schema([*(pa.field(c, pa.string()) for c in strings), *(pa.field(c, pa.int64()) for c in ints),
                      *(pa.field(c, pa.float64()) for c in floats)])


def answer_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per LLM: ``n``, ``failures`` and the mean of every score, latency and token column (nulls left out)."""
    out: dict[str, dict[str, Any]] = {}
    for llm in sorted({r["llm"] for r in rows}):
        mine = [r for r in rows if r["llm"] == llm]
        stats: dict[str, Any] = {"n": len(mine), "failures": sum(1 for r in mine if r.get("error"))}
        for c in ("latency_s", "tokens_in", "tokens_out", *SCORE_COLUMNS):
            vals = [float(r[c]) for r in mine if r.get(c) is not None]
            stats[c] = round(float(np.mean(vals)), 4) if vals else None
        out[llm] = stats
    return out


def llamacpp_ready(cfg: MmragConfig, model: str) -> str | None:
    """None when the embedded llama.cpp backend can load ``model``; else the reason it cannot."""
    try:
        from pipelines.llm.gguf import resolve_gguf
        from pipelines.llm.llamacpp_backend import _runtime

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
    from pipelines.embed import create_embedder

    embedder = create_embedder(cfg.embed)
    rows = answer_run_dir(run_dir, entries, cfg, [llm], limit=limit, embed=embedder.embed_texts,
                          log=lambda m: print(f"      {m}", flush=True), budget_s=budget_s)
    s = answer_summary(rows)[llm]
    return (f"{s['n']} answers ({s['failures']} failed), mean latency {s['latency_s']} s, rouge_l {s['rouge_l']}, "
            f"semantic_similarity {s['semantic_similarity']} -> {Path(run_dir) / 'answers.parquet'}")
