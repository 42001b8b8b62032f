"""Export eval runs and eval sets in the formats other IR tools read: TREC run + qrels files, and BEIR.

Why: numbers a team cannot recompute elsewhere are hard to trust or compare. A TREC export lets
``trec_eval``, ``ir_measures`` or ``pytrec_eval`` recompute a run's metrics from the run directory
alone; a BEIR export hands the indexed corpus, queries and qrels to any BEIR-compatible retriever.

**TREC** (:func:`export_trec`), per target (``text``: chunk ids, ``image``: image row ids, as the
run retrieved and labelled them)::

    <target>.run     qid Q0 docid rank score tag      the run's hits, best first per query
    <target>.qrels   qid 0 docid 1                    qrels.json: every relevant row in the index

The default score is ``1/rank`` -- the score ranx evaluated (:func:`mmrag.eval.metrics.build_run`) --
because TREC tools re-sort by score and break ties by doc id: any other score (softmax scores
tie at float precision, rerankers may not be monotonic in the stored column) could reorder the
list. ``score="search"`` writes the hit's own ``score`` instead. A repeated id keeps its best rank
(as ranx does). Hits of queries without labels for a target are written too (TREC tools skip
queries the qrels do not name). Queries that retrieved nothing have no run lines: ranx counts them as zeros, so
evaluate with ``trec_eval -c`` (or average over the qrels' queries) to get the run's numbers.

**BEIR** (:func:`beir_from_index`, :func:`beir_from_run`, written by :func:`mmrag.eval.beir.write_beir`):
the corpus is the chunk table (``_id`` = chunk id, ``title`` = article title, ``text`` = chunk
text, ``metadata`` = document URL and section), queries are the eval set's text queries, and the
qrels are the chunk ids the labels resolve to (score 1). From an eval set the labels are matched
against the index now; from a run directory its own ``qrels.json`` is used and the chunk table is
read at the version the run read, so the ids agree with the run's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmrag.eval import labels as labels_module
from mmrag.eval.beir import write_beir
from mmrag.eval.evalset import EvalEntry, load_evalset
from mmrag.eval.results import RunRecord, load_run
from mmrag.pipelines.store import DOCUMENTS, IndexStore

TREC_SCORES = ("rank", "search")
CORPUS_COLUMNS = ["id", "doc_url", "article_title", "section", "section_path", "char_start", "char_end", "text"]


class ExportError(ValueError):
    """A run or index cannot be exported as asked (the message says why)."""


@dataclass
class RunTables:
    """What a TREC export reads from a run directory: its manifest, hit rows and ``{target: {query: relevant ids}}``."""

    record: RunRecord
    hits: list[dict[str, Any]]
    qrels: dict[str, dict[str, list[str]]]

    @property
    def targets(self) -> list[str]:
        """Targets with hits or qrels, in ``text``, ``image`` order."""
        present = {h["target"] for h in self.hits} | {t for t, q in self.qrels.items() if q}
        return [t for t in ("text", "image") if t in present]


# --------------------------------------------------------------------------- TREC (pure)


def _check_token(value: str, what: str) -> str:
    text = str(value)
    if not text or any(ch.isspace() for ch in text):
        raise ExportError(f"{what} {text!r} is empty or holds whitespace: TREC files are whitespace-separated")
    return text


def trec_run_lines(
    hits: Iterable[Mapping[str, Any]],
    *,
    target: str,
    tag: str,
    score: str = "rank",
) -> list[str]:
    """TREC run lines ``qid Q0 docid rank score tag`` of one target's hits, by query id then rank.

    ``score``: ``rank`` (``1/rank``, what ranx scored; default) or ``search`` (the hit's ``score``).
    A repeated doc id keeps its first (best) rank; ranks are renumbered 1..n per query.
    """
    if score not in TREC_SCORES:
        raise ExportError(f"unknown TREC score {score!r} (use {' or '.join(TREC_SCORES)})")
    tag = _check_token(tag, "run tag")
    rows = sorted((h for h in hits if h["target"] == target), key=lambda h: (str(h["query_id"]), int(h["rank"])))
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    position: dict[str, int] = {}
    for hit in rows:
        qid, doc = _check_token(hit["query_id"], "query id"), _check_token(hit["id"], "doc id")
        if (qid, doc) in seen:
            continue
        seen.add((qid, doc))
        position[qid] = position.get(qid, 0) + 1
        value = 1.0 / int(hit["rank"]) if score == "rank" else float(hit["score"])
        lines.append(f"{qid} Q0 {doc} {position[qid]} {value!r} {tag}")
    return lines


def trec_qrels_lines(relevant: Mapping[str, Iterable[str]]) -> list[str]:
    """TREC qrels lines ``qid 0 docid 1`` from ``{query id: relevant ids}`` (queries and ids sorted)."""
    return [
        f"{_check_token(qid, 'query id')} 0 {_check_token(doc, 'doc id')} 1"
        for qid in sorted(relevant)
        for doc in sorted(set(relevant[qid]))
    ]


# --------------------------------------------------------------------------- TREC (reading and writing)


def read_run_tables(run_dir: str | Path) -> RunTables:
    """Read a run directory's manifest, ``hits.parquet`` and ``qrels.json`` (raises ``ValueError`` when it is not one)."""
    record = load_run(run_dir)
    hits_path, qrels_file = record.path / "hits.parquet", record.path / "qrels.json"
    for path in (hits_path, qrels_file):
        if not path.is_file():
            raise ExportError(f"{record.path}: incomplete eval run directory (no {path.name})")
    hits = pq.read_table(hits_path).to_pylist()
    qrels = json.loads(qrels_file.read_text(encoding="utf-8"))
    return RunTables(record=record, hits=hits, qrels=qrels)


def export_trec(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    score: str = "rank",
    tag: str | None = None,
) -> dict[str, dict[str, Path]]:
    """Write ``<target>.run`` and ``<target>.qrels`` for each target of the run at ``run_dir``; returns ``{target: {"run", "qrels"}}``.

    ``tag`` defaults to the run id.
    """
    tables = read_run_tables(run_dir)
    tag = tag or tables.record.run_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for target in tables.targets:
        run_lines = trec_run_lines(tables.hits, target=target, tag=tag, score=score)
        qrels_lines = trec_qrels_lines(tables.qrels.get(target, {}))
        paths = {"run": out / f"{target}.run", "qrels": out / f"{target}.qrels"}
        paths["run"].write_text("".join(line + "\n" for line in run_lines), encoding="utf-8")
        paths["qrels"].write_text("".join(line + "\n" for line in qrels_lines), encoding="utf-8")
        written[target] = paths
    if not written:
        raise ExportError(f"{tables.record.path}: the run has no hits and no qrels to export")
    return written


# --------------------------------------------------------------------------- BEIR (pure)


def beir_corpus(chunks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """BEIR corpus records of chunk rows: ``_id`` chunk id, ``title`` article title, ``text``, ``metadata`` (url, section)."""
    return [
        {"_id": c["id"], "title": c.get("article_title") or "", "text": c.get("text") or "",
         "metadata": {"url": c.get("doc_url"), "section": c.get("section") or ""}}
        for c in sorted(chunks, key=lambda c: (c.get("doc_url") or "", c.get("char_start") or 0, c["id"]))
    ]


def beir_queries(entries: Sequence[EvalEntry], relevant: Mapping[str, Iterable[str]]) -> list[dict[str, Any]]:
    """BEIR query records (``_id``, ``text``, ``metadata.kind``) of the text entries that have relevant chunks."""
    return [{"_id": e.id, "text": e.query, "metadata": {"kind": e.kind}}
            for e in entries if not e.query_image and list(relevant.get(e.id, ()))]


def label_relevant_chunks(
    entries: Sequence[EvalEntry],
    chunks: Sequence[Mapping[str, Any]],
    doc_texts: Mapping[str, str | None],
) -> tuple[dict[str, list[str]], int]:
    """``({entry id: relevant chunk ids}, labels that matched nothing)`` by the eval labels' rules (text labels only)."""
    corpus = labels_module.build_corpus(chunks, (), doc_texts)
    text_entries = [e.model_copy(update={"relevant_images": []}) for e in entries if e.relevant]
    labels = labels_module.label_entries(text_entries, corpus)
    relevant = {qid: sorted(lab.relevant.get("text", ())) for qid, lab in labels.items() if lab.relevant.get("text")}
    return relevant, len(labels_module.unmatched_labels(labels))


# --------------------------------------------------------------------------- BEIR (reading the index, writing)


@dataclass
class BeirExport:
    """What a BEIR export wrote: paths, counts, and the labels that matched nothing."""

    paths: dict[str, Path]
    n_documents: int
    n_queries: int
    n_qrels: int
    unmatched_labels: int = 0
    table: str | None = None
    table_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"paths": {k: str(v) for k, v in self.paths.items()}, "documents": self.n_documents,
                "queries": self.n_queries, "qrels": self.n_qrels, "unmatched_labels": self.unmatched_labels,
                "table": self.table, "table_version": self.table_version}


def read_chunk_table(index_store: IndexStore, table_name: str, *, version: int | None = None) -> list[dict[str, Any]]:
    """Rows of the chunk table ``table_name`` (the columns BEIR and labels need), at ``version`` when given."""
    table = index_store.open_table(table_name)
    if version is not None:
        table.checkout(int(version))
    return table.to_lance().to_table(columns=CORPUS_COLUMNS).to_pylist()


def read_document_texts(index_store: IndexStore) -> dict[str, str | None]:
    """``{document url: parsed text}`` of the index's ``documents`` table (what span labels are located in)."""
    if not index_store.has_table(DOCUMENTS):
        raise ExportError(f"no documents table in {index_store.db_uri} (run `mmrag index SOURCE…` first)")
    rows = index_store.open_table(DOCUMENTS).to_lance().to_table(columns=["url", "text"]).to_pylist()
    return {r["url"]: r.get("text") for r in rows}


def _finish(out_dir: str | Path, chunks: list[dict[str, Any]], queries: list[dict[str, Any]],
            relevant: Mapping[str, Iterable[str]], **extra: Any) -> BeirExport:
    if not queries:
        raise ExportError("no query has a relevant chunk in the index: nothing to export")
    wanted = {q["_id"] for q in queries}
    qrels = {qid: sorted(set(ids)) for qid, ids in relevant.items() if qid in wanted}
    paths = write_beir(out_dir, beir_corpus(chunks), queries, qrels)
    return BeirExport(paths=paths, n_documents=len(chunks), n_queries=len(queries),
                      n_qrels=sum(len(v) for v in qrels.values()), **extra)


def beir_from_index(
    index_store: IndexStore,
    queries_path: str | Path,
    out_dir: str | Path,
    *,
    chunk_table: str,
) -> BeirExport:
    """Export the chunk table ``chunk_table`` as the corpus and the eval set at ``queries_path`` (labels matched now) as BEIR."""
    entries = load_evalset(queries_path)
    chunks = read_chunk_table(index_store, chunk_table)
    relevant, unmatched = label_relevant_chunks(entries, chunks, read_document_texts(index_store))
    return _finish(out_dir, chunks, beir_queries(entries, relevant), relevant, unmatched_labels=unmatched,
                   table=chunk_table)


def beir_from_run(index_store: IndexStore, run_dir: str | Path, out_dir: str | Path) -> BeirExport:
    """Export a run's text qrels and queries, with the chunk table at the version the run read, as BEIR."""
    record = load_run(run_dir)
    table = ((record.manifest.get("setting") or {}).get("tables") or {}).get("text")
    if not table:
        raise ExportError(f"{record.path}: the run did not search text chunks (BEIR exports text only)")
    version = (record.manifest.get("table_versions") or {}).get(table)
    qrels_file = record.path / "qrels.json"
    if not qrels_file.is_file():
        raise ExportError(f"{record.path}: incomplete eval run directory (no qrels.json)")
    relevant = json.loads(qrels_file.read_text(encoding="utf-8")).get("text", {})
    entries = load_evalset(record.path / "queries.jsonl")
    chunks = read_chunk_table(index_store, table, version=version)
    return _finish(out_dir, chunks, beir_queries(entries, relevant), relevant, table=table, table_version=version)
