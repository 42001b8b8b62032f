"""Rerankers: reorder the best N retrieved hits and keep k (``search.reranker``, ``search.rerank_candidates``).

===============  ==================================================================  ==========================================
name             score                                                               needs
===============  ==================================================================  ==========================================
``none``         the retrieval score                                                  nothing
``hybrid``       reciprocal rank fusion (k=60) of the retrieved ranking and a LanceDB  a text query; the native full-text index on
                 full-text search (BM25) over the same filtered table                 ``search_text`` (chunks) / ``surrogate_text``
                                                                                      (images) that indexing and ``mmrag maintain``
                                                                                      build (never built at query time)
``llm``          a chat model's probability of answering "yes" to "is this passage    a text query; an LLM backend that returns
                 relevant?" (:class:`LlmRelevanceScorer`), through the LLM backends    token log-probabilities: the embedded
                 (``search.rerank_llm`` = ``BACKEND:MODEL``, else the ``llm``          llama.cpp model offline, or ``openai``/
                 section's; ``search.llm_base_url`` overrides with an endpoint)       ``ollama`` servers that support logprobs
``cross-encoder`` a sentence-transformers ``CrossEncoder`` over (query, passage)       a text query; ``search.cross_encoder_model``
                                                                                      (a local directory or a cached hub id)
``model-score``  the embedder's own image-text score: BLIP-2's max over the 32 query  target images, a text query, an embedder
                 vectors (``itm_score``), CLIP's ``logit_scale × cosine``             with ``score``/``itm_score`` (clip, blip2)
                 (``score``), from the stored image bytes                              and the images' bytes in ``image_blobs``
===============  ==================================================================  ==========================================

Each reranker's :meth:`check` fails with :class:`RerankerUnavailable` (a one-line
:class:`~mmrag.pipelines.retrieve.hits.SearchError`) before any work when something it needs is missing.
Hybrid fusion may bring in rows that only the full-text search found (their
``retrieval_score`` is None). Text-scoring rerankers read an image hit's caption surrogate.
``model-score`` leaves out images without stored bytes (nothing to score).

:class:`RelevanceScorer` is the small interface of the text rerankers (``score(query, passages)``
→ one float per passage, higher is more relevant); any object with that method can be wrapped
in :class:`ScorerReranker`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.special import softmax

from mmrag.config import ImageConfig, LlmConfig, SearchConfig
from mmrag.pipelines.llm.base import ChatMessage, LlmError, LogprobsBackend
from mmrag.pipelines.embed import embedders_with
from mmrag.pipelines.llm import make_backend
from mmrag.pipelines.llm.openai_backend import OpenAIBackend
from mmrag.pipelines.retrieve.hits import Hit, SearchError, hit_columns, hit_from_row
from mmrag.pipelines.retrieve.scoring import reciprocal_rank_fusion, row_similarities
from mmrag.pipelines.store import IMAGE_BLOBS, fts_column, fts_index

RERANKERS = ("none", "hybrid", "llm", "cross-encoder", "model-score")


class RerankerUnavailable(SearchError):
    """A reranker lacks something it needs (query kind, target, model, endpoint, index)."""


class RerankError(SearchError):
    """A reranker failed while scoring (endpoint error, malformed response)."""


@dataclass(frozen=True)
class RerankContext:
    """What a reranker may use besides the candidates: the query, the searched table and its filter."""

    query: str | None
    query_vector: np.ndarray
    target: str
    table: Any
    where: str | None = None
    embedder: Any | None = None
    store: Any | None = None
    image_config: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    vector_column: str = "vector"  # what the search scored: vector_multi for image_scoring max_query


# --------------------------------------------------------------------------- pure functions


def yes_probability(top_logprobs: Sequence[dict[str, Any]]) -> float | None:
    """P("yes") / (P("yes") + P("no")) from one position's ``top_logprobs`` (OpenAI wire format).

    Tokens count as yes/no after stripping spaces and punctuation, case-insensitively (``" Yes"``,
    ``"yes."``). Returns None when neither appears.
    """
    yes = no = 0.0
    for entry in top_logprobs:
        token = str(entry.get("token", "")).strip().strip(".,!:;\"'").lower()
        if token in ("yes", "no"):
            probability = math.exp(float(entry.get("logprob", -math.inf)))
            if token == "yes":
                yes += probability
            else:
                no += probability
    if yes + no == 0.0:
        return None
    return yes / (yes + no)


def rerank_by_scores(candidates: Sequence[Hit], scores: Sequence[float], *, k: int) -> list[Hit]:
    """``candidates`` sorted by ``scores`` (descending, stable), ``score`` replaced, the first ``k`` kept."""
    if len(scores) != len(candidates):
        raise RerankError(f"scorer returned {len(scores)} scores for {len(candidates)} passages")
    order = sorted(range(len(candidates)), key=lambda i: -float(scores[i]))
    return [dataclasses.replace(candidates[i], score=float(scores[i])) for i in order[:k]]


# --------------------------------------------------------------------------- relevance scorers


@runtime_checkable
class RelevanceScorer(Protocol):
    """Scores passages for a query; higher is more relevant."""

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage."""
        ...


