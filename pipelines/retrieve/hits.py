"""What a search returns: :class:`Hit`, :class:`SearchResult`, and how a table row becomes a hit.

The bottom of the retrieval library: the rerankers and the searcher both build and reorder hits,
so the type lives here, below both, with the one error every retrieval failure raises
(:class:`SearchError`, a one-line message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Target = Literal["text", "images"]
TARGETS: tuple[Target, ...] = ("text", "images")
HIT_TARGET = {"text": "text", "images": "image"}

TEXT_COLUMNS = ["id", "doc_url", "article_title", "section", "text"]
IMAGE_COLUMNS = ["id", "doc_url", "article_title", "section", "caption", "surrogate_text", "src_url", "image_sha256", "status"]
#: columns added after the first schema: read when the table has them (older databases may not)
OPTIONAL_COLUMNS = {"text": ("published",), "images": ("ocr_text", "generated_caption", "published")}


class SearchError(ValueError):
    """A search cannot run as asked (missing table, wrong modality, bad filter); the message is one line."""


def hit_columns(target: str, table_columns: Sequence[str]) -> list[str]:
    """The columns :func:`hit_from_row` reads from a ``target`` table that has ``table_columns``."""
    base = TEXT_COLUMNS if target == "text" else IMAGE_COLUMNS
    return base + [c for c in OPTIONAL_COLUMNS[target] if c in table_columns]


def resolve_targets(target: str) -> tuple[Target, ...]:
    """``text`` / ``images`` / ``both`` as the tuple of tables to search."""
    if target == "both":
        return TARGETS
    if target in TARGETS:
        return (target,)  # type: ignore[return-value]
    if target == "image":
        return ("images",)
    raise SearchError(f"unknown target {target!r}: use text, images or both")


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``target`` is ``text`` or ``image``; ``rank`` starts at 1 within its target. ``score`` is what
    ranked it last (the mode's score, or the reranker's); ``retrieval_score`` the mode's score
    (None for rows only a full-text search found); ``similarity`` the raw cosine.
    ``text`` is the chunk text, or the image's authored caption; ``generated_caption`` is a
    vision LLM's caption of an image that had none (caption enrichment). ``published`` is the
    article's publication date (ISO ``YYYY-MM-DD``) when known. Image fields are None for text hits.
    """

    target: str
    id: str
    score: float
    rank: int
    similarity: float
    retrieval_score: float | None
    doc_url: str
    article_title: str | None
    section: str | None
    text: str | None
    src_url: str | None = None
    image_sha256: str | None = None
    image_status: str | None = None
    surrogate_text: str | None = field(default=None, repr=False)
    ocr_text: str | None = field(default=None, repr=False)
    generated_caption: str | None = None
    published: str | None = None

    @property
    def passage(self) -> str:
        """The text a text-only reranker reads: chunk text, or the image's caption surrogate."""
        if self.target == "image":
            return self.surrogate_text or self.text or ""
        return self.text or ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (image fields only for image hits)."""
        data = dataclasses.asdict(self)
        data.pop("surrogate_text")
        if self.target != "image":
            for key in ("src_url", "image_sha256", "image_status", "ocr_text", "generated_caption"):
                data.pop(key)
        return data


def hit_from_row(row: dict[str, Any], *, target: Target, similarity: float, retrieval_score: float | None,
                 score: float, rank: int = 0) -> Hit:
    """A :class:`Hit` from a table row (columns :data:`TEXT_COLUMNS` / :data:`IMAGE_COLUMNS`)."""
    image = target == "images"
    return Hit(
        target=HIT_TARGET[target],
        id=row["id"],
        score=float(score),
        rank=rank,
        similarity=float(similarity),
        retrieval_score=None if retrieval_score is None else float(retrieval_score),
        doc_url=row["doc_url"],
        article_title=row.get("article_title"),
        section=row.get("section"),
        text=row.get("caption") if image else row.get("text"),
        src_url=row.get("src_url") if image else None,
        image_sha256=row.get("image_sha256") if image else None,
        image_status=row.get("status") if image else None,
        surrogate_text=row.get("surrogate_text") if image else None,
        ocr_text=row.get("ocr_text") if image else None,
        generated_caption=row.get("generated_caption") if image else None,
        published=str(published) if (published := row.get("published")) is not None else None,  # date -> ISO
    )


def ranked(hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` with ``rank`` set to 1, 2, … in the given order."""
    return [dataclasses.replace(h, rank=i) for i, h in enumerate(hits, 1)]


@dataclass
class SearchResult:
    """Hits of one query (text hits first, then image hits) and how they were found."""

    query: str | None
    image: str | None
    mode: str
    reranker: str
    hits: list[Hit]
    tables: dict[str, str] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    softmax_exact: dict[str, bool] = field(default_factory=dict)
    where: dict[str, str | None] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def hits_for(self, target: str) -> list[Hit]:
        """Hits of one target (``text`` / ``image`` / ``images``)."""
        wanted = HIT_TARGET.get(target, target)
        return [h for h in self.hits if h.target == wanted]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "query": self.query,
            "image": self.image,
            "mode": self.mode,
            "reranker": self.reranker,
            "tables": self.tables,
            "candidates": self.candidates,
            "softmax_exact": self.softmax_exact,
            "where": self.where,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "hits": [h.to_dict() for h in self.hits],
        }
