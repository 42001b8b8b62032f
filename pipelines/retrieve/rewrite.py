"""Query rewriting before the vector search: a hypothetical answer (HyDE) written by an LLM.

A reader's question and the passage that answers it often share few words and sit apart in the
embedding space; a short passage an LLM writes as if answering lands nearer the real one (Gao et
al. 2022, "Precise Zero-Shot Dense Retrieval without Relevance Labels"). With
``search.query_rewrite: hyde`` the question and that passage are embedded together; the full-text
side of a hybrid search keeps the question's own words. Each rewrite costs one LLM call per query
(``SearchResult.timings_ms["rewrite"]``); rewrites are cached per question for the searcher's life.
"""

from __future__ import annotations

from collections.abc import Callable

from mmrag.pipelines.llm.base import ChatBackend, ChatMessage, GenerationOptions, LlmError, collect
from mmrag.pipelines.retrieve.hits import SearchError

HYDE_SYSTEM_PROMPT = (
    "You write the passage of a technical blog post that answers a reader's question. Write two or three plain "
    "sentences of content, as the article would say it. No preamble, no lists, no question."
)


def hyde_messages(question: str) -> list[ChatMessage]:
    """The chat messages asking for a hypothetical answer passage to ``question``."""
    return [ChatMessage("system", HYDE_SYSTEM_PROMPT), ChatMessage("user", f"Question: {question}\n\nPassage:")]


def hyde_query(question: str, passage: str) -> str:
    """The text embedded for ``question``: the question, then the hypothetical passage."""
    passage = " ".join(passage.split())
    return f"{question}\n{passage}" if passage else question


class QueryRewriter:
    """Rewrites questions through a chat backend, once per distinct question (greedy, so reruns agree)."""

    def __init__(self, backend: ChatBackend, *, max_tokens: int = 96, seed: int = 0):
        self.backend = backend
        self.options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, seed=seed)
        self._cache: dict[str, str] = {}

    def rewrite(self, question: str) -> str:
        """The text to embed for ``question`` (see :func:`hyde_query`); a backend failure is a :class:`SearchError`."""
        if question not in self._cache:
            try:
                answer = collect(self.backend.generate(hyde_messages(question), (), stream=False, options=self.options))
            except LlmError as exc:
                raise SearchError(f"query rewrite (search.query_rewrite hyde): {exc}") from None
            self._cache[question] = hyde_query(question, answer.text)
        return self._cache[question]


def rewriter_for(kind: str, make_backend: Callable[[], ChatBackend], *, max_tokens: int = 96) -> QueryRewriter | None:
    """The rewriter ``search.query_rewrite`` names (``none``: None), its backend built by ``make_backend``."""
    if kind == "none":
        return None
    if kind != "hyde":
        raise SearchError(f"unknown query rewrite {kind!r}: use none or hyde")
    return QueryRewriter(make_backend(), max_tokens=max_tokens)