RELEVANCE_SYSTEM_PROMPT = (
    "You judge whether a passage is relevant to a search query. Answer with one word: yes or no."
)


def relevance_messages(query: str, passage: str) -> list[ChatMessage]:
    """The chat messages asking whether ``passage`` is relevant to ``query``."""
    return [
        ChatMessage("system", RELEVANCE_SYSTEM_PROMPT),
        ChatMessage(
            "user", f"Query: {query}\n\nPassage: {passage}\n\nIs the passage relevant to the query? Answer yes or no."
        ),
    ]


LOGPROBS_BACKENDS = (
    "llamacpp (the embedded offline default), openai:MODEL on a server that returns logprobs (llama.cpp server, "
    "vLLM, OpenAI), or ollama:MODEL on Ollama 0.12.11 or newer"
)


class LlmRelevanceScorer:
    """Relevance = probability of "yes" from an LLM backend's log-probabilities of a one-token answer.

    One greedy one-token call per passage through :meth:`~mmrag.pipelines.llm.base.LogprobsBackend.first_token_logprobs`
    (``concurrency`` in flight; the embedded llama.cpp model runs them one at a time). The score is
    P("yes") / (P("yes") + P("no")) over the top tokens (:func:`yes_probability`); when neither is
    among them, the generated token decides (1.0 for yes, else 0.0). A backend or server that cannot
    return log-probabilities is :class:`RerankerUnavailable`, naming backends that can.

    Cost: one prompt evaluation per candidate. The embedded 0.5B model took ~0.45 s per passage on
    one thread of the shared 2-core machine (an upper bound), so keep ``search.rerank_candidates``
    small with it.
    """

    def __init__(self, backend: Any, *, concurrency: int = 1, top_logprobs: int = 10):
        if not isinstance(backend, LogprobsBackend):
            raise RerankerUnavailable(
                f"reranker 'llm': the {getattr(backend, 'name', type(backend).__name__)} backend cannot return token "
                f"log-probabilities; use {LOGPROBS_BACKENDS} (--llm BACKEND:MODEL)"
            )
        self.backend = backend
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """P(yes) for each passage, in order."""
        if not passages:
            return []
        if self.concurrency <= 1 or len(passages) == 1:
            return [self.score_one(query, p) for p in passages]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(passages))) as pool:
            return list(pool.map(lambda p: self.score_one(query, p), passages))

    def score_one(self, query: str, passage: str) -> float:
        """P(yes) for one passage."""
        try:
            first = self.backend.first_token_logprobs(relevance_messages(query, passage), top_logprobs=self.top_logprobs)
        except LlmError as exc:
            if exc.kind == "no_logprobs":
                raise RerankerUnavailable(f"reranker 'llm': {exc}; use {LOGPROBS_BACKENDS}") from None
            raise RerankError(f"reranker 'llm': {exc}") from None
        probability = yes_probability(first.top_logprobs)
        if probability is None:
            return 1.0 if first.token.strip().lower().startswith("yes") else 0.0
        return probability


def llm_reranker_backend(search: SearchConfig, llm: LlmConfig) -> Any:
    """The backend the ``llm`` reranker asks: ``search.llm_base_url`` (openai backend) if set, else ``search.rerank_llm``
    (``BACKEND:MODEL``), else the ``llm`` section's backend and model. Remote calls wait ``search.llm_timeout_s``."""
    if search.llm_base_url:
        return OpenAIBackend(search.llm_model, search.llm_base_url, api_key_env=search.llm_api_key_env or llm.openai_api_key_env,
                             timeout_s=search.llm_timeout_s, max_retries=llm.max_retries)
    try:
        return make_backend(llm.model_copy(update={"timeout_s": search.llm_timeout_s}), search.rerank_llm)
    except LlmError as exc:
        raise RerankerUnavailable(f"reranker 'llm': {exc}") from None


