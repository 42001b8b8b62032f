"""Search: embed a query, find chunks or images in LanceDB, score them like the original design, rerank.

Directions. A text query searches text chunks (text→text) or images (text→image: CLIP/BLIP-2 image
vectors, or the caption surrogates a text-only embedder such as ``minilm`` stored). An image query
needs an embedder with ``"image" in modalities`` (``clip``, ``blip2``) and searches images
(image→image) or chunks (image→text). Asking an embedder for a modality it cannot embed is a
:class:`SearchError` naming the registered embedders that can.

Scoring (pure functions below, :func:`similarity_search` is the design's function over arrays):

* ``softmax`` (the original design): cosine similarity of the query to every candidate,
  ``softmax(similarity / temperature)`` over all of them, keep scores ≥ threshold, then the top k.
  Design settings: text k=15, threshold=0.01, temperature=0.25; images k=5, threshold=0.25,
  temperature=0.5 (the :class:`~mmrag.config.SearchConfig` defaults).
* ``cosine``: the top k by cosine similarity, keeping similarities ≥ ``cosine_threshold``.

**Softmax scores depend on the corpus size.** The softmax denominator sums
``exp(similarity / temperature)`` over every candidate, so each row added to the table — relevant
or not — lowers every score, roughly as 1/N. The same query and threshold that keep 15 hits over a
few hundred chunks keep fewer as the corpus grows, and none once no score can reach the threshold:
with similarities spread over a range Δ, the best score is at most ``e^(Δ/T) / (e^(Δ/T) + N − 1)``
(T=0.25 and Δ≈0.5, as between CLIP text vectors: below 0.01 from about 730 rows). The ranking never
changes (softmax is monotone in similarity); only which hits pass the threshold does. Use
``cosine`` mode, or re-tune the threshold, when the corpus size changes. Metadata filters are
applied first, so the softmax runs over the rows that pass them.

**Candidate pool.** Exact softmax reads the similarity of every (filtered) row, which costs a full
scan per query on a large table. With ``softmax_pool = N`` the softmax is taken over the N most
similar rows only (from the vector index when the table has one); when the filtered table has at
most N rows this *is* the exact computation (:attr:`SearchResult.softmax_exact` says which one
ran). Over a pool, the ranking is unchanged and every score is an upper bound of the exact one
(the denominator misses the tail), so a pool can let more hits pass the threshold.

**Image scoring** (``search.image_scoring``). ``mean`` compares the query with each image row's one
``vector``: CLIP's image embedding, a text surrogate's embedding, or, for BLIP-2, the mean of the
image's 32 query embeddings re-normalised (what the original design stored). ``max_query`` (BLIP-2
image tables only) searches the ``vector_multi`` column with LanceDB's multivector search: for a
single query vector its late-interaction score is the largest cosine over the image's query
embeddings, which is BLIP-2's own image-text (ITC) score (:meth:`Blip2Embedder.itm_score
<pipelines.blip2_embedder.Blip2Embedder.itm_score>`). The two rank differently: the mean blurs an
image whose one query matches the text strongly with the others that do not. The mode's
similarity, threshold and softmax then apply to the chosen score. Rows embedded from their text
surrogate hold that one vector in ``vector_multi``, so both scorings give them their cosine.

Filters are LanceDB ``where`` clauses (:class:`Filters`, :func:`compile_where`): a URL prefix,
article title, section (with its subsections), image status, a publication-date range (the
``published`` column each chunk and image row carries), a fetch-date range (through the
``documents`` table) and any raw SQL. Rows whose page showed no publication date hold null there,
and a publication-date range excludes them.

Warm path: :class:`Searcher` loads the embedder once (lazily, on the first text or image query)
and keeps tables open between queries; the CLI's ``mmrag search --stdin`` keeps one alive for a
stream of queries. Tables are read at the version current when first opened; call
:meth:`Searcher.refresh` after re-indexing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

import numpy as np
import pyarrow as pa

from mmrag.config import MmragConfig, SearchConfig
from pipelines import store as store_module
from pipelines.store import IndexStore, chunks_table_name, images_table_name, sql_quote

if TYPE_CHECKING:
    from PIL import Image

    from pipelines.embed import Embedder

Target = Literal["text", "images"]
TARGETS: tuple[Target, ...] = ("text", "images")
HIT_TARGET = {"text": "text", "images": "image"}

TEXT_COLUMNS = ["id", "doc_url", "article_title", "section", "text"]
IMAGE_COLUMNS = ["id", "doc_url", "article_title", "section", "caption", "surrogate_text", "src_url", "image_sha256", "status"]
#: columns added after the first schema: read when the table has them (older databases may not)
OPTIONAL_COLUMNS = {"text": ("published",), "images": ("ocr_text", "generated_caption", "published")}


def hit_columns(target: str, table_columns: Sequence[str]) -> list[str]:
    """The columns :func:`hit_from_row` reads from a ``target`` table that has ``table_columns``."""
    base = TEXT_COLUMNS if target == "text" else IMAGE_COLUMNS
    return base + [c for c in OPTIONAL_COLUMNS[target] if c in table_columns]


class SearchError(ValueError):
    """A search cannot run as asked (missing table, wrong modality, bad filter); the message is one line."""


# --------------------------------------------------------------------------- pure scoring


def cosine_similarities(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``query`` ``(d,)`` to each row of ``vectors`` ``(n, d)``, as float64 ``(n,)``.

    Zero vectors get similarity 0 (norms are clamped at 1e-8, like ``torch.nn.functional.cosine_similarity``).
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    m = np.asarray(vectors, dtype=np.float64).reshape(-1, q.shape[0])
    norms = np.maximum(np.linalg.norm(m, axis=1), 1e-8) * max(float(np.linalg.norm(q)), 1e-8)
    return (m @ q) / norms


def softmax_scores(similarities: np.ndarray, *, temperature: float = 0.5) -> np.ndarray:
    """``softmax(similarities / temperature)`` over all entries (numerically stable), float64."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.asarray(similarities, dtype=np.float64) / temperature
    if logits.size == 0:
        return logits
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


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


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """Metadata filters, compiled to a LanceDB ``where`` clause by :func:`compile_where`.

    ``url_prefix``: document URL starts with it. ``title``: exact article title. ``section``: that
    section or one of its subsections (``"Intro"`` matches ``"Intro"`` and ``"Intro > Details"``).
    ``image_status``: image rows only (``ok``, ``http_404``, ``not_fetched``, …). ``fetched_since`` /
    ``fetched_until``: the document's fetch time (UTC, inclusive; dates or ISO datetimes), resolved
    through the ``documents`` table. ``published_since`` / ``published_until``: the page's
    publication date (``YYYY-MM-DD``, inclusive), read from the ``published`` column of the searched
    table; rows without a known date are excluded by either bound. ``where``: raw SQL over the
    table's columns, ANDed with the rest.
    """

    url_prefix: str | None = None
    title: str | None = None
    section: str | None = None
    image_status: str | None = None
    fetched_since: str | None = None
    fetched_until: str | None = None
    published_since: str | None = None
    published_until: str | None = None
    where: str | None = None

    @property
    def has_dates(self) -> bool:
        """Whether a fetch-date range is set (needs the ``documents`` table)."""
        return bool(self.fetched_since or self.fetched_until)

    @property
    def has_published(self) -> bool:
        """Whether a publication-date range is set (needs the ``published`` column)."""
        return bool(self.published_since or self.published_until)


