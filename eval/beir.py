"""BEIR datasets in and out: read and write BEIR's layout, and import a BEIR dataset as pages plus an eval set.

Why: a team that has a BEIR-style benchmark of its own (or one of BEIR's public ones) can run it
through exactly the pipeline it evaluates -- ``mmrag index`` parses, chunks and embeds the
documents, ``mmrag eval run`` scores the queries against the qrels -- instead of a separate harness.

BEIR's layout (one folder, as ``beir.datasets.data_loader.GenericDataLoader`` reads it)::

    corpus.jsonl      {"_id": "doc1", "title": "…", "text": "…", "metadata": {…}}   one document a line
    queries.jsonl     {"_id": "q1", "text": "…", "metadata": {…}}                   one query a line
    qrels/test.tsv    query-id<TAB>corpus-id<TAB>score, after one header line      (also dev.tsv, train.tsv)

Import (:func:`import_beir`) writes one local HTML page per document -- ``<title>`` and ``<h1>``
from the title, the text in one ``<p>`` -- into a folder that ``mmrag index FOLDER`` indexes as
one page per document, and an eval set in our schema (:mod:`mmrag.eval.evalset`): one entry per
query with at least one qrel of score > 0, one text label per such document whose ``url`` is the
page's file name (labels are URL path suffixes, so the folder may be anywhere), the BEIR document
id and grade kept on the label as ``beir_id`` and ``grade``. Relevance is binary in our metrics
(grade > 0); documents are scored at chunk level, so a document split into several chunks counts
each chunk as relevant (with the default paragraph chunking, a document whose text is one
paragraph under the embedder's input limit is one chunk, and the numbers are BEIR's). Use a
database of its own for an imported dataset: labels name file names only, so a page with the
same name from another source in the same database would match too.

File names are the document id when it is a safe file name (letters, digits, ``.``, ``_``, ``-``),
otherwise a sanitised id plus 10 hex digits of its SHA-256 (:func:`page_file_names`); ids ending
in ``index`` get the hash too, because a trailing ``index.html`` is dropped when URLs are compared.

Reading is strict: a bad line (invalid JSON, missing ``_id``/``text``, duplicate id, a qrels row
without three tab-separated fields or with a non-integer score) raises :class:`BeirError` naming
the file and line. Qrels naming an unknown query or document are counted and left out, not fatal
(public BEIR sets have a few).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrag.eval.evalset import EvalEntry, dump_evalset
from mmrag.records import sha256_hex

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_HEADER = ("query-id", "corpus-id", "score")
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 80


class BeirError(ValueError):
    """A BEIR dataset folder is missing a file or has a malformed line (the message names file and line)."""


@dataclass
class BeirDataset:
    """A BEIR dataset read into memory: documents, queries and one split's qrels (``{query: {doc: score}}``)."""

    path: Path
    split: str
    corpus: list[dict[str, Any]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass
class BeirImport:
    """What :func:`import_beir` wrote, and what it left out (counts) with one warning line each."""

    pages_dir: Path
    evalset: Path
    n_documents: int
    n_queries: int
    n_labels: int
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"pages_dir": str(self.pages_dir), "evalset": str(self.evalset), "documents": self.n_documents,
                "queries": self.n_queries, "labels": self.n_labels, "skipped": self.skipped, "warnings": self.warnings}


# --------------------------------------------------------------------------- reading BEIR's layout


def qrels_path(dataset_dir: str | Path, split: str = "test") -> Path:
    """The qrels file of ``split`` in a BEIR folder: ``qrels/<split>.tsv``."""
    return Path(dataset_dir) / QRELS_DIR / f"{split}.tsv"


def _jsonl_records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise BeirError(f"{path}: not found (a BEIR folder holds {CORPUS_FILE}, {QUERIES_FILE} and {QRELS_DIR}/<split>.tsv)")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BeirError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(data, dict):
                raise BeirError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
            yield number, data


def _record_id(data: Mapping[str, Any], path: Path, number: int, seen: dict[str, int]) -> str:
    raw = data.get("_id")
    if raw is None or isinstance(raw, (dict, list, bool)) or not str(raw).strip():
        raise BeirError(f"{path}:{number}: _id: missing or empty")
    ident = str(raw).strip()
    if ident in seen:
        raise BeirError(f"{path}:{number}: _id: duplicate id {ident!r} (first on line {seen[ident]})")
    seen[ident] = number
    return ident


def _text_field(data: Mapping[str, Any], key: str, path: Path, number: int, *, required: bool) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BeirError(f"{path}:{number}: {key}: {'missing' if value is None else 'expected a string'}")
    return value


