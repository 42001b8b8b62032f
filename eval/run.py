"""One eval run: label the index, embed every query once, search with one retrieval setting, score with ranx.

The steps are separate functions so sweeps (part B) can reuse them -- in particular
:func:`embed_queries` (queries embedded once, reused for every setting of the same embedder) and
:func:`search_entries` (one setting over ready vectors). :func:`run_evaluation` composes them
without Prefect; ``flows/evaluate.py`` runs the same steps as Prefect tasks.

The retrieval setting is read from the config only (:func:`resolve_setting`): ``search.*`` (mode,
k, thresholds, temperatures, reranker, pool), ``embed.name``, ``chunking`` and ``eval.target`` --
so a sweep is a list of configs. Tables are pinned (checked out) at the versions current when the
run starts, so labels and searches read the same data however long the run takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.eval import labels as labels_module
from mmrag.eval import metrics as metrics_module
from mmrag.eval.evalset import EvalEntry, evalset_fingerprint
from mmrag.config import MmragConfig
from mmrag.records import sha256_hex
from mmrag.pipelines.retrieve.hits import HIT_TARGET, SearchError, SearchResult, resolve_targets
from mmrag.pipelines.retrieve.searcher import Searcher, require_modality, target_settings
from mmrag.pipelines.store import DOCUMENTS

CHUNK_COLUMNS = ["id", "doc_url", "section_path", "char_start", "char_end", "text"]
IMAGE_COLUMNS = ["id", "doc_url", "src_url"]
DOCUMENT_COLUMNS = ["url", "status", "content_hash", "text"]


@dataclass
class IndexSnapshot:
    """What an eval run reads from the index: tables pinned at ``versions``, the label corpus, document rows."""

    corpus: labels_module.Corpus
    versions: dict[str, int]
    tables: dict[str, str]
    documents: list[dict[str, Any]]


def corpus_fingerprint(documents: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 over the sorted content hashes of live documents (rows with ``status`` and ``content_hash``).

    Machine-independent: URLs are not part of it (see :mod:`mmrag.eval.results`).
    """
    hashes = sorted(d["content_hash"] for d in documents if d.get("content_hash") and d.get("status") != "gone")
    return sha256_hex("\n".join(hashes))


@dataclass
class EvalResult:
    """Everything one eval run produced; :func:`mmrag.eval.results.write_run` writes it as a run directory."""

    run_id: str
    created_at: datetime
    setting: dict[str, Any]
    config: dict[str, Any]
    queries_path: str | None
    entries: list[EvalEntry]
    metrics: list[str]
    per_query: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]
    hits: list[dict[str, Any]]
    relevant: dict[str, dict[str, list[str]]]
    table_versions: dict[str, int]
    corpus_fingerprint: str
    evalset_fingerprint: str
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """Aggregates as nested dicts (``overall`` per target, ``by_kind`` per kind and target)."""
        return metrics_module.summary_view(self.aggregates, self.metrics)


def new_run_id() -> str:
    """A sortable unique run id: UTC time plus a random suffix (``20240101T120000Z-1a2b3c``)."""
    import uuid

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def eval_targets(cfg: MmragConfig) -> list[str]:
    """The hit targets an eval run scores (``text``, ``image``), from ``eval.target``."""
    return [HIT_TARGET[t] for t in resolve_targets(cfg.eval.target)]


def resolve_setting(cfg: MmragConfig) -> dict[str, Any]:
    """The retrieval setting of an eval run as a flat JSON-ready dict (what sweeps vary and history records).

    Keys: ``embedder, table_embedder, chunking, target, mode, reranker, rerank_candidates,
    softmax_pool, image_scoring`` and per target ``text_k, text_threshold, text_temperature, image_k, …``
    (thresholds are cosine similarities in cosine mode).
    """
    s = cfg.search
    setting: dict[str, Any] = {
        "embedder": cfg.embed.name,
        "table_embedder": s.table_embedder,
        "chunking": cfg.chunking.key(),
        "target": cfg.eval.target,
        "mode": s.mode,
        "reranker": s.reranker,
        "rerank_candidates": s.rerank_candidates if s.reranker != "none" else None,
        "softmax_pool": s.softmax_pool if s.mode == "softmax" else None,
        "image_scoring": s.image_scoring,
    }
    for tgt in ("text", "images"):
        ts = target_settings(s, tgt, mode=s.mode)
        prefix = HIT_TARGET[tgt]
        setting[f"{prefix}_k"] = ts.k
        setting[f"{prefix}_threshold"] = ts.threshold
        setting[f"{prefix}_temperature"] = ts.temperature if s.mode == "softmax" else None
    return setting


