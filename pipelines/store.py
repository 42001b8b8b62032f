"""LanceDB storage: table schemas, upserts keyed by stable ids, version tags, Parquet export.

Tables (one database at a URI):

- ``documents``: one row per page URL: fetch status, HTTP code, error, ETag/Last-Modified, content hash.
- ``chunks__<embedder>__<chunking>``: text chunks with their vectors (one table per embedder and
  chunking setting, since vector sizes and chunk boundaries differ).
- ``images__<embedder>``: one row per place an image appears, with caption, OCR text, status and
  vector (``vector_source``: ``pixels`` or ``text_surrogate``); BLIP-2 tables also keep every query
  embedding of an image in ``vector_multi``.
- ``image_blobs``: image bytes and thumbnails, once per distinct content (sha256).
- ``image_captions``: captions a vision model generated (caption enrichment), one row per image
  sha256, model and prompt, with that provenance (``mmrag.pipelines.generate``); an image row keeps the
  one it uses in ``generated_caption``, apart from the page's own ``caption``.
- ``runs``: one row per index run: config, summary and the table versions it produced.
- ``eval_history``: one row per eval run (metrics, fingerprints, setting), in the index database or
  the one ``eval.history_uri`` names; new metric columns are added as they appear.

This module is the one storage gateway: every table's name rule and schema, opening a database
(:func:`open_existing` refuses a missing one), reading pinned versions and tags. Nothing else in
mmrag calls ``lancedb.connect``.

Writes are ``merge_insert`` upserts keyed by ``id`` (``sha256`` for blobs), so reruns are idempotent.

Schema evolution: a table written by an older version lacks columns added since (e.g. ``published``).
:meth:`IndexStore.upsert` first adds every missing nullable column to the stored table (LanceDB
``add_columns`` with Arrow fields: existing rows read null), so an old database keeps working and
loses nothing; reads of columns a table does not have yet return nulls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lancedb
from lancedb.index import FTS
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DOCUMENTS = "documents"
IMAGE_BLOBS = "image_blobs"
RUNS = "runs"
IMAGE_CAPTIONS = "image_captions"
EVAL_HISTORY = "eval_history"
#: Column of the per-image query embeddings in ``images__blip2`` tables (see :func:`images_schema`).
MULTIVECTOR = "vector_multi"
IN_LIST_BATCH = 500


def chunks_table_name(embedder: str, chunking_key: str) -> str:
    """Name of the chunk table for one embedder and chunking setting."""
    return f"chunks__{embedder}__{chunking_key}"


def images_table_name(embedder: str) -> str:
    """Name of the image table for one embedder."""
    return f"images__{embedder}"


def content_table_name(target: str, embedder: str, chunking_key: str) -> str:
    """The table a search ``target`` (``text`` / ``images``) reads for one embedder and chunking setting."""
    return chunks_table_name(embedder, chunking_key) if target == "text" else images_table_name(embedder)


def database_exists(db_uri: str) -> bool:
    """Whether a database is at ``db_uri``: a local directory that exists, or any remote URI (checked on use)."""
    if "://" in db_uri and not db_uri.startswith("file://"):
        return True
    return Path(db_uri.removeprefix("file://")).is_dir()


def open_existing(db_uri: str) -> "IndexStore":
    """The database at ``db_uri``; raises ``FileNotFoundError`` (one line, says what to run) when there is none.

    Readers (search, eval, reports, status) use this so that a mistyped ``--db`` is an error instead
    of a new empty database.
    """
    store = open_if_exists(db_uri)
    if store is None:
        raise FileNotFoundError(f"no database at {db_uri} (run `mmrag index SOURCE…` first)")
    return store


def open_if_exists(db_uri: str) -> "IndexStore | None":
    """The database at ``db_uri``, or None when there is none (for readers to whom no index is no error)."""
    return IndexStore(db_uri) if database_exists(db_uri) else None


def fts_column(target: str, column_names: Sequence[str]) -> str:
    """The column the full-text index of a ``target`` (``text`` / ``images``) table covers: what is embedded for
    it (chunks: ``search_text``, images: the caption surrogate), or the older column a table written before has."""
    if target == "text":
        return "search_text" if "search_text" in column_names else "text"
    return "surrogate_text" if "surrogate_text" in column_names else "caption"


def fts_index(table, column: str):
    """The native full-text index of ``table`` on exactly ``column`` (an ``IndexConfig``), or None."""
    return next((i for i in table.list_indices() if i.index_type == "FTS" and list(i.columns) == [column]), None)


def column_index(table, column: str = "vector"):
    """The LanceDB index (an ``IndexConfig``: name, ``index_type`` such as ``IvfSq``) on ``column``, or None."""
    for index in table.list_indices():
        if column in index.columns:
            return index
    return None


def sql_quote(value: str) -> str:
    """A SQL string literal for LanceDB filters (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    """``column IN ('a', 'b')`` with quoted values."""
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def documents_schema() -> pa.Schema:
    """Schema of the ``documents`` table."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("url", pa.string(), nullable=False),
            pa.field("origin", pa.string()),
            pa.field("final_url", pa.string()),
            pa.field("canonical_url", pa.string()),
            pa.field("title", pa.string()),
            pa.field("published", pa.date32()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("http_status", pa.int32()),
            pa.field("error", pa.string()),
            pa.field("content_type", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("etag", pa.string()),
            pa.field("last_modified", pa.string()),
            pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
            pa.field("n_chunks", pa.int32()),
            pa.field("n_images", pa.int32()),
            pa.field("parse_warnings", pa.list_(pa.string())),
            pa.field("text", pa.large_string()),
            pa.field("run_id", pa.string()),
        ]
    )


def chunks_schema(dimension: int) -> pa.Schema:
    """Schema of a ``chunks__*`` table with ``dimension``-wide vectors."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_url", pa.string(), nullable=False),
            pa.field("article_title", pa.string()),
            pa.field("published", pa.date32()),
            pa.field("section_path", pa.list_(pa.string())),
            pa.field("section", pa.string()),
            pa.field("position", pa.int32()),
            pa.field("char_start", pa.int32()),
            pa.field("char_end", pa.int32()),
            pa.field("token_count", pa.int32()),
            pa.field("truncated", pa.bool_()),
            pa.field("text", pa.string()),
            pa.field("search_text", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("strategy", pa.string()),
            pa.field("embedder", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
            pa.field("run_id", pa.string()),
        ]
    )