def read_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Documents of a BEIR ``corpus.jsonl``: ``{"_id", "title", "text"}`` dicts in file order (title defaults to "")."""
    path = Path(path)
    seen: dict[str, int] = {}
    docs = []
    for number, data in _jsonl_records(path):
        ident = _record_id(data, path, number, seen)
        docs.append({"_id": ident, "title": _text_field(data, "title", path, number, required=False).strip(),
                     "text": _text_field(data, "text", path, number, required=True)})
    return docs


def read_queries(path: str | Path) -> dict[str, str]:
    """Queries of a BEIR ``queries.jsonl``: ``{query id: text}`` in file order (an empty text is an error)."""
    path = Path(path)
    seen: dict[str, int] = {}
    queries = {}
    for number, data in _jsonl_records(path):
        ident = _record_id(data, path, number, seen)
        text = _text_field(data, "text", path, number, required=True).strip()
        if not text:
            raise BeirError(f"{path}:{number}: text: empty query")
        queries[ident] = text
    return queries


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV: ``{query id: {doc id: score}}``; the ``query-id corpus-id score`` header line is optional."""
    path = Path(path)
    if not path.is_file():
        raise BeirError(f"{path}: not found (qrels are {QRELS_DIR}/<split>.tsv; choose the split with --split)")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
            if number == 1 and tuple(f.lower() for f in fields) == QRELS_HEADER:
                continue
            if len(fields) != 3 or not fields[0] or not fields[1]:
                raise BeirError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                                f"got {len(fields)}")
            try:
                score = int(fields[2])
            except ValueError:
                raise BeirError(f"{path}:{number}: score: expected an integer, got {fields[2]!r}") from None
            qrels.setdefault(fields[0], {})[fields[1]] = score
    return qrels


def load_beir(dataset_dir: str | Path, *, split: str = "test") -> BeirDataset:
    """Read the BEIR folder ``dataset_dir`` (corpus, queries and the ``split`` qrels); raises :class:`BeirError`."""
    path = Path(dataset_dir)
    if not path.is_dir():
        raise BeirError(f"{path}: not a BEIR dataset folder (no such directory)")
    return BeirDataset(path=path, split=split, corpus=read_corpus(path / CORPUS_FILE),
                       queries=read_queries(path / QUERIES_FILE), qrels=read_qrels(qrels_path(path, split)))


# --------------------------------------------------------------------------- writing BEIR's layout


def qrels_lines(relevant: Mapping[str, Mapping[str, int] | Iterable[str]]) -> list[str]:
    """BEIR qrels TSV lines, header first: ``{query: {doc: score}}`` or ``{query: [doc ids]}`` (score 1)."""
    lines = ["\t".join(QRELS_HEADER)]
    for qid, docs in relevant.items():
        items = docs.items() if isinstance(docs, Mapping) else ((d, 1) for d in docs)
        lines.extend(f"{qid}\t{doc}\t{int(score)}" for doc, score in items)
    return lines