def open_index(searcher: Searcher, cfg: MmragConfig) -> IndexSnapshot:
    """Pin the tables an eval run reads at their current versions and read the label corpus from them.

    Reads every chunk of the chunk table (for recall's denominator), every image row and the
    ``documents`` rows (parsed text for span matching, content hashes for the fingerprint).
    """
    index_store = searcher.store
    versions: dict[str, int] = {}
    tables: dict[str, str] = {}
    chunks: list[dict] = []
    images: list[dict] = []
    for tgt in resolve_targets(cfg.eval.target):
        version = searcher.pin(tgt)
        name = searcher.table_name(tgt)
        versions[name] = version
        tables[HIT_TARGET[tgt]] = name
        columns = CHUNK_COLUMNS if tgt == "text" else IMAGE_COLUMNS
        rows = index_store.read_table(name, columns, version=version).to_pylist()
        (chunks if tgt == "text" else images).extend(rows)
    if not index_store.has_table(DOCUMENTS):
        raise SearchError(f"no documents table in {index_store.db_uri} (run `mmrag index SOURCE…` first)")
    versions[DOCUMENTS] = index_store.current_versions([DOCUMENTS])[DOCUMENTS]
    documents = index_store.read_table(DOCUMENTS, DOCUMENT_COLUMNS, version=versions[DOCUMENTS]).to_pylist()
    corpus = labels_module.build_corpus(chunks, images, {d["url"]: d.get("text") for d in documents})
    return IndexSnapshot(corpus=corpus, versions=versions, tables=tables, documents=documents)


def can_embed(searcher: Searcher, entry: EvalEntry) -> bool:
    """Whether the query embedder can embed ``entry`` (image queries need an image embedder)."""
    if not entry.query_image:
        return True
    try:
        require_modality(searcher.embedder_name, frozenset(searcher.embedder.modalities), "image")
    except SearchError:
        return False
    return True


def embed_queries(searcher: Searcher, entries: Sequence[EvalEntry], *, base_dir: str | Path | None = None) -> np.ndarray:
    """Query vectors of ``entries``, float32 ``(n, d)`` in entry order: texts in one batch, images one by one.

    ``query_image`` paths are relative to ``base_dir`` (the eval file's folder). Raises
    :class:`~mmrag.pipelines.retrieve.SearchError` when the embedder cannot embed a query's modality.
    """
    if not entries:
        return np.empty((0, 0), dtype=np.float32)
    embedder = searcher.embedder
    text_rows = [i for i, e in enumerate(entries) if not e.query_image]
    image_rows = [i for i, e in enumerate(entries) if e.query_image]
    parts: dict[int, np.ndarray] = {}
    if text_rows:
        require_modality(searcher.embedder_name, frozenset(embedder.modalities), "text")
        parts.update(zip(text_rows, searcher.embed_query_texts([entries[i].query for i in text_rows])))
    for i in image_rows:
        path = Path(entries[i].query_image).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        parts[i] = searcher.embed_query(image=path)
    return np.stack([parts[i] for i in range(len(entries))])


def search_entries(searcher: Searcher, entries: Sequence[EvalEntry], vectors: np.ndarray, cfg: MmragConfig) -> list[SearchResult]:
    """Search every entry's vector with the setting of ``cfg`` (``eval.target`` and ``search.*``), in entry order."""
    results = []
    for entry, vector in zip(entries, vectors):
        image_query = bool(entry.query_image)
        results.append(
            searcher.search_vector(
                vector, query_text=None if image_query else entry.query, image_query=image_query, target=cfg.eval.target
            )
        )
    return results


def hit_rows(run_id: str, entries: Sequence[EvalEntry], results: Sequence[SearchResult],
             relevant: dict[str, dict[str, list[str]]]) -> list[dict[str, Any]]:
    """One row per retrieved item (see ``hits.parquet`` in :mod:`mmrag.eval.results`), with its ``relevant`` flag."""
    rows = []
    for entry, result in zip(entries, results):
        for hit in result.hits:
            wanted = relevant.get(hit.target, {}).get(entry.id, ())
            rows.append(
                {
                    "run_id": run_id,
                    "query_id": entry.id,
                    "kind": entry.kind,
                    "target": hit.target,
                    "rank": hit.rank,
                    "id": hit.id,
                    "score": hit.score,
                    "similarity": hit.similarity,
                    "retrieval_score": hit.retrieval_score,
                    "doc_url": hit.doc_url,
                    "article_title": hit.article_title,
                    "section": hit.section,
                    "text": hit.text,
                    "src_url": hit.src_url,
                    "image_sha256": hit.image_sha256,
                    "image_status": hit.image_status,
                    "relevant": hit.id in wanted,
                    "labelled": entry.id in relevant.get(hit.target, {}),
                }
            )
    return rows