def images_schema(dimension: int, *, multivector: bool = False) -> pa.Schema:
    """Schema of an ``images__*`` table with ``dimension``-wide vectors.

    ``multivector`` adds :data:`MULTIVECTOR` (``vector_multi``): a variable-length list of
    ``dimension``-wide vectors per row (BLIP-2's query embeddings), searched by LanceDB's
    multivector (late-interaction) search.
    """
    schema = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_url", pa.string(), nullable=False),
            pa.field("article_title", pa.string()),
            pa.field("published", pa.date32()),
            pa.field("src_url", pa.string()),
            pa.field("image_sha256", pa.string()),
            pa.field("position", pa.int32()),
            pa.field("section_path", pa.list_(pa.string())),
            pa.field("section", pa.string()),
            pa.field("caption", pa.string()),
            pa.field("caption_source", pa.string()),
            pa.field("caption_missing", pa.bool_()),
            pa.field("alt", pa.string()),
            pa.field("title", pa.string()),
            pa.field("in_figure", pa.bool_()),
            pa.field("status", pa.string()),
            pa.field("http_status", pa.int32()),
            pa.field("error", pa.string()),
            pa.field("format", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("is_raster", pa.bool_()),
            pa.field("ocr_text", pa.string()),
            pa.field("ocr_pending", pa.bool_()),  # images.ocr_deferred: committed before its OCR text (enrichment fills it)
            pa.field("generated_caption", pa.string()),
            pa.field("nearby_text", pa.string()),
            pa.field("surrogate_text", pa.string()),
            pa.field("surrogate_hash", pa.string()),
            pa.field("vector_source", pa.string()),
            pa.field("embedder", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
            pa.field("run_id", pa.string()),
        ]
    )
    if multivector:
        schema = schema.insert(schema.get_field_index("vector") + 1,
                               pa.field(MULTIVECTOR, pa.list_(pa.list_(pa.float32(), dimension))))
    return schema


