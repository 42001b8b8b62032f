"""Pure scoring of retrieval candidates: cosine similarity, the original design's softmax, thresholds, top k.

:func:`similarity_search` is the design's function over arrays (``softmax(similarity / temperature)``
over every candidate, keep scores ≥ threshold, then the top k); the searcher applies the same
functions to the candidates LanceDB returns. Nothing here touches a table or a model.

**Softmax scores depend on the corpus size.** The denominator sums ``exp(similarity / T)`` over
every candidate, so each row added lowers every score, roughly as 1/N: with similarities spread
over a range Δ, the best score is at most ``e^(Δ/T) / (e^(Δ/T) + N − 1)``. At the design's text
settings (T 0.25, threshold 0.01) no row passes from a few thousand rows on. That is why the
design's semantics are the ``seed`` preset and not the default (README: "Search defaults").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
from scipy.special import softmax

from mmrag.pipelines.store import MULTIVECTOR


def cosine_similarities(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``query`` ``(d,)`` to each row of ``vectors`` ``(n, d)``, as float64 ``(n,)``.

    Zero vectors get similarity 0 (norms are clamped at 1e-8, like ``torch.nn.functional.cosine_similarity``).
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    m = np.asarray(vectors, dtype=np.float64).reshape(-1, q.shape[0])
    norms = np.maximum(np.linalg.norm(m, axis=1), 1e-8) * max(float(np.linalg.norm(q)), 1e-8)
    return (m @ q) / norms


def softmax_scores(similarities: np.ndarray, *, temperature: float = 0.5) -> np.ndarray:
    """``softmax(similarities / temperature)`` over all entries (scipy's stable softmax), float64."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.asarray(similarities, dtype=np.float64) / temperature
    return logits if logits.size == 0 else softmax(logits)


def top_k_above(scores: np.ndarray, *, k: int = 5, threshold: float = 0.05) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` that are ≥ ``threshold``, best first.

    As in the design: sort descending, drop scores under the threshold, keep the first ``k``.
    Ties keep their input order (stable sort).
    """
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] >= threshold][:k]


def similarity_search(
    query: np.ndarray,
    vectors: np.ndarray,
    *,
    k: int = 5,
    threshold: float = 0.05,
    temperature: float = 0.5,
    mode: Literal["softmax", "cosine"] = "softmax",
) -> tuple[np.ndarray, np.ndarray]:
    """The original design's ``similarity_search`` over arrays: ``(indices, scores)`` of the hits, best first.

    ``softmax`` mode scores ``softmax(cosine / temperature)`` over all rows of ``vectors``;
    ``cosine`` mode scores the raw cosine similarity (``temperature`` unused). Both keep
    scores ≥ ``threshold`` and then the top ``k``.
    """
    similarities = cosine_similarities(query, vectors)
    scores = softmax_scores(similarities, temperature=temperature) if mode == "softmax" else similarities
    indices = top_k_above(scores, k=k, threshold=threshold)
    return indices, scores[indices]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], *, k: int = 60) -> list[tuple[str, float]]:
    """Fuse rankings of ids: ``score(id) = Σ 1 / (k + rank)`` over the rankings holding it (rank from 1).

    Returns ``(id, score)`` best first; ties keep the order of first appearance. An id repeated
    within one ranking counts at its first position only. Cormack et al. 2009; k=60 as in LanceDB's
    ``RRFReranker``.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(dict.fromkeys(ranking), 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def max_query_similarities(query: np.ndarray, multivectors: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row of a ``list<fixed_size_list<float32, d>>`` column: the largest cosine of ``query`` with the
    row's vectors (BLIP-2's image-text score over its query embeddings), float64 ``(n,)``.

    Rows with no vectors get -1 (LanceDB's multivector search never returns them).
    """
    column = multivectors.combine_chunks() if isinstance(multivectors, pa.ChunkedArray) else multivectors
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    inner = column.flatten()
    similarities = cosine_similarities(query, inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, inner.type.list_size))
    out = np.full(len(lengths), -1.0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    present = lengths > 0
    if present.any():
        out[present] = np.maximum.reduceat(similarities, starts[present])
    return out


def vectors_of(rows: pa.Table, column: str = "vector") -> np.ndarray:
    """The fixed-size-list vector column of ``rows`` as a float32 ``(n, d)`` array."""
    col = rows.column(column).combine_chunks()
    dimension = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, dimension).astype(np.float32, copy=False)


def row_similarities(query: np.ndarray, rows: pa.Table, vector_column: str = "vector") -> np.ndarray:
    """Cosine of ``query`` with each row's ``vector_column``: the best query embedding for ``vector_multi``."""
    if vector_column == MULTIVECTOR:
        return max_query_similarities(query, rows.column(vector_column))
    return cosine_similarities(query, vectors_of(rows, vector_column))


#: At most this many index candidates are re-ranked with exact vectors per query (a large softmax pool
#: times refine_factor would otherwise read hundreds of thousands of full vectors).
REFINE_BUDGET = 100_000

#: ``search.refine_factor = "auto"``: the factor each LanceDB index type needs for recall@10 ≥ 0.95 at
#: 1M rows (bench/RESULTS.md, query_latency)
AUTO_REFINE_FACTORS = {"IvfPq": 80}
AUTO_REFINE_DEFAULT = 5


def refine_factor_for(limit: int, refine_factor: int) -> int:
    """``refine_factor``, lowered so that ``limit × factor`` stays within :data:`REFINE_BUDGET` (at least 1)."""
    return max(1, min(refine_factor, REFINE_BUDGET // max(limit, 1)))


def auto_refine_factor(index_type: str | None) -> int:
    """The refine factor ``auto`` stands for on an index of LanceDB type ``index_type`` (``IvfPq``, ``IvfSq``…)."""
    return AUTO_REFINE_FACTORS.get(index_type or "", AUTO_REFINE_DEFAULT)