def score_entries(
    entries: Sequence[EvalEntry],
    entry_labels: dict[str, labels_module.EntryLabels],
    results: Sequence[SearchResult],
    *,
    targets: Sequence[str],
    cutoffs: Sequence[int],
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, list[str]]]]:
    """ranx scores: ``(metric names, per-query rows, aggregate rows, relevant ids per target and query)``.

    Only targets in ``targets`` are scored; an entry is scored on a target when its labels for it
    match at least one row.
    """
    names = metrics_module.metric_names(cutoffs)
    relevant = {
        t: {e.id: sorted(entry_labels[e.id].relevant[t]) for e in entries if entry_labels[e.id].relevant.get(t)}
        for t in targets
    }
    ranked = {t: {e.id: [h.id for h in r.hits_for(t)] for e, r in zip(entries, results)} for t in targets}
    queries = [{"id": e.id, "kind": e.kind, "query": e.query} for e in entries]
    per_query = metrics_module.per_query_rows(queries, relevant, ranked, names)
    return names, per_query, metrics_module.aggregate_rows(per_query, names), relevant


def _call(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def run_evaluation(
    entries: Sequence[EvalEntry],
    cfg: MmragConfig,
    *,
    searcher: Searcher | None = None,
    queries_path: str | Path | None = None,
    run_id: str | None = None,
    vectors: np.ndarray | None = None,
    step: Callable[..., Any] | None = None,
) -> EvalResult:
    """Evaluate one retrieval setting (from ``cfg``) on ``entries``; nothing is written (see :mod:`mmrag.eval.results`).

    ``vectors`` may hold ready query vectors from :func:`embed_queries` (the embeddable entries,
    same embedder), e.g. when a sweep evaluates several settings. ``step(name, fn, *args)`` runs
    each step (``open-index``, ``label``, ``embed-queries``, ``search``, ``score``); the Prefect
    flow passes one that runs them as tasks. Default: plain calls.
    """

    step = step or _call
    run_id = run_id or new_run_id()
    created_at = datetime.now(timezone.utc)
    searcher = searcher or Searcher(cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    snapshot = step("open-index", open_index, searcher, cfg)
    entry_labels = step("label", labels_module.label_entries, entries, snapshot.corpus)
    timings["labels"] = time.perf_counter() - t0

    usable = [e for e in entries if can_embed(searcher, e)]
    usable_ids = {e.id for e in usable}
    skipped = [{"query_id": e.id, "reason": f"embedder {searcher.embedder_name!r} cannot embed image queries"}
               for e in entries if e.id not in usable_ids]
    t0 = time.perf_counter()
    if vectors is None:
        base_dir = Path(queries_path).parent if queries_path else None
        vectors = step("embed-queries", embed_queries, searcher, usable, base_dir=base_dir)
    elif len(vectors) != len(usable):
        raise ValueError(f"{len(vectors)} query vectors for {len(usable)} embeddable entries")
    timings["embed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = step("search", search_entries, searcher, usable, vectors, cfg)
    timings["search"] = time.perf_counter() - t0
    targets = eval_targets(cfg)
    t0 = time.perf_counter()
    names, per_query, aggregates, relevant = step(
        "score", score_entries, usable, entry_labels, results, targets=targets, cutoffs=cfg.eval.cutoffs
    )
    timings["score"] = time.perf_counter() - t0
    unmatched = [
        {"query_id": m.entry_id, "target": m.target, "label": m.index, "reason": m.reason}
        for m in labels_module.unmatched_labels(entry_labels)
        if m.target in targets  # labels of a target this run does not search are not checked here
    ]
    return EvalResult(
        run_id=run_id,
        created_at=created_at,
        setting={**resolve_setting(cfg), "tables": snapshot.tables},
        config=cfg.model_dump(mode="json"),
        queries_path=str(queries_path) if queries_path else None,
        entries=list(entries),
        metrics=names,
        per_query=per_query,
        aggregates=aggregates,
        hits=hit_rows(run_id, usable, results, relevant),
        relevant=relevant,
        table_versions=snapshot.versions,
        corpus_fingerprint=corpus_fingerprint(snapshot.documents),
        evalset_fingerprint=evalset_fingerprint(entries),
        unmatched=unmatched,
        skipped=skipped,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