def image_blobs_schema() -> pa.Schema:
    """Schema of the ``image_blobs`` table (bytes stored once per sha256)."""
    return pa.schema(
        [
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("format", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("frames", pa.int32()),
            pa.field("is_raster", pa.bool_()),
            pa.field("byte_size", pa.int64()),
            pa.field("data", pa.large_binary()),
            pa.field("thumbnail_png", pa.binary()),
            pa.field("raster_png", pa.large_binary()),
        ]
    )


def runs_schema() -> pa.Schema:
    """Schema of the ``runs`` table."""
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("kind", pa.string()),
            pa.field("started_at", pa.timestamp("us", tz="UTC")),
            pa.field("finished_at", pa.timestamp("us", tz="UTC")),
            pa.field("sources", pa.list_(pa.string())),
            pa.field("config_json", pa.string()),
            pa.field("summary_json", pa.string()),
            pa.field("table_versions_json", pa.string()),
        ]
    )


class IndexStore:
    """The LanceDB database at ``db_uri`` and the operations the pipeline needs on it."""

    def __init__(self, db_uri: str):
        if "://" not in db_uri:
            Path(db_uri).mkdir(parents=True, exist_ok=True)
        self.db_uri = db_uri
        self.db = lancedb.connect(db_uri)

    # -- tables -----------------------------------------------------------------------------

    def table_names(self) -> list[str]:
        """Names of all tables, sorted (following pagination for remote databases)."""
        names: list[str] = []
        page_token = None
        while True:
            response = self.db.list_tables(page_token=page_token)
            names.extend(response.tables)
            page_token = response.page_token
            if not page_token:
                return sorted(names)

    def has_table(self, name: str) -> bool:
        """Whether table ``name`` exists."""
        return name in self.table_names()

    def open_table(self, name: str):
        """The LanceDB table ``name`` (raises ``ValueError`` naming the known tables when missing)."""
        if not self.has_table(name):
            raise ValueError(f"no table {name!r} in {self.db_uri}; tables: {', '.join(self.table_names()) or '(none)'}")
        return self.db.open_table(name)

    def open_version(self, name: str, version: int | str | None = None):
        """Table ``name`` checked out at ``version`` (a number or a tag; None: the latest), read-only when pinned."""
        table = self.open_table(name)
        if version is not None:
            table.checkout(int(version) if str(version).isdigit() else version)
        return table

    def read_table(self, name: str, columns: Sequence[str] | None = None, where: str | None = None,
                   version: int | str | None = None) -> pa.Table:
        """Rows of ``name`` (only ``columns``; those matching the SQL ``where``), at ``version`` when given."""
        return self.open_version(name, version).to_lance().to_table(columns=list(columns) if columns else None,
                                                                    filter=where)

    def ensure_fts_index(self, name: str, column: str) -> str:
        """Give table ``name`` a native full-text (BM25) index on ``column`` covering every row; returns its name.

        Created when missing; rows added since it was built are folded in (``optimize_indices``). Called
        when content tables are written (the index flow) and maintained, never at query time, so a search
        or an eval on a pinned version finds it there and modifies nothing. Rows not yet in the index are
        still found, by a flat scan.
        """
        table = self.open_table(name)
        existing = fts_index(table, column)
        if existing is None:
            table.create_index(column, config=FTS(), replace=True)
            return f"{column}_idx"
        index_name = existing.name
        stats = table.index_stats(index_name)
        if stats is not None and stats.num_unindexed_rows:
            table.to_lance().optimize.optimize_indices(index_names=[index_name])
        return index_name

    def ensure_table(self, name: str, schema: pa.Schema):
        """Open table ``name``, creating it empty with ``schema`` when absent (an existing table keeps its own schema)."""
        if self.has_table(name):
            return self.db.open_table(name)
        return self.db.create_table(name, schema=schema, exist_ok=True)

    # -- reads ------------------------------------------------------------------------------

    def read_where(self, name: str, columns: Sequence[str], column: str, values: Iterable[str],
                   where: str | None = None) -> pa.Table:
        """Rows of ``name`` whose ``column`` is one of ``values`` (only ``columns``), and that match the SQL
        ``where`` when given; empty if no table."""
        values = list(dict.fromkeys(values))
        if not values or not self.has_table(name):
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        dataset = self.db.open_table(name).to_lance()
        stored = [c for c in columns if c in dataset.schema.names]
        parts = [
            dataset.to_table(columns=stored, filter=sql_in(column, values[i : i + IN_LIST_BATCH])
                             + (f" AND ({where})" if where else ""))
            for i in range(0, len(values), IN_LIST_BATCH)
        ]
        table = pa.concat_tables(parts)
        for position, missing in enumerate(columns):
            if missing not in stored:  # a column added after this table was written: null for every row
                table = table.add_column(position, missing, pa.nulls(table.num_rows))
        return table

    def document_states(self, urls: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored ``documents`` rows for ``urls``, keyed by url."""
        columns = ["url", "status", "title", "canonical_url", "content_hash", "etag", "last_modified",
                   "indexed_at", "n_chunks", "n_images", "text"]
        rows = self.read_where(DOCUMENTS, columns, "url", urls).to_pylist()
        return {row["url"]: row for row in rows}

    def ids_by_doc(self, name: str, doc_urls: Iterable[str], extra: Sequence[str] = ()) -> dict[str, dict[str, dict]]:
        """For table ``name``: ``{doc_url: {id: row}}`` with ``extra`` columns, for the given documents."""
        table = self.read_where(name, ["id", "doc_url", *extra], "doc_url", doc_urls)
        out: dict[str, dict[str, dict]] = {}
        for row in table.to_pylist():
            out.setdefault(row["doc_url"], {})[row["id"]] = row
        return out

    def document_rows(self, urls: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Whole stored ``documents`` rows for ``urls``, keyed by url."""
        rows = self.read_where(DOCUMENTS, documents_schema().names, "url", urls).to_pylist()
        return {row["url"]: row for row in rows}

    def documents_by_origin(self, origins: Iterable[str]) -> list[dict[str, Any]]:
        """``url``, ``origin`` and ``status`` of the documents whose ``origin`` is one of ``origins``."""
        return self.read_where(DOCUMENTS, ["url", "origin", "status"], "origin", origins).to_pylist()

    def vectors_by_key(self, name: str, key: str, values: Iterable[str], where: str | None = None) -> dict[str, Any]:
        """``{value: vector}`` for rows of ``name`` whose ``key`` column is one of ``values`` (first row wins),
        among the rows matching the SQL ``where`` when given."""
        values = list(dict.fromkeys(v for v in values if v))
        if not values or not self.has_table(name):
            return {}
        table = self.read_where(name, [key, "vector"], key, values, where)
        keys = table.column(key).to_pylist()
        vectors = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if not keys:
            return {}
        matrix = vectors.reshape(len(keys), -1)
        out: dict[str, Any] = {}
        for i, k in enumerate(keys):
            out.setdefault(k, matrix[i])
        return out

    def multivectors_by_key(self, name: str, key: str, values: Iterable[str], where: str | None = None) -> dict[str, Any]:
        """``{value: (n, d) float32 array}`` of the ``vector_multi`` column, like :meth:`vectors_by_key`
        (rows without one are skipped; empty when the table has no such column)."""
        values = list(dict.fromkeys(v for v in values if v))
        if not values or not self.has_table(name) or MULTIVECTOR not in self.db.open_table(name).schema.names:
            return {}
        table = self.read_where(name, [key, MULTIVECTOR], key, values, where)
        out: dict[str, Any] = {}
        for k, multi in zip(table.column(key).to_pylist(), table.column(MULTIVECTOR).to_pylist()):
            if multi and k not in out:
                out[k] = np.asarray(multi, dtype=np.float32)
        return out

    def ocr_texts_by_sha(self, sha256s: Iterable[str]) -> dict[str, str]:
        """Stored OCR text by image sha256, from every ``images__*`` table that has it (only rows where OCR ran:
        ``""`` means it ran and found no text)."""
        wanted = set(sha256s)
        found: dict[str, str] = {}
        for name in self.table_names():
            if not wanted or not name.startswith("images__") or "ocr_text" not in self.db.open_table(name).schema.names:
                continue
            rows = self.read_where(name, ["image_sha256", "ocr_text"], "image_sha256", wanted, "ocr_text IS NOT NULL")
            for sha, text in zip(rows.column("image_sha256").to_pylist(), rows.column("ocr_text").to_pylist()):
                found.setdefault(sha, text)
            wanted -= set(found)
        return found

    def _with_ocr_pending(self, name: str):
        """Image table ``name`` opened, or None when it does not exist or predates the ``ocr_pending`` column."""
        if not self.has_table(name):
            return None
        table = self.db.open_table(name)
        return table if "ocr_pending" in table.schema.names else None

    def ocr_pending_rows(self, name: str) -> list[dict[str, Any]]:
        """The rows of image table ``name`` committed before their OCR (``ocr_pending``), every column but the
        vectors; none when the table does not exist or predates the column."""
        table = self._with_ocr_pending(name)
        if table is None:
            return []
        columns = [c for c in table.schema.names if c not in ("vector", MULTIVECTOR)]
        return self.read_table(name, columns, where="ocr_pending = true").to_pylist()

    def ocr_pending_count(self, name: str) -> int:
        """How many rows of image table ``name`` wait for their OCR, counted without reading them."""
        table = self._with_ocr_pending(name)
        return 0 if table is None else table.count_rows("ocr_pending = true")

    def content_table_names(self) -> list[str]:
        """The ``chunks__*`` and ``images__*`` tables (every embedder and chunking setting)."""
        return [n for n in self.table_names() if n.startswith(("chunks__", "images__"))]

    def delete_document_content(self, urls: Iterable[str]) -> dict[str, int]:
        """Delete the chunk and image rows of ``urls`` from every content table; returns rows deleted per table."""
        urls = list(dict.fromkeys(urls))
        deleted: dict[str, int] = {}
        if not urls:
            return deleted
        for name in self.content_table_names():
            table = self.db.open_table(name)
            before = table.count_rows()
            for i in range(0, len(urls), IN_LIST_BATCH):
                table.delete(sql_in("doc_url", urls[i : i + IN_LIST_BATCH]))
            deleted[name] = before - table.count_rows()
        return deleted

    def referenced_image_shas(self) -> set[str]:
        """Every ``image_sha256`` some ``images__*`` row points at."""
        shas: set[str] = set()
        for name in self.table_names():
            if name.startswith("images__"):
                column = self.db.open_table(name).to_lance().to_table(columns=["image_sha256"]).column("image_sha256")
                shas.update(s for s in column.to_pylist() if s)
        return shas

    def existing_keys(self, name: str, key: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` are present in column ``key`` of table ``name``."""
        return set(self.read_where(name, [key], key, values).column(key).to_pylist())

    # -- writes -----------------------------------------------------------------------------

    def upsert(self, name: str, rows: pa.Table, *, key: str = "id", update: bool = True) -> int:
        """Insert ``rows`` into ``name`` (created if needed), replacing rows with the same ``key`` when ``update``.

        Returns the number of rows given.
        """
        if rows.num_rows == 0:
            return 0
        table = self.ensure_table(name, rows.schema)
        if not set(rows.schema.names) <= set(table.schema.names) and self.add_missing_columns(name, rows.schema):
            table = self.db.open_table(name)
        merge = table.merge_insert(key)
        if update:
            merge = merge.when_matched_update_all()
        merge.when_not_matched_insert_all().execute(rows)
        return rows.num_rows

    def add_missing_columns(self, name: str, schema: pa.Schema) -> list[str]:
        """Add the fields of ``schema`` that table ``name`` lacks (nulls in existing rows); returns their names.

        Only nullable fields can be added this way; a missing non-nullable one raises ``ValueError``
        naming it, before anything is written.
        """
        table = self.db.open_table(name)
        stored = set(table.schema.names)
        missing = [f for f in schema if f.name not in stored]
        if not missing:
            return []
        required = [f.name for f in missing if not f.nullable]
        if required:
            raise ValueError(f"table {name!r} lacks non-nullable column(s) {', '.join(required)}; it cannot be evolved in place")
        table.add_columns(missing)
        return [f.name for f in missing]

    def set_where_in(self, name: str, column: str, values: Mapping[Any, Iterable[str]], *, key: str = "doc_url",
                     field: pa.Field | None = None) -> int:
        """Set ``column`` of table ``name`` to each value of ``values`` (``{value: keys}``) on rows whose ``key`` is in keys.

        ``field`` adds the column first when the table lacks it (even with nothing to set). Returns
        the number of rows updated.
        """
        if not self.has_table(name):
            return 0
        if field is not None:
            self.add_missing_columns(name, pa.schema([field]))
        if not values:
            return 0
        table = self.db.open_table(name)
        updated = 0
        for value, keys in values.items():
            keys = list(dict.fromkeys(keys))
            for i in range(0, len(keys), IN_LIST_BATCH):
                result = table.update(where=sql_in(key, keys[i : i + IN_LIST_BATCH]), values={column: value})
                updated += result.rows_updated
        return updated

    def delete_where_in(self, name: str, column: str, values: Iterable[str]) -> int:
        """Delete rows of ``name`` whose ``column`` is one of ``values``; returns how many were asked for."""
        values = list(dict.fromkeys(values))
        if not values or not self.has_table(name):
            return 0
        table = self.db.open_table(name)
        for i in range(0, len(values), IN_LIST_BATCH):
            table.delete(sql_in(column, values[i : i + IN_LIST_BATCH]))
        return len(values)

    # -- versions, runs, export -------------------------------------------------------------

    def current_versions(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Latest version of each table (all tables by default)."""
        names = self.table_names() if names is None else [n for n in names if self.has_table(n)]
        return {name: int(self.db.open_table(name).version) for name in names}

    def tag_versions(self, tag: str, names: Iterable[str]) -> dict[str, int]:
        """Tag the current version of each table in ``names`` with ``tag``; returns the tagged versions."""
        tagged = {}
        for name, version in self.current_versions(names).items():
            table = self.db.open_table(name)
            if tag not in table.tags.list():
                table.tags.create(tag, version)
            tagged[name] = version
        return tagged

    def record_run(self, row: dict[str, Any]) -> None:
        """Append a row to ``runs`` (``config``/``summary``/``table_versions`` dicts serialised as JSON)."""
        record = {
            "run_id": row["run_id"],
            "kind": row.get("kind", "index"),
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "sources": list(row.get("sources", [])),
            "config_json": json.dumps(row.get("config", {}), default=str, sort_keys=True),
            "summary_json": json.dumps(row.get("summary", {}), default=str, sort_keys=True),
            "table_versions_json": json.dumps(row.get("table_versions", {}), sort_keys=True),
        }
        self.upsert(RUNS, pa.Table.from_pylist([record], schema=runs_schema()), key="run_id")

    def last_run(self) -> dict[str, Any] | None:
        """The most recent row of ``runs`` with its JSON columns decoded, or None."""
        if not self.has_table(RUNS):
            return None
        rows = self.db.open_table(RUNS).to_arrow().to_pylist()
        if not rows:
            return None
        row = max(rows, key=lambda r: r["finished_at"])
        for column in ("config_json", "summary_json", "table_versions_json"):
            row[column.removesuffix("_json")] = json.loads(row.pop(column) or "{}")
        return row

    def table_stats(self) -> list[dict[str, Any]]:
        """Per table: rows, current version, number of versions, tags, embedders present."""
        stats = []
        for name in self.table_names():
            table = self.db.open_table(name)
            schema_names = table.schema.names
            embedders: list[str] = []
            if "embedder" in schema_names:
                column = table.to_lance().to_table(columns=["embedder"]).column("embedder")
                embedders = sorted({e for e in column.to_pylist() if e})
            stats.append(
                {
                    "table": name,
                    "rows": table.count_rows(),
                    "version": int(table.version),
                    "versions": len(table.list_versions()),
                    "tags": sorted(table.tags.list()),
                    "embedders": embedders,
                }
            )
        return stats

    def export_parquet(self, out_dir: str | Path, names: Sequence[str] | None = None, version: int | str | None = None) -> dict[str, Path]:
        """Write each table (or the given ones) to ``out_dir/<table>.parquet``.

        ``version`` is a version number or a tag; it is applied to every exported table.
        Image bytes are exported too (``image_blobs``); returns table -> file written.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for name in names or self.table_names():
            table = self.open_version(name, version)
            path = out / f"{name}.parquet"
            pq.write_table(table.to_arrow(), path)
            written[name] = path
        return written

    # -- OCR results (ocr_results) --------------------------------------------------------

    def ocr_results(self, sha256s: Iterable[str], engine: str) -> dict[str, dict[str, Any]]:
        """``{sha256: {text, error, seconds, created_at}}`` of the ``ocr_results`` rows of ``engine`` (see
        :func:`mmrag.pipelines.ocr.engine_key`) for ``sha256s``; empty when none is stored. An image read more
        than once under one key (a stored error read again) has a row per reading: the latest counts."""
        ids = [ocr_result_id(sha, engine) for sha in dict.fromkeys(sha256s)]
        if not ids or not self.has_table(OCR_RESULTS):
            return {}
        rows = self.read_where(OCR_RESULTS, ["image_sha256", "text", "error", "seconds", "created_at"], "id", ids)
        latest: dict[str, dict[str, Any]] = {}
        for row in sorted(rows.to_pylist(), key=lambda r: r["created_at"] or _EPOCH):
            latest[row["image_sha256"]] = row
        return latest

    def save_ocr_results(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append ``ocr_results`` rows (``image_sha256``, ``engine``, ``text``, ``error``, ``seconds``, ``created_at``);
        returns the number given. Appended, not merged on ``id``: a run saves a few results at a time, and a merge
        reads the table each time, so the saves of one index cost time quadratic in its images (380 saves of two
        rows: 10.6 CPU s merged, ~1.3 appended). :meth:`ocr_results` takes the latest row of an id."""
        if not rows:
            return 0
        table = pa.Table.from_pylist([{**row, "id": ocr_result_id(row["image_sha256"], row["engine"])} for row in rows],
                                     schema=ocr_results_schema())
        self.ensure_table(OCR_RESULTS, table.schema).add(table)
        return table.num_rows

    # -- eval history ---------------------------------------------------------------------

    def append_history(self, row: Mapping[str, Any], column_types: Mapping[str, pa.DataType] | None = None) -> None:
        """Append ``row`` to ``eval_history``, adding any new columns (older rows read null for them);
        ``column_types`` gives the type of columns :func:`eval_history_schema` would not guess."""
        schema = eval_history_schema(row, column_types)
        table = self.ensure_table(EVAL_HISTORY, schema)
        missing = [f for f in schema if f.name not in table.schema.names]
        if missing:
            table.add_columns(pa.schema(missing))
        record = {name: row.get(name) for name in table.schema.names}
        table.add(pa.Table.from_pylist([record], schema=table.schema))

    def read_history(self) -> pa.Table | None:
        """The whole ``eval_history`` table, or None when no eval run was recorded."""
        return self.db.open_table(EVAL_HISTORY).to_arrow() if self.has_table(EVAL_HISTORY) else None


def image_captions_schema() -> pa.Schema:
    """``image_captions``: one generated caption per (image sha256, model, prompt), with its provenance."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("model", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("prompt_sha256", pa.string()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("seconds", pa.float64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ])


#: ``eval_history`` columns that are strings, not float metrics
_HISTORY_STRING_COLUMNS = ("run_id", "commit", "corpus_fingerprint", "evalset_fingerprint", "db_uri", "queries_path",
                           "run_dir", "setting_json")


def eval_history_schema(row: Mapping[str, Any], column_types: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """The ``eval_history`` fields of ``row``'s columns: ``created_at`` a timestamp, ids and paths strings,
    ``n_<target>_queries`` integers, ``column_types`` as given, every other column a float metric."""
    types = dict(column_types or {})

    def history_field(name: str) -> pa.Field:
        if name == "created_at":
            return pa.field(name, pa.timestamp("us", tz="UTC"))
        if name in types:
            return pa.field(name, types[name])
        if name.startswith("n_") and name.endswith("_queries"):
            return pa.field(name, pa.int64())
        if name in _HISTORY_STRING_COLUMNS:
            return pa.field(name, pa.string())
        return pa.field(name, pa.float64())

    return pa.schema([history_field(name) for name in row])


# -- OCR results (one row per distinct image and OCR engine setting) ----------------------------

#: ``ocr_results``: the text OCR read in one image (sha256) with one engine and its settings, saved as soon as
#: it is read so that any later run (an interrupted one too) reuses it instead of reading the image again.
OCR_RESULTS = "ocr_results"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # orders ocr_results rows without a created_at first


def ocr_results_schema() -> pa.Schema:
    """``ocr_results``: ``id`` = ``<image sha256>:<engine key>``; ``text`` "" when the engine found none,
    ``error`` set (text null) when the image could not be read."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("error", pa.string()),
        pa.field("seconds", pa.float64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ])


def ocr_result_id(sha256: str, engine: str) -> str:
    """The key of one ``ocr_results`` row."""
    return f"{sha256}:{engine}"
