"""Retrieval as a small library: hits, scoring, filters, rerankers and the searcher, bottom to top.

``hits`` (the :class:`Hit` type and :class:`SearchError`) → ``scoring`` (pure cosine / softmax /
threshold / top-k / fusion) and ``filters`` (the ``where`` clauses) → ``rerank`` (reorder the
best N) → ``searcher`` (the :class:`Searcher` that ties them to LanceDB and an embedder). The
names most callers need are re-exported here.
"""

from mmrag.pipelines.retrieve.filters import Filters, check_user_where, compile_where
from mmrag.pipelines.retrieve.hits import (
    TARGETS,
    Hit,
    SearchError,
    SearchResult,
    Target,
    hit_columns,
    hit_from_row,
    ranked,
    resolve_targets,
)
from mmrag.pipelines.retrieve.rerank import RERANKERS, RerankContext, RerankerUnavailable, create_reranker
from mmrag.pipelines.retrieve.scoring import (
    cosine_similarities,
    max_query_similarities,
    similarity_search,
    softmax_scores,
    top_k_above,
)
from mmrag.pipelines.retrieve.searcher import OpenedTables, SearchOverrides, Searcher, TargetSettings, target_settings

__all__ = [
    "RERANKERS", "TARGETS", "Filters", "Hit", "OpenedTables", "RerankContext", "RerankerUnavailable", "SearchError",
    "SearchOverrides", "SearchResult", "Searcher", "Target", "TargetSettings", "check_user_where", "compile_where",
    "cosine_similarities", "create_reranker", "hit_columns", "hit_from_row", "max_query_similarities", "ranked",
    "resolve_targets", "similarity_search", "softmax_scores", "target_settings", "top_k_above",
]