def parse_when(value: str, *, end_of_day: bool = False) -> datetime:
    """A UTC datetime from ``YYYY-MM-DD`` (start, or end with ``end_of_day``) or an ISO datetime."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return moment.replace(hour=23, minute=59, second=59, microsecond=999_999) if end_of_day else moment
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SearchError(f"invalid date {value!r}: use YYYY-MM-DD or an ISO datetime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def dates_where(filters: Filters) -> str | None:
    """The ``documents`` filter of the fetch-date range (``fetched_at``), or None without one."""
    since, until = filters.fetched_since, filters.fetched_until
    return _bounds_where("fetched_at", "TIMESTAMP", since and _sql_time(parse_when(since)),
                         until and _sql_time(parse_when(until, end_of_day=True)))


def _bounds_where(column: str, sql_type: str, lower: str | None, upper: str | None) -> str | None:
    """``column >= TYPE 'lower' AND column <= TYPE 'upper'`` for the bounds given, or None without any."""
    clauses = [f"{column} {op} {sql_type} {sql_quote(value)}" for op, value in ((">=", lower), ("<=", upper)) if value]
    return " AND ".join(clauses) or None


def parse_day(value: str) -> date:
    """A date from ``YYYY-MM-DD`` (raises :class:`SearchError` naming the value otherwise)."""
    try:
        return date.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise SearchError(f"invalid publication date {value!r}: use YYYY-MM-DD") from None


def published_where(filters: Filters) -> str | None:
    """The clause of the publication-date range on the ``published`` column, or None without one.

    SQL comparisons with null are not true, so rows without a known date never pass a bound.
    """
    since, until = filters.published_since, filters.published_until
    return _bounds_where("published", "date", since and parse_day(since).isoformat(), until and parse_day(until).isoformat())


def _sql_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def compile_where(filters: Filters | None, *, target: Target, doc_urls: Sequence[str] | None = None) -> str | None:
    """The LanceDB ``where`` clause of ``filters`` for one target table, or None when nothing filters.

    ``doc_urls`` (from a date range, see :func:`dates_where`) restricts to those documents; an
    empty list matches nothing. ``image_status`` is ignored for the text target (callers reject it
    when only text is searched). Values are quoted with :func:`pipelines.store.sql_quote`.
    """
    if filters is None:
        return None
    clauses: list[str] = []
    if filters.url_prefix:
        clauses.append(f"starts_with(doc_url, {sql_quote(filters.url_prefix)})")
    if filters.title:
        clauses.append(f"article_title = {sql_quote(filters.title)}")
    if filters.section:
        clauses.append(
            f"(section = {sql_quote(filters.section)} OR "
            f"starts_with(section, {sql_quote(filters.section + ' > ')}))"
        )
    if filters.image_status and target == "images":
        clauses.append(f"status = {sql_quote(filters.image_status)}")
    if filters.has_published:
        clauses.append(published_where(filters))
    if doc_urls is not None:
        clauses.append(store_module.sql_in("doc_url", doc_urls) if doc_urls else "false")
    if filters.where and filters.where.strip():
        clauses.append(f"({filters.where.strip()})")
    return " AND ".join(clauses) or None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``target`` is ``text`` or ``image``; ``rank`` starts at 1 within its target. ``score`` is what
    ranked it last (the mode's score, or the reranker's); ``retrieval_score`` the mode's score
    (None for rows only a hybrid full-text search found); ``similarity`` the raw cosine.
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


class SearchOverrides(TypedDict, total=False):
    """Per-call overrides of the ``search`` config that :meth:`Searcher.search` passes on to :meth:`Searcher.search_vector`."""

    target: str | None
    mode: str | None
    k: int | None
    threshold: float | None
    temperature: float | None
    reranker: str | None
    rerank_candidates: int | None
    filters: Filters | None


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


@dataclass(frozen=True)
class TargetSettings:
    """k, threshold and temperature of one target after config defaults and per-query overrides."""

    k: int
    threshold: float
    temperature: float


def target_settings(
    cfg: SearchConfig,
    target: Target,
    *,
    mode: str,
    k: int | None = None,
    threshold: float | None = None,
    temperature: float | None = None,
) -> TargetSettings:
    """Settings for ``target``: the ``text_*``/``image_*`` config fields (``cosine_threshold`` in cosine mode), overridden."""
    prefix = "text" if target == "text" else "image"
    default_threshold = getattr(cfg, f"{prefix}_threshold") if mode == "softmax" else cfg.cosine_threshold
    settings = TargetSettings(
        k=getattr(cfg, f"{prefix}_k") if k is None else k,
        threshold=default_threshold if threshold is None else threshold,
        temperature=getattr(cfg, f"{prefix}_temperature") if temperature is None else temperature,
    )
    if settings.k < 1:
        raise SearchError(f"k must be at least 1, got {settings.k}")
    if settings.temperature <= 0:
        raise SearchError(f"temperature must be positive, got {settings.temperature}")
    return settings


def resolve_targets(target: str) -> tuple[Target, ...]:
    """``text`` / ``images`` / ``both`` as the tuple of tables to search."""
    if target == "both":
        return TARGETS
    if target in TARGETS:
        return (target,)  # type: ignore[return-value]
    if target == "image":
        return ("images",)
    raise SearchError(f"unknown target {target!r}: use text, images or both")


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


def row_similarities(query: np.ndarray, rows: pa.Table, vector_column: str = "vector") -> np.ndarray:
    """Cosine of ``query`` with each row's ``vector_column``: the best query embedding for ``vector_multi``."""
    if vector_column == store_module.MULTIVECTOR:
        return max_query_similarities(query, rows.column(vector_column))
    return cosine_similarities(query, vectors_of(rows, vector_column))