class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder`` (local directory, or a hub id already in the local cache)."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        self.model_name = model
        self.batch_size = batch_size
        try:
            self._model = CrossEncoder(model, device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RerankerUnavailable(
                f"cross-encoder reranker: cannot load {model!r} (a local directory, or a Hugging Face id already in "
                f"the local cache; nothing is downloaded): {first}"
            ) from None

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """The model's relevance for each (query, passage) pair (sigmoid for one-label models)."""
        if not passages:
            return []
        scores = np.asarray(
            self._model.predict([(query, p) for p in passages], batch_size=self.batch_size, show_progress_bar=False)
        )
        if scores.ndim == 2:  # two-class heads: probability of the last ("relevant") class
            scores = softmax(scores, axis=1)[:, -1]
        return [float(s) for s in scores]


# --------------------------------------------------------------------------- rerankers


class Reranker:
    """Base: reorder candidates; :meth:`check` says up front whether this query can be reranked."""

    name = "none"
    needs = "nothing"
    uses_embedder = False

    def check(self, *, target: str, query_text: str | None, image_query: bool) -> None:
        """Raise :class:`RerankerUnavailable` if this reranker cannot rerank this query/target."""

    def rerank(self, candidates: Sequence[Hit], context: RerankContext, *, k: int) -> list[Hit]:
        """The best ``k`` of ``candidates``, reordered (this base keeps the retrieval order)."""
        return list(candidates[:k])

    def _require_text_query(self, query_text: str | None, image_query: bool) -> None:
        if image_query or not (query_text and query_text.strip()):
            raise RerankerUnavailable(f"reranker {self.name!r} needs a text query ({self.needs})")


class NoReranker(Reranker):
    """Keeps the retrieval order."""


class ScorerReranker(Reranker):
    """Reorders by a :class:`RelevanceScorer` over (query, passage) pairs."""

    def __init__(self, name: str, scorer: RelevanceScorer, needs: str):
        self.name = name
        self.scorer = scorer
        self.needs = needs

    def check(self, *, target: str, query_text: str | None, image_query: bool) -> None:
        """Needs a text query."""
        self._require_text_query(query_text, image_query)

    def rerank(self, candidates: Sequence[Hit], context: RerankContext, *, k: int) -> list[Hit]:
        """Candidates sorted by the scorer's relevance."""
        if not candidates:
            return []
        scores = self.scorer.score(context.query or "", [h.passage for h in candidates])
        return rerank_by_scores(candidates, scores, k=k)


def require_fts_index(table: Any, column: str) -> str:
    """The name of ``table``'s full-text index on ``column``; :class:`RerankerUnavailable` saying how to build it
    when there is none. Never creates or refreshes one: a query must not modify a (possibly pinned) table."""
    index = fts_index(table, column)
    if index is not None:
        return index.name
    raise RerankerUnavailable(
        f"reranker 'hybrid': no full-text index on column {column!r}; `mmrag maintain` builds it (indexing does too)"
    )


class HybridReranker(Reranker):
    """Reciprocal rank fusion of the vector ranking with a LanceDB full-text (BM25) ranking of the same table."""

    name = "hybrid"
    needs = "full-text search over the query words"

    def __init__(self, *, rrf_k: int = 60):
        self.rrf_k = rrf_k

    def check(self, *, target: str, query_text: str | None, image_query: bool) -> None:
        """Needs a text query."""
        self._require_text_query(query_text, image_query)

    def rerank(self, candidates: Sequence[Hit], context: RerankContext, *, k: int) -> list[Hit]:
        """Fuse the candidates' order with the top ``len(candidates)`` (at least ``k``) full-text hits."""
        table = context.table
        column = fts_column(context.target, table.schema.names)
        require_fts_index(table, column)
        columns = hit_columns(context.target, table.schema.names)
        limit = max(len(candidates), k)
        query = table.search(context.query, query_type="fts", fts_columns=column)
        if context.where:
            query = query.where(context.where)
        try:
            rows = query.select([*columns, context.vector_column, "_score"]).limit(limit).to_arrow()
        except Exception as exc:  # noqa: BLE001 - lance raises several types
            raise RerankError(f"reranker 'hybrid': full-text search failed: {(str(exc).splitlines() or [''])[0]}") from None
        fts_ids = rows.column("id").to_pylist()
        fused = reciprocal_rank_fusion([[h.id for h in candidates], fts_ids], k=self.rrf_k)
        by_id = {h.id: h for h in candidates}
        if rows.num_rows:
            # rows only full-text search found are scored like the vector search's rows
            similarities = row_similarities(context.query_vector, rows, context.vector_column)
            for row, similarity in zip(rows.select(columns).to_pylist(), similarities):
                if row["id"] not in by_id:
                    by_id[row["id"]] = hit_from_row(row, target=context.target, similarity=similarity,
                                                    retrieval_score=None, score=0.0)
        return [dataclasses.replace(by_id[i], score=score) for i, score in fused[:k]]


class ModelScoreReranker(Reranker):
    """Images reordered by the embedder's own image-text score computed from the stored image bytes."""

    name = "model-score"
    needs = "an image-text model (clip, blip2) and the images' bytes"
    uses_embedder = True

    def check(self, *, target: str, query_text: str | None, image_query: bool) -> None:
        """Needs the images target and a text query."""
        if target != "images":
            raise RerankerUnavailable("reranker 'model-score' reranks images only; use --target images")
        self._require_text_query(query_text, image_query)

    def rerank(self, candidates: Sequence[Hit], context: RerankContext, *, k: int) -> list[Hit]:
        """Image hits with stored bytes, sorted by BLIP-2 ``itm_score`` or CLIP ``score``; others are left out."""
        embedder = context.embedder
        multi = embedder is not None and hasattr(embedder, "itm_score") and hasattr(embedder, "embed_image_bytes_multi")
        single = embedder is not None and hasattr(embedder, "score") and hasattr(embedder, "embed_image_bytes")
        if not (multi or single):
            name = getattr(embedder, "name", "?")
            raise RerankerUnavailable(
                f"reranker 'model-score' needs an embedder with an image-text score; {name!r} has none "
                f"(use --embedder {' or '.join(embedders_with('image')) or 'clip'})"
            )
        if context.store is None:
            raise RerankerUnavailable("reranker 'model-score' needs the database's image_blobs table")
        shas = [h.image_sha256 for h in candidates if h.image_sha256]
        blobs_table = context.store.read_where(IMAGE_BLOBS, ["sha256", "data"], "sha256", shas)
        blobs = {} if "data" not in blobs_table.column_names else dict(
            zip(blobs_table.column("sha256").to_pylist(), blobs_table.column("data").to_pylist())
        )
        scorable = [h for h in candidates if h.image_sha256 in blobs]
        if not scorable:
            return []
        data = [blobs[h.image_sha256] for h in scorable]
        try:
            if multi:
                scores = embedder.itm_score(context.query_vector, embedder.embed_image_bytes_multi(data, context.image_config))
            else:
                scores = embedder.score(context.query_vector, embedder.embed_image_bytes(data, context.image_config))
        except ValueError as exc:
            raise RerankError(f"reranker 'model-score': {exc}") from None
        return rerank_by_scores(scorable, np.asarray(scores).reshape(-1).tolist(), k=k)


def reranker_needs() -> dict[str, str]:
    """What each reranker needs, by name (for help texts)."""
    return {
        "none": NoReranker.needs,
        "hybrid": HybridReranker.needs,
        "llm": "an LLM backend with token log-probabilities (search.rerank_llm; default the embedded llama.cpp model)",
        "cross-encoder": "search.cross_encoder_model: a local CrossEncoder directory or cached hub id",
        "model-score": ModelScoreReranker.needs,
    }


def create_reranker(name: str, cfg: SearchConfig, *, llm: LlmConfig | None = None,
                    scorer: RelevanceScorer | None = None) -> Reranker:
    """The reranker ``name`` configured from ``cfg`` (and ``llm``, the LLM backends' settings, for ``llm``).

    ``scorer`` replaces the llm/cross-encoder scorer (any :class:`RelevanceScorer`).

    Raises :class:`RerankerUnavailable` naming the missing setting.
    """
    if name == "none":
        return NoReranker()
    if name == "hybrid":
        return HybridReranker(rrf_k=cfg.rrf_k)
    if name == "llm":
        if scorer is None:
            backend = llm_reranker_backend(cfg, llm or LlmConfig())
            concurrency = 1 if backend.name == "llamacpp" else cfg.llm_concurrency
            scorer = LlmRelevanceScorer(backend, concurrency=concurrency)
        return ScorerReranker("llm", scorer, "an LLM backend with token log-probabilities")
    if name == "cross-encoder":
        if scorer is None:
            if not cfg.cross_encoder_model:
                raise RerankerUnavailable(
                    "reranker 'cross-encoder' needs search.cross_encoder_model: a local CrossEncoder directory or a "
                    "Hugging Face id in the local cache (--cross-encoder PATH)"
                )
            scorer = CrossEncoderScorer(cfg.cross_encoder_model)
        return ScorerReranker("cross-encoder", scorer, "a CrossEncoder model")
    if name == "model-score":
        return ModelScoreReranker()
    raise RerankerUnavailable(f"unknown reranker {name!r}; rerankers: {', '.join(RERANKERS)}")
