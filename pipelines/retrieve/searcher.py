"""The searcher: one database, its embedder and opened tables kept between queries (the warm path).

Directions. A text query searches text chunks (text→text) or images (text→image: CLIP/BLIP-2 image
vectors, or the caption surrogates a text-only embedder such as ``minilm`` stored). An image query
needs an embedder with ``"image" in modalities`` (``clip``, ``blip2``) and searches images
(image→image) or chunks (image→text). Asking an embedder for a modality it cannot embed is a
:class:`SearchError` naming the registered embedders that can.

Modes (``search.mode``): ``softmax`` is the original design (:mod:`.scoring`): softmax of
similarity / temperature over every filtered row, or over the ``softmax_pool`` most similar,
then the threshold, then the top k. ``cosine`` keeps the top k by cosine similarity at or above
``cosine_threshold``.

**Image scoring** (``search.image_scoring``). ``mean`` compares the query with each image row's one
``vector``: CLIP's image embedding, a text surrogate's embedding, or, for BLIP-2, the mean of the
image's 32 query embeddings re-normalised (what the original design stored). ``max_query`` (BLIP-2
image tables only) searches the ``vector_multi`` column with LanceDB's multivector search: its
late-interaction score is the largest cosine over the image's query embeddings, BLIP-2's own
image-text score. Rows embedded from their text surrogate hold that one vector in ``vector_multi``,
so both scorings give them their cosine.

Opened tables live in one :class:`OpenedTables` (table, schema, index type per table). Searchers
over the same pinned tables share it (``Searcher(cfg, tables=other.tables)``), and
:meth:`Searcher.wrap_tables` replaces opened tables with wrappers (the sweep's query cache). Tables
are read at the version current when first opened; :meth:`Searcher.refresh` forgets them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np
import pyarrow as pa
from lancedb.rerankers import LinearCombinationReranker, RRFReranker

from mmrag.config import MmragConfig, SearchConfig
from mmrag.pipelines.embed import EmbedderUnavailable, create_embedder, embedder_specs, embedders_with
from mmrag.pipelines.images import load_rgb
from mmrag.pipelines.retrieve.filters import Filters, compile_where, dates_where
from mmrag.pipelines.retrieve.hits import (
    Hit,
    SearchError,
    SearchResult,
    Target,
    hit_columns,
    hit_from_row,
    ranked,
    resolve_targets,
)
from mmrag.pipelines.llm import make_backend
from mmrag.pipelines.llm.base import LlmError
from mmrag.pipelines.retrieve.rerank import RerankContext, Reranker, create_reranker
from mmrag.pipelines.retrieve.rewrite import QueryRewriter, rewriter_for
from mmrag.pipelines.retrieve.scoring import (
    auto_refine_factor,
    refine_factor_for,
    row_similarities,
    softmax_scores,
    top_k_above,
)
from mmrag.pipelines.store import (
    DOCUMENTS,
    MULTIVECTOR,
    IndexStore,
    column_index,
    content_table_name,
    fts_column,
    fts_index,
    open_existing,
)

if TYPE_CHECKING:
    from PIL import Image

    from mmrag.pipelines.embed import Embedder


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


#: search modes (``search.mode``)
MODES = ("hybrid", "cosine", "softmax")


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


def hybrid_reranker(cfg: SearchConfig) -> RRFReranker | LinearCombinationReranker:
    """LanceDB's fusion of the vector and full-text rankings that ``search.hybrid_fusion`` names."""
    if cfg.hybrid_fusion == "linear":
        return LinearCombinationReranker(weight=cfg.hybrid_vector_weight)
    return RRFReranker(K=cfg.rrf_k)


def require_modality(embedder_name: str, modalities: frozenset[str] | set[str], modality: str) -> None:
    """Raise :class:`SearchError` naming embedders that can, unless ``modality`` is among ``modalities``."""
    if modality in modalities:
        return
    able = embedders_with(modality)
    hint = f"use one that can: {', '.join(able)} (--embedder {able[0]})" if able else "no registered embedder can"
    raise SearchError(f"embedder {embedder_name!r} cannot embed {modality} queries; {hint}")