def vectors_of(rows: pa.Table, column: str = "vector") -> np.ndarray:
    """The fixed-size-list vector column of ``rows`` as a float32 ``(n, d)`` array."""
    col = rows.column(column).combine_chunks()
    dimension = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, dimension).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- the searcher

#: At most this many index candidates are re-ranked with exact vectors per query (a large softmax pool
#: times refine_factor would otherwise read hundreds of thousands of full vectors).
REFINE_BUDGET = 100_000


def refine_factor_for(limit: int, refine_factor: int) -> int:
    """``refine_factor``, lowered so that ``limit × factor`` stays within :data:`REFINE_BUDGET` (at least 1)."""
    return max(1, min(refine_factor, REFINE_BUDGET // max(limit, 1)))


#: ``search.refine_factor = "auto"``: the factor each LanceDB index type needs for recall@10 ≥ 0.95 at 1M rows
#: (bench/RESULTS.md query_latency: IVF_PQ 0.57-0.68 at 5, 0.97-1.0 at 80; IVF_SQ and IVF_HNSW_SQ 1.0 at 5)
AUTO_REFINE_FACTORS = {"IvfPq": 80}
AUTO_REFINE_DEFAULT = 5


def auto_refine_factor(index_type: str | None) -> int:
    """The refine factor ``auto`` stands for on an index of LanceDB type ``index_type`` (``IvfPq``, ``IvfSq``…)."""
    return AUTO_REFINE_FACTORS.get(index_type or "", AUTO_REFINE_DEFAULT)



def embedders_with(modality: str) -> list[str]:
    """Names of the registered embedders that embed ``modality`` (``text`` / ``image``)."""
    from pipelines.embed import embedder_specs

    return [s.name for s in embedder_specs() if modality in s.modalities]


def require_modality(embedder_name: str, modalities: frozenset[str] | set[str], modality: str) -> None:
    """Raise :class:`SearchError` naming embedders that can, unless ``modality`` is among ``modalities``."""
    if modality in modalities:
        return
    able = embedders_with(modality)
    hint = f"use one that can: {', '.join(able)} (--embedder {able[0]})" if able else "no registered embedder can"
    raise SearchError(f"embedder {embedder_name!r} cannot embed {modality} queries; {hint}")


class Searcher:
    """Search one database, keeping the embedder and tables loaded between queries (the warm path).

    ``cfg.embed`` names the query embedder, ``cfg.chunking`` the chunk table, ``cfg.search`` the
    defaults; every :meth:`search` argument overrides its config default for that query.
    ``embedder`` and ``store`` may be given (tests, benchmarks); otherwise they are built lazily.
    """

    def __init__(self, cfg: MmragConfig, *, embedder: Embedder | None = None, store: IndexStore | None = None):
        self.cfg = cfg
        self._embedder = embedder
        self._store = store
        self._tables: dict[str, Any] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._index_types: dict[tuple[str, str], str | None] = {}
        self._rerankers: dict[str, Any] = {}

    # ---- resources

    @property
    def store(self) -> IndexStore:
        """The database (opened on first use; a missing local directory is an error, not created)."""
        if self._store is None:
            uri = self.cfg.store.db_uri
            if "://" not in uri and not Path(uri).is_dir():
                raise SearchError(f"no database at {uri} (run `mmrag index SOURCE…` first)")
            self._store = IndexStore(uri)
        return self._store

    @property
    def embedder_name(self) -> str:
        """Name of the query embedder."""
        return self._embedder.name if self._embedder is not None else self.cfg.embed.name

    @property
    def embedder(self) -> Embedder:
        """The query embedder, loaded once."""
        if self._embedder is None:
            from pipelines.embed import EmbedderUnavailable, create_embedder

            try:
                self._embedder = create_embedder(self.cfg.embed)
            except EmbedderUnavailable as exc:
                raise SearchError(str(exc)) from exc
        return self._embedder

    def _embedder_modalities(self) -> frozenset[str]:
        if self._embedder is not None:
            return frozenset(self._embedder.modalities)
        from pipelines.embed import embedder_specs

        for spec in embedder_specs():
            if spec.name == self.cfg.embed.name:
                return spec.modalities
        return frozenset(self.embedder.modalities)  # unknown name: create_embedder explains

    def table_name(self, target: Target) -> str:
        """The table searched for ``target`` (``search.table_embedder`` or ``embed.name`` decide the embedder part)."""
        label = self.cfg.search.table_embedder or self.embedder_name
        return chunks_table_name(label, self.cfg.chunking.key()) if target == "text" else images_table_name(label)

    def table(self, target: Target):
        """The LanceDB table of ``target``, opened once."""
        name = self.table_name(target)
        if name not in self._tables:
            try:
                self._tables[name] = self.store.open_table(name)
            except ValueError as exc:
                raise SearchError(str(exc)) from None
        return self._tables[name]

    def schema(self, target: Target) -> pa.Schema:
        """The schema of ``target``'s table as opened (``table.schema`` costs about a millisecond a call)."""
        name = self.table_name(target)
        if name not in self._schemas:
            self._schemas[name] = self.table(target).schema
        return self._schemas[name]

    def index_type(self, target: Target, column: str = "vector") -> str | None:
        """LanceDB's type of the index on ``column`` of ``target``'s table as opened (``IvfSq``…), or None."""
        key = (self.table_name(target), column)
        if key not in self._index_types:
            index = store_module.column_index(self.table(target), column)
            self._index_types[key] = index.index_type if index is not None else None
        return self._index_types[key]

    def refine_factor(self, target: Target, column: str = "vector") -> int | None:
        """``search.refine_factor`` for ``target``, with ``auto`` resolved by the column's index type."""
        factor = self.cfg.search.refine_factor
        return auto_refine_factor(self.index_type(target, column)) if factor == "auto" else factor

    def refresh(self) -> None:
        """Forget opened tables so the next query reads their latest versions."""
        self._tables.clear()
        self._schemas.clear()
        self._index_types.clear()

    def reranker(self, name: str):
        """The reranker ``name`` built from ``cfg.search`` (kept for later queries)."""
        from pipelines.rerank import create_reranker

        if name not in self._rerankers:
            self._rerankers[name] = create_reranker(name, self.cfg.search, llm=self.cfg.llm)
        return self._rerankers[name]

    # ---- queries

    def embed_query(self, text: str | None = None, image: Image.Image | str | Path | bytes | None = None) -> np.ndarray:
        """The query vector of a text or an image (a PIL image, a path or encoded bytes), float32 ``(d,)``."""
        self._check_query(text, image)
        if text is not None:
            return np.asarray(self.embedder.embed_texts([text]), dtype=np.float32)[0]
        return np.asarray(self.embedder.embed_images([self._load_image(image)]), dtype=np.float32)[0]

    def _check_query(self, text: str | None, image: Any) -> None:
        if (text is None) == (image is None):
            raise SearchError("give exactly one of a query text or a query image")
        if text is not None and not text.strip():
            raise SearchError("the query text is empty")
        require_modality(self.embedder_name, self._embedder_modalities(), "text" if text is not None else "image")

    def _load_image(self, image: Any) -> Image.Image:
        from PIL import Image as PILImage

        from pipelines.images import load_rgb

        if isinstance(image, PILImage.Image):
            return image.convert("RGB")
        if isinstance(image, (str, Path)):
            path = Path(image).expanduser()
            if not path.is_file():
                raise SearchError(f"query image not found: {path}")
            image = path.read_bytes()
        try:
            return load_rgb(image, self.cfg.images, max_bytes=self.cfg.fetch.max_image_bytes)
        except ValueError as exc:
            raise SearchError(f"query image cannot be decoded: {exc}") from None

    def search(
        self,
        query: str | None = None,
        *,
        image: Image.Image | str | Path | bytes | None = None,
        **overrides: Unpack[SearchOverrides],
    ) -> SearchResult:
        """Embed the query (text or image) and search; ``overrides`` and the rest as :meth:`search_vector`."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        if self._embedder is None:
            self._check_query(query, image)
            _ = self.embedder  # loaded once; timed apart from embedding
            timings["load_model"] = (time.perf_counter() - started) * 1000
        embed_started = time.perf_counter()
        vector = self.embed_query(query, image)
        timings["embed"] = (time.perf_counter() - embed_started) * 1000
        image_label = None if image is None else (str(image) if isinstance(image, (str, Path)) else "<image>")
        result = self.search_vector(vector, query_text=query, image_query=image is not None, **overrides)
        result.image = image_label
        result.timings_ms = {**timings, **result.timings_ms}
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return result

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        query_text: str | None = None,
        image_query: bool = False,
        target: str | None = None,
        mode: str | None = None,
        k: int | None = None,
        threshold: float | None = None,
        temperature: float | None = None,
        reranker: str | None = None,
        rerank_candidates: int | None = None,
        filters: Filters | None = None,
    ) -> SearchResult:
        """Search with a ready query vector (e.g. precomputed); returns hits per target, best first.

        Per target: candidates by cosine (all filtered rows for exact softmax, else the pool or
        ``k``/``rerank_candidates`` from the vector index), the mode's score and threshold, then the
        reranker (if not ``none``) reorders the best ``rerank_candidates`` and ``k`` are kept.
        """
        cfg = self.cfg.search
        mode = mode or cfg.mode
        if mode not in ("softmax", "cosine"):
            raise SearchError(f"unknown mode {mode!r}: use softmax or cosine")
        targets = resolve_targets(target or cfg.target)
        if filters and filters.image_status and targets == ("text",):
            raise SearchError("--image-status filters image results; use --target images or both")
        reranker_name = reranker or cfg.reranker
        rerank = None if reranker_name == "none" else self.reranker(reranker_name)
        n_rerank = rerank_candidates or cfg.rerank_candidates
        doc_urls = self._doc_urls_in_range(filters) if filters and filters.has_dates else None

        result = SearchResult(query=query_text, image=None, mode=mode, reranker=reranker_name, hits=[])
        search_ms = rerank_ms = 0.0
        for tgt in targets:
            settings = target_settings(cfg, tgt, mode=mode, k=k, threshold=threshold, temperature=temperature)
            where = compile_where(filters, target=tgt, doc_urls=doc_urls)
            if filters and filters.has_published:
                self._require_published(tgt)
            if rerank is not None:
                rerank.check(target=tgt, query_text=query_text, image_query=image_query)
            n_keep = max(settings.k, n_rerank) if rerank is not None else settings.k
            t0 = time.perf_counter()
            hits, n_candidates, exact = self._retrieve(vector, tgt, settings, mode=mode, where=where, n_keep=n_keep)
            search_ms += (time.perf_counter() - t0) * 1000
            if rerank is not None:
                from pipelines.rerank import RerankContext

                t0 = time.perf_counter()
                context = RerankContext(
                    query=query_text, query_vector=vector, target=tgt, table=self.table(tgt), where=where,
                    embedder=self.embedder if rerank.uses_embedder else self._embedder, store=self.store,
                    image_config=self.cfg.images, vector_column=self._vector_column(tgt, self.schema(tgt)),
                )
                hits = rerank.rerank(hits, context, k=settings.k)
                rerank_ms += (time.perf_counter() - t0) * 1000
            result.hits.extend(ranked(hits[: settings.k]))
            result.tables[tgt] = self.table_name(tgt)
            result.candidates[tgt] = n_candidates
            if mode == "softmax":
                result.softmax_exact[tgt] = exact
            result.where[tgt] = where
        result.timings_ms = {"search": search_ms, **({"rerank": rerank_ms} if rerank is not None else {})}
        return result

    def _require_published(self, target: Target) -> None:
        if "published" not in self.schema(target).names:
            raise SearchError(
                f"{self.table_name(target)} has no publication dates (it was indexed before they were stored); "
                "run `mmrag index --reparse SOURCE...` once to add them"
            )

    def _doc_urls_in_range(self, filters: Filters) -> list[str]:
        clause = dates_where(filters)
        if not self.store.has_table(store_module.DOCUMENTS):
            return []
        dataset = self.store.open_table(store_module.DOCUMENTS).to_lance()
        try:
            rows = dataset.to_table(columns=["url"], filter=clause)
        except Exception as exc:  # noqa: BLE001 - lance reports SQL errors with many types
            raise SearchError(f"invalid date filter: {_first_line(exc)}") from None
        return sorted(set(rows.column("url").to_pylist()))

    def _retrieve(
        self, vector: np.ndarray, target: Target, settings: TargetSettings, *, mode: str, where: str | None, n_keep: int
    ) -> tuple[list[Hit], int, bool]:
        """Candidates from LanceDB, scored by the mode; returns (hits, candidates read, softmax exact)."""
        cfg = self.cfg.search
        table = self.table(target)
        schema = self.schema(target)
        dimension = schema.field("vector").type.list_size
        if vector.shape[-1] != dimension:
            raise SearchError(
                f"query vector has {vector.shape[-1]} dimensions but {self.table_name(target)} stores {dimension}: "
                f"the query embedder ({self.embedder_name}) does not match the table's vectors"
            )
        exact = False
        if mode == "softmax":
            total = self._count(table, where)
            exact = cfg.softmax_pool is None or total <= cfg.softmax_pool
            limit = total if exact else cfg.softmax_pool
        else:
            limit = n_keep
        if limit == 0:
            return [], 0, exact
        vector_column = self._vector_column(target, schema)
        columns = hit_columns(target, schema.names)
        query = table.search(np.asarray(vector, dtype=np.float32), vector_column_name=vector_column).distance_type("cosine")
        if exact:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(cfg.nprobes)
            factor = self.refine_factor(target, vector_column)
            refine = refine_factor_for(limit, factor) if factor else 1
            if factor:
                query = query.refine_factor(refine)
            if cfg.ef:  # HNSW must explore at least as many nodes as candidates asked for
                query = query.ef(max(cfg.ef, limit * refine))
        if where:
            query = query.where(where, prefilter=True)
        try:
            rows = query.select([*columns, vector_column, "_distance"]).limit(limit).to_arrow()
        except Exception as exc:  # noqa: BLE001 - lance raises several types for SQL/schema errors
            raise SearchError(f"search on {self.table_name(target)} failed: {_first_line(exc)}") from None
        if rows.num_rows == 0:
            return [], 0, exact
        similarities = row_similarities(vector, rows, vector_column)
        if mode == "softmax":
            scores = softmax_scores(similarities, temperature=settings.temperature)
        else:
            scores = similarities
        keep = top_k_above(scores, k=n_keep, threshold=settings.threshold)
        records = rows.select(columns).take(pa.array(keep, type=pa.int64())).to_pylist()
        hits = [
            hit_from_row(row, target=target, similarity=similarities[i], retrieval_score=scores[i], score=scores[i])
            for row, i in zip(records, keep)
        ]
        return ranked(hits), rows.num_rows, exact

    def _vector_column(self, target: Target, schema: pa.Schema) -> str:
        """``vector``, or ``vector_multi`` for images with ``search.image_scoring = max_query`` (an error when the
        table has no multivector column: only BLIP-2 image tables keep one)."""
        if target != "images" or self.cfg.search.image_scoring == "mean":
            return "vector"
        if store_module.MULTIVECTOR not in schema.names:
            raise SearchError(
                f"search.image_scoring max_query needs the {store_module.MULTIVECTOR!r} column, which "
                f"{self.table_name(target)} does not have (only images indexed with blip2 keep their query vectors); "
                f"use image_scoring mean"
            )
        return store_module.MULTIVECTOR

    @staticmethod
    def _count(table: Any, where: str | None) -> int:
        try:
            return int(table.count_rows(where) if where else table.count_rows())
        except Exception as exc:  # noqa: BLE001
            raise SearchError(f"invalid filter {where!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
