"""Answer metrics without an LLM, computed by ragas 0.4.3 (usage tracking off).

Against ``reference_answer`` (``ragas.metrics.collections``): ``rouge_l`` (RougeScore, ROUGE-L
F-measure), ``bleu`` (BleuScore: sacrebleu corpus BLEU over the ". "-split sentences, / 100),
``chrf`` (CHRFScore, / 100), ``string_similarity`` (NonLLMStringSimilarity, normalised Levenshtein)
and ``semantic_similarity`` (SemanticSimilarity: cosine of the two texts embedded with our embedder,
MiniLM by default, through :class:`EmbedderEmbeddings`).

Against the labelled evidence: ``context_precision`` is ragas' NonLLMContextPrecisionWithReference
(average precision in rank order) and ``context_recall`` its IDBasedContextRecall, both over chunk
ids: the contexts given to the model against the chunks the labels resolve to (``qrels.json``), so
"relevant" means exactly what it means for the retrieval metrics. ragas' text-matching variants
compare whole chunks with the short ``contains`` spans by Levenshtein similarity, which stays below
their 0.5 threshold even for a chunk holding the span verbatim (measured: NonLLMContextRecall 0.0).
In 0.4.3 these context metrics exist only in the older ``ragas.metrics`` API.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

# ragas sends usage events to its developers from metric calls unless this is set (read once, cached).
os.environ["RAGAS_DO_NOT_TRACK"] = "true"

import numpy as np  # noqa: E402
from ragas import SingleTurnSample  # noqa: E402
from ragas.embeddings.base import BaseRagasEmbedding  # noqa: E402
from ragas.metrics.collections import (  # noqa: E402
    BleuScore,
    CHRFScore,
    NonLLMStringSimilarity,
    RougeScore,
    SemanticSimilarity,
)

with warnings.catch_warnings():
    # The public names warn "use ragas.metrics.collections", which has no non-LLM context metrics in 0.4.3.
    warnings.simplefilter("ignore", DeprecationWarning)
    from ragas.metrics import ExactMatch, IDBasedContextRecall, NonLLMContextPrecisionWithReference  # noqa: E402

REFERENCE_COLUMNS = ("rouge_l", "bleu", "chrf", "string_similarity")
CONTEXT_COLUMNS = ("context_precision", "context_recall")
NON_LLM_COLUMNS = (*REFERENCE_COLUMNS, "semantic_similarity", *CONTEXT_COLUMNS)

_REFERENCE_METRICS = {
    "rouge_l": RougeScore(rouge_type="rougeL", mode="fmeasure"),
    "bleu": BleuScore(),
    "chrf": CHRFScore(),
    "string_similarity": NonLLMStringSimilarity(),
}
_CONTEXT_PRECISION = NonLLMContextPrecisionWithReference(distance_measure=ExactMatch())
_CONTEXT_RECALL = IDBasedContextRecall()


class EmbedderEmbeddings(BaseRagasEmbedding):
    """ragas embeddings backed by an ``embed(list[str]) -> array`` callable (our embedder's ``embed_texts``)."""

    def __init__(self, embed: Callable[[list[str]], Any]):
        super().__init__()
        self._embed = embed

    def embed_text(self, text: str, **kwargs: Any) -> list[float]:
        """One text's vector."""
        return self.embed_texts([text])[0]

    async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
        """One text's vector (computed in the calling thread: the embedder is in process)."""
        return self.embed_text(text)

    def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        """Vectors of ``texts`` in one batch."""
        return np.asarray(self._embed(list(texts)), dtype=np.float32).tolist()

    async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        """Vectors of ``texts`` in one batch."""
        return self.embed_texts(texts)


def reference_scores(answer: str | None, reference: str | None) -> dict[str, Any]:
    """ROUGE-L F, BLEU, chrF and string similarity (all 0..1) of ``answer`` against ``reference``; nulls when either is missing.

    A metric that raises is null, named with its error in ``score_error`` (None when all ran).
    """
    out: dict[str, Any] = {**dict.fromkeys(REFERENCE_COLUMNS), "score_error": None}
    if not answer or not reference:
        return out
    errors = []
    for name, metric in _REFERENCE_METRICS.items():
        try:
            out[name] = float(metric.score(reference=reference, response=answer).value)
        except Exception as exc:  # noqa: BLE001 - one metric's failure must not cost the answer or the other scores
            errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    out["score_error"] = " | ".join(errors) or None
    return out


def context_scores(given_ids: Sequence[str], relevant_ids: Sequence[str]) -> dict[str, float | None]:
    """Context precision (average precision of the given chunk ids, in rank order) and recall (share of the relevant ids given).

    Nulls when no text evidence is labelled for the query (nothing to measure against); precision is
    null too when no context was given.
    """
    given = [str(i) for i in given_ids]
    relevant = [str(i) for i in relevant_ids]
    if not relevant:
        return dict.fromkeys(CONTEXT_COLUMNS)
    recall = _CONTEXT_RECALL.single_turn_score(SingleTurnSample(retrieved_context_ids=given, reference_context_ids=relevant))
    if not given:
        return {"context_precision": None, "context_recall": float(recall)}
    precision = _CONTEXT_PRECISION.single_turn_score(SingleTurnSample(retrieved_contexts=given, reference_contexts=relevant))
    # ragas adds 1e-10 to the denominator of its average precision; rounding removes that artefact.
    return {"context_precision": round(float(precision), 9), "context_recall": float(recall)}


def semantic_similarities(embed: Callable[[list[str]], Any], answers: Sequence[str | None],
                          references: Sequence[str | None]) -> list[float | None]:
    """ragas SemanticSimilarity of each (answer, reference) pair embedded with ``embed`` (None where either is missing)."""
    metric = SemanticSimilarity(embeddings=EmbedderEmbeddings(embed))
    pairs = [{"reference": r, "response": a} for a, r in zip(answers, references) if a and r]
    results = iter(asyncio.run(metric.abatch_score(pairs)) if pairs else [])
    return [float(next(results).value) if a and r else None for a, r in zip(answers, references)]