def write_beir(
    out_dir: str | Path,
    corpus: Iterable[Mapping[str, Any]],
    queries: Iterable[Mapping[str, Any]],
    relevant: Mapping[str, Mapping[str, int] | Iterable[str]],
    *,
    split: str = "test",
) -> dict[str, Path]:
    """Write BEIR's layout into ``out_dir``: corpus and query records as JSON Lines, qrels as TSV; returns the paths."""
    out = Path(out_dir)
    (out / QRELS_DIR).mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / CORPUS_FILE, "queries": out / QUERIES_FILE, "qrels": qrels_path(out, split)}
    for key, records in (("corpus", corpus), ("queries", queries)):
        with paths[key].open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
    paths["qrels"].write_text("\n".join(qrels_lines(relevant)) + "\n", encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- BEIR -> pages + eval set (pure)


def page_file_names(doc_ids: Iterable[str]) -> dict[str, str]:
    """``{doc id: file name}``: the id plus ``.html`` when it is a safe name, else sanitised + a hash (unique, case-insensitively too)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for doc_id in doc_ids:
        stem = SAFE_NAME.sub("_", doc_id).strip("._")[:MAX_STEM]
        if stem != doc_id or not stem or stem.lower().endswith("index") or stem.lower() in taken:
            stem = f"{stem or 'doc'}-{sha256_hex(doc_id)[:10]}"
        taken.add(stem.lower())
        names[doc_id] = f"{stem}.html"
    return names


def page_html(doc_id: str, title: str, text: str) -> str:
    """One BEIR document as a standalone HTML page: ``<title>`` and ``<h1>`` from the title, the text in one ``<p>``."""
    esc = html.escape
    heading = f"<h1>{esc(title)}</h1>\n" if title else ""
    return (
        "<!doctype html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title or doc_id)}</title>\n<meta name=\"beir-id\" content=\"{esc(doc_id)}\">\n</head>\n"
        f"<body>\n<article>\n{heading}<p>{esc(text)}</p>\n</article>\n</body>\n</html>\n"
    )


def beir_entries(
    dataset: BeirDataset,
    file_names: Mapping[str, str],
    *,
    kind: str = "beir",
    min_chars: int = 30,
) -> tuple[list[EvalEntry], dict[str, int], list[str]]:
    """Eval entries of a BEIR dataset: ``(entries, skipped counts, warnings)``.

    One entry per query (queries.jsonl order) with at least one qrel of score > 0 on a document of
    the corpus; one label per such document: ``{"url": file name, "beir_id": doc id, "grade": score}``.
    Documents with fewer than ``min_chars`` characters of text are counted (the paragraph chunker
    drops such blocks, so labels on them match nothing).
    """
    docs = {d["_id"]: d for d in dataset.corpus}
    skipped = {"queries_without_relevant": 0, "qrels_unknown_query": 0, "qrels_unknown_document": 0,
               "qrels_not_relevant": 0, "short_documents": 0}
    for qid, rels in dataset.qrels.items():
        if qid not in dataset.queries:
            skipped["qrels_unknown_query"] += len(rels)
    entries: list[EvalEntry] = []
    for qid, text in dataset.queries.items():
        labels = []
        for doc_id, score in dataset.qrels.get(qid, {}).items():
            if doc_id not in docs:
                skipped["qrels_unknown_document"] += 1
            elif score <= 0:
                skipped["qrels_not_relevant"] += 1
            else:
                labels.append({"url": file_names[doc_id], "beir_id": doc_id, "grade": score})
        if not labels:
            skipped["queries_without_relevant"] += 1
            continue
        entries.append(EvalEntry.model_validate({"id": qid, "query": text, "kind": kind, "relevant": labels}))
    skipped["short_documents"] = sum(1 for d in dataset.corpus if len(d["text"].strip()) < min_chars)
    warnings = []
    if skipped["qrels_unknown_query"]:
        warnings.append(f"{skipped['qrels_unknown_query']} qrels name queries missing from {QUERIES_FILE}; left out")
    if skipped["qrels_unknown_document"]:
        warnings.append(f"{skipped['qrels_unknown_document']} qrels name documents missing from {CORPUS_FILE}; left out")
    if skipped["short_documents"]:
        warnings.append(f"{skipped['short_documents']} documents have fewer than {min_chars} characters of text: paragraph "
                        f"chunking gives them no chunk, so labels on them match nothing (see `mmrag eval check`)")
    return entries, skipped, warnings


# --------------------------------------------------------------------------- the import (file writing at the edge)


def write_pages(corpus: Sequence[Mapping[str, Any]], file_names: Mapping[str, str], pages_dir: str | Path) -> Path:
    """Write one HTML page per document into ``pages_dir`` (created; same-named files are replaced); returns it."""
    out = Path(pages_dir)
    out.mkdir(parents=True, exist_ok=True)
    for doc in corpus:
        (out / file_names[doc["_id"]]).write_text(page_html(doc["_id"], doc["title"], doc["text"]), encoding="utf-8")
    return out


def default_pages_dir(evalset_path: str | Path) -> Path:
    """Where the pages go when not told: ``<eval set stem>-pages/`` beside the eval set."""
    path = Path(evalset_path)
    return path.with_name(f"{path.stem}-pages")


def import_beir(
    dataset_dir: str | Path,
    evalset_path: str | Path,
    *,
    pages_dir: str | Path | None = None,
    split: str = "test",
    kind: str = "beir",
    min_chars: int = 30,
) -> BeirImport:
    """Read the BEIR folder ``dataset_dir``, write its documents as pages and its queries + qrels as an eval set.

    ``pages_dir`` defaults to :func:`default_pages_dir`. Raises :class:`BeirError` for a malformed
    dataset or one that yields no query with a relevant document.
    """
    dataset = load_beir(dataset_dir, split=split)
    if not dataset.corpus:
        raise BeirError(f"{Path(dataset_dir) / CORPUS_FILE}: no documents")
    names = page_file_names(d["_id"] for d in dataset.corpus)
    entries, skipped, warnings = beir_entries(dataset, names, kind=kind, min_chars=min_chars)
    if not entries:
        raise BeirError(f"{qrels_path(dataset_dir, split)}: no query has a relevant document in the corpus")
    pages = write_pages(dataset.corpus, names, pages_dir or default_pages_dir(evalset_path))
    ours = set(names.values())
    others = [p.name for p in pages.glob("*.htm*") if p.name not in ours]
    if others:
        warnings.append(f"{pages} also holds {len(others)} other HTML files (e.g. {others[0]}); indexing the folder indexes them too")
    path = dump_evalset(entries, evalset_path)
    return BeirImport(pages_dir=pages, evalset=path, n_documents=len(dataset.corpus), n_queries=len(entries),
                      n_labels=sum(len(e.relevant) for e in entries), skipped=skipped, warnings=warnings)