@dataclass
class OpenedTables:
    """Tables a searcher opened, by name, with what it read of them once (schema, index types).

    One instance may serve several searchers over the same pinned tables (a sweep's settings);
    :meth:`wrap` replaces an opened table by a wrapper with the same query API (the sweep's cache).
    """

    tables: dict[str, Any] = field(default_factory=dict)
    schemas: dict[str, pa.Schema] = field(default_factory=dict)
    index_types: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def wrap(self, name: str, wrapper: Callable[[Any], Any]) -> Any:
        """Replace opened table ``name`` by ``wrapper(table)`` (once: a wrapped table is not wrapped again)."""
        table = self.tables[name]
        if getattr(table, "wraps_table", None) is None:
            self.tables[name] = wrapper(table)
        return self.tables[name]

    def clear(self) -> None:
        """Forget everything opened."""
        self.tables.clear()
        self.schemas.clear()
        self.index_types.clear()


class Searcher:
    """Search one database, keeping the embedder and tables loaded between queries (the warm path).

    ``cfg.embed`` names the query embedder, ``cfg.chunking`` the chunk table, ``cfg.search`` the
    defaults; every :meth:`search` argument overrides its config default for that query.
    ``embedder``, ``store`` and ``tables`` may be given to share them with another searcher;
    otherwise they are built lazily.
    """

    def __init__(self, cfg: MmragConfig, *, embedder: Embedder | None = None, store: IndexStore | None = None,
                 tables: OpenedTables | None = None):
        self.cfg = cfg
        self._embedder = embedder
        self._store = store
        self.tables = tables if tables is not None else OpenedTables()
        self._rerankers: dict[str, Reranker] = {}
        self._rewriter: QueryRewriter | None = None

    # ---- resources

    @property
    def store(self) -> IndexStore:
        """The database (opened on first use; a missing local directory is an error, not created)."""
        if self._store is None:
            try:
                self._store = open_existing(self.cfg.store.db_uri)
            except FileNotFoundError as exc:
                raise SearchError(str(exc)) from None
        return self._store

    @property
    def embedder_name(self) -> str:
        """Name of the query embedder."""
        return self._embedder.name if self._embedder is not None else self.cfg.embed.name

    @property
    def embedder(self) -> Embedder:
        """The query embedder, loaded once."""
        if self._embedder is None:
            try:
                self._embedder = create_embedder(self.cfg.embed)
            except EmbedderUnavailable as exc:
                raise SearchError(str(exc)) from exc
        return self._embedder

    def _embedder_modalities(self) -> frozenset[str]:
        if self._embedder is not None:
            return frozenset(self._embedder.modalities)
        for spec in embedder_specs():
            if spec.name == self.cfg.embed.name:
                return spec.modalities
        return frozenset(self.embedder.modalities)  # unknown name: create_embedder explains

    def table_name(self, target: Target) -> str:
        """The table searched for ``target`` (``search.table_embedder`` or ``embed.name`` decide the embedder part)."""
        label = self.cfg.search.table_embedder or self.embedder_name
        return content_table_name(target, label, self.cfg.chunking.key())

    def table(self, target: Target):
        """The LanceDB table of ``target``, opened once."""
        name = self.table_name(target)
        if name not in self.tables.tables:
            try:
                self.tables.tables[name] = self.store.open_table(name)
            except ValueError as exc:
                raise SearchError(str(exc)) from None
        return self.tables.tables[name]

    def wrap_tables(self, targets: Sequence[Target], wrapper: Callable[[Any], Any]) -> None:
        """Open the tables of ``targets`` and replace each by ``wrapper(table)`` (see :meth:`OpenedTables.wrap`)."""
        for target in targets:
            self.table(target)
            self.tables.wrap(self.table_name(target), wrapper)

    def schema(self, target: Target) -> pa.Schema:
        """The schema of ``target``'s table as opened (``table.schema`` costs about a millisecond a call)."""
        name = self.table_name(target)
        if name not in self.tables.schemas:
            self.tables.schemas[name] = self.table(target).schema
        return self.tables.schemas[name]

    def index_type(self, target: Target, column: str = "vector") -> str | None:
        """LanceDB's type of the index on ``column`` of ``target``'s table as opened (``IvfSq``…), or None."""
        key = (self.table_name(target), column)
        if key not in self.tables.index_types:
            index = column_index(self.table(target), column)
            self.tables.index_types[key] = index.index_type if index is not None else None
        return self.tables.index_types[key]

    def refine_factor(self, target: Target, column: str = "vector") -> int | None:
        """``search.refine_factor`` for ``target``, with ``auto`` resolved by the column's index type."""
        factor = self.cfg.search.refine_factor
        return auto_refine_factor(self.index_type(target, column)) if factor == "auto" else factor

    def pin(self, target: Target) -> int:
        """Check ``target``'s opened table out at its current version, so every later query reads that version;
        returns it. A pinned table is read-only (LanceDB refuses writes to a checked-out version)."""
        table = self.table(target)
        version = int(table.version)
        table.checkout(version)
        return version

    def refresh(self) -> None:
        """Forget opened tables so the next query reads their latest versions."""
        self.tables.clear()

    @property
    def rewriter(self) -> QueryRewriter | None:
        """The query rewriter ``search.query_rewrite`` names (built once; None for ``none``)."""
        if self._rewriter is None and self.cfg.search.query_rewrite != "none":
            def backend():
                try:
                    return make_backend(self.cfg.llm, self.cfg.search.rewrite_llm)
                except LlmError as exc:
                    raise SearchError(f"query rewrite: {exc}") from None

            self._rewriter = rewriter_for(self.cfg.search.query_rewrite, backend,
                                          max_tokens=self.cfg.search.rewrite_max_tokens)
        return self._rewriter

    def reranker(self, name: str) -> Reranker:
        """The reranker ``name`` built from ``cfg.search`` (kept for later queries)."""
        if name not in self._rerankers:
            self._rerankers[name] = create_reranker(name, self.cfg.search, llm=self.cfg.llm)
        return self._rerankers[name]

    # ---- queries

    def embed_query(self, text: str | None = None, image: Image.Image | str | Path | bytes | None = None) -> np.ndarray:
        """The query vector of a text or an image (a PIL image, a path or encoded bytes), float32 ``(d,)``."""
        self._check_query(text, image)
        if text is not None:
            embedded = self.rewriter.rewrite(text) if self.rewriter is not None else text
            return np.asarray(self.embedder.embed_texts([embedded]), dtype=np.float32)[0]
        return np.asarray(self.embedder.embed_images([self._load_image(image)]), dtype=np.float32)[0]

    def embed_query_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors of ``texts`` in one batch, float32 ``(n, d)``, each rewritten first when ``search.query_rewrite``
        says so (as :meth:`embed_query` does one at a time)."""
        require_modality(self.embedder_name, self._embedder_modalities(), "text")
        embedded = [self.rewriter.rewrite(t) for t in texts] if self.rewriter is not None else list(texts)
        return np.asarray(self.embedder.embed_texts(embedded), dtype=np.float32)

    def _check_query(self, text: str | None, image: Any) -> None:
        if (text is None) == (image is None):
            raise SearchError("give exactly one of a query text or a query image")
        if text is not None and not text.strip():
            raise SearchError("the query text is empty")
        require_modality(self.embedder_name, self._embedder_modalities(), "text" if text is not None else "image")

    def _load_image(self, image: Any) -> Image.Image:
        from PIL import Image as PILImage  # deferred: Pillow is only needed for image queries

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
        if query is not None and self.rewriter is not None:
            rewrite_started = time.perf_counter()
            self.rewriter.rewrite(query)  # cached: embed_query reuses it
            timings["rewrite"] = (time.perf_counter() - rewrite_started) * 1000
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
        if mode not in MODES:
            raise SearchError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
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
            if mode == "hybrid" and query_text is not None and query_text.strip():
                hits, n_candidates = self._retrieve_hybrid(vector, query_text, tgt, settings, where=where, n_keep=n_keep)
                exact = False
            else:  # hybrid needs query words: an image query is searched by its vector alone
                vector_mode = "cosine" if mode == "hybrid" else mode
                hits, n_candidates, exact = self._retrieve(vector, tgt, settings, mode=vector_mode, where=where,
                                                           n_keep=n_keep)
            search_ms += (time.perf_counter() - t0) * 1000
            if rerank is not None:
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
        if not self.store.has_table(DOCUMENTS):
            return []
        try:
            rows = self.store.read_table(DOCUMENTS, columns=["url"], where=clause)
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
        self._check_dimension(vector, target, schema)
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

    def fts_column(self, target: Target) -> str:
        """The column ``target``'s full-text index covers; a :class:`SearchError` saying how to build it when missing."""
        column = fts_column(target, self.schema(target).names)
        key = (self.table_name(target), f"fts:{column}")
        if key not in self.tables.index_types:
            index = fts_index(self.table(target), column)
            self.tables.index_types[key] = index.index_type if index is not None else None
        if self.tables.index_types[key] != "FTS":
            raise SearchError(
                f"{self.table_name(target)} has no full-text index on {column!r}, which hybrid search needs: run "
                f"`mmrag maintain` once (indexing builds it), or search with --mode cosine"
            )
        return column

    def _retrieve_hybrid(
        self, vector: np.ndarray, query_text: str, target: Target, settings: TargetSettings, *, where: str | None,
        n_keep: int,
    ) -> tuple[list[Hit], int]:
        """LanceDB's hybrid query: the vector and the full-text (BM25) search, each ``hybrid_candidates`` deep,
        fused by reciprocal rank (``RRFReranker``); returns (the best ``n_keep`` hits at or above the cosine
        floor, rows fused). Only reads: the full-text index was built when the table was written."""
        cfg = self.cfg.search
        table = self.table(target)
        schema = self.schema(target)
        self._check_dimension(vector, target, schema)
        vector_column = self._vector_column(target, schema)
        text_column = self.fts_column(target)
        columns = hit_columns(target, schema.names)
        limit = max(n_keep, cfg.hybrid_candidates)
        query = (
            table.search(query_type="hybrid", vector_column_name=vector_column, fts_columns=text_column)
            .vector(np.asarray(vector, dtype=np.float32))
            .text(query_text)
            .distance_type("cosine")
            .nprobes(cfg.nprobes)
        )
        factor = self.refine_factor(target, vector_column)
        if factor:
            query = query.refine_factor(refine_factor_for(limit, factor))
        if where:
            query = query.where(where, prefilter=True)
        try:
            rows = query.rerank(hybrid_reranker(cfg)).select([*columns, vector_column]).limit(limit).to_arrow()
        except Exception as exc:  # noqa: BLE001 - lance raises several types for SQL/schema errors
            raise SearchError(f"hybrid search on {self.table_name(target)} failed: {_first_line(exc)}") from None
        if rows.num_rows == 0:
            return [], 0
        similarities = row_similarities(vector, rows, vector_column)
        fused = np.asarray(rows.column("_relevance_score").to_pylist(), dtype=np.float64)
        floor = settings.threshold
        keep = [i for i in range(rows.num_rows) if similarities[i] >= floor][:n_keep]  # rows come best first
        records = rows.select(columns).take(pa.array(keep, type=pa.int64())).to_pylist()
        hits = [hit_from_row(row, target=target, similarity=similarities[i], retrieval_score=fused[i], score=fused[i])
                for row, i in zip(records, keep)]
        return ranked(hits), rows.num_rows

    def _check_dimension(self, vector: np.ndarray, target: Target, schema: pa.Schema) -> None:
        dimension = schema.field("vector").type.list_size
        if vector.shape[-1] != dimension:
            raise SearchError(
                f"query vector has {vector.shape[-1]} dimensions but {self.table_name(target)} stores {dimension}: "
                f"the query embedder ({self.embedder_name}) does not match the table's vectors"
            )

    def _vector_column(self, target: Target, schema: pa.Schema) -> str:
        """``vector``, or ``vector_multi`` for images with ``search.image_scoring = max_query`` (an error when the
        table has no multivector column: only BLIP-2 image tables keep one)."""
        if target != "images" or self.cfg.search.image_scoring == "mean":
            return "vector"
        if MULTIVECTOR not in schema.names:
            raise SearchError(
                f"search.image_scoring max_query needs the {MULTIVECTOR!r} column, which "
                f"{self.table_name(target)} does not have (only images indexed with blip2 keep their query vectors); "
                f"use image_scoring mean"
            )
        return MULTIVECTOR

    @staticmethod
    def _count(table: Any, where: str | None) -> int:
        try:
            return int(table.count_rows(where) if where else table.count_rows())
        except Exception as exc:  # noqa: BLE001
            raise SearchError(f"invalid filter {where!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
