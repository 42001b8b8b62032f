"""Incremental re-indexing decisions (pure): what is unchanged, what moved, what is gone.

Rules (see also ``docs`` in the README's operations section):

* A page is **unchanged** when its fetched body has the ``content_hash`` of its stored ``documents``
  row, that row has status ``ok``, and the chunk and image tables of this embedder/chunking hold as
  many rows for it as the row says (``n_chunks``/``n_images``). Unchanged pages are not parsed,
  their images are not re-fetched and nothing is embedded for them.
* A changed page is re-parsed; its chunks are diffed by id (document, position, content hash). A
  new chunk whose text was already embedded anywhere in the table (same ``content_hash``, same
  embedder: the table is per embedder) reuses that vector instead of being embedded again.
* A page is **gone** when it answers 404/410 (a local file that disappeared counts too) or when a
  sitemap, feed, URL list or folder that listed it last time no longer does. What happens to it is
  ``ops.gone_policy``: ``tombstone`` (status ``gone``, chunks and images deleted), ``delete`` (the
  document row too) or ``keep``.
* The ``documents`` row of an unchanged page is rewritten only when the fetch brought new facts
  (validators, origin, final URL, a cleared error). A re-fetch that only confirms the page (a 304,
  or the same body with the same validators) leaves the row as it is: its ``fetched_at`` and
  ``run_id`` stay those of the fetch and run that last changed it (the raw store's URL record
  has the time of the last check). Rewriting would copy every row, text included, into a new
  table version, which the run's ``index-<run_id>`` tag then keeps from cleanup, every night.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmrag.records import Chunk, FetchResult

#: Fetch statuses meaning "this page no longer exists" (``not_found`` is a vanished local file).
GONE_STATUSES = frozenset({"http_404", "http_410", "not_found"})
FETCH_OK = frozenset({"ok", "not_modified"})


def is_unchanged(fetch: FetchResult, previous: Mapping | None, stored_chunks: int, stored_images: int) -> bool:
    """Whether a fetched page can skip parse and embed: same body hash, stored ``ok`` and all its rows present."""
    if previous is None or fetch.status not in FETCH_OK or fetch.body_sha256 is None:
        return False
    return (
        previous.get("status") == "ok"
        and previous.get("content_hash") == fetch.body_sha256
        and (previous.get("n_chunks") or 0) == stored_chunks
        and (previous.get("n_images") or 0) == stored_images
    )


def is_gone(fetch: FetchResult, previous: Mapping | None) -> bool:
    """Whether a page known before now answers "gone" (a never-seen 404 is an ordinary failure)."""
    return previous is not None and fetch.status in GONE_STATUSES


def dropped_urls(previous: Iterable[Mapping], current_urls: Iterable[str], complete_sources: Iterable[str]) -> list[str]:
    """URLs stored with an ``origin`` among ``complete_sources`` that the sources no longer list.

    ``previous`` are ``documents`` rows (``url``, ``origin``, ``status``); rows already ``gone`` are
    ignored. Only sources that expanded without error belong in ``complete_sources``, so a feed
    that failed to load never retires its pages.
    """
    complete = set(complete_sources)
    current = set(current_urls)
    return sorted(
        {r["url"] for r in previous if r.get("origin") in complete and r["url"] not in current and r.get("status") != "gone"}
    )


@dataclass
class ChunkPlan:
    """How a batch's chunks relate to the stored ones.

    ``new``: chunks to write (ids not stored), de-duplicated by id. ``stale``: stored ids to delete.
    ``added``/``updated``/``deleted``/``unchanged`` are counts: a new chunk whose text a stale row
    of the same document had is ``updated`` (moved), not deleted plus added.
    """

    new: list[Chunk] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0


def plan_chunks(chunks: Sequence[Chunk], stored: Mapping[str, Mapping[str, Mapping]]) -> ChunkPlan:
    """Diff ``chunks`` (of the re-parsed pages) against ``stored`` (``{doc_url: {id: row with content_hash}}``)."""
    plan = ChunkPlan()
    live_ids = {c.id for c in chunks}
    stale_hashes: dict[str, Counter] = {}
    for doc_url, rows_ in stored.items():
        for cid, row in rows_.items():
            if cid not in live_ids:
                plan.stale.add(cid)
                stale_hashes.setdefault(doc_url, Counter())[row.get("content_hash")] += 1
    stored_ids = {cid for rows_ in stored.values() for cid in rows_}
    seen: set[str] = set()
    for chunk in chunks:
        if chunk.id in seen:
            continue
        seen.add(chunk.id)
        if chunk.id in stored_ids:
            plan.unchanged += 1
            continue
        plan.new.append(chunk)
        moved_from = stale_hashes.get(chunk.doc_url)
        if moved_from and moved_from[chunk.content_hash] > 0:
            moved_from[chunk.content_hash] -= 1
            plan.updated += 1
        else:
            plan.added += 1
    plan.deleted = len(plan.stale) - plan.updated
    return plan


@dataclass
class ImagePlan:
    """How a batch's image occurrences relate to the stored rows of their pages.

    ``changed``: occurrences whose row is (re)written, de-duplicated by id: new, or whose surrogate text,
    status or OCR text differs from the stored row. ``stale``: stored ids no occurrence has any more.
    ``change``: per occurrence, in order, ``added``/``updated`` for the one that writes its row,
    ``unchanged`` otherwise (a repeated id counts once).
    """

    changed: list[Any] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)
    change: list[str] = field(default_factory=list)


def plan_images(occurrences: Sequence[Any], stored: Mapping[str, Mapping]) -> ImagePlan:
    """Diff ``occurrences`` (objects with ``id``, ``surrogate_hash``, ``status``, ``ocr_text``) against ``stored``
    (``{id: row}`` of the re-parsed pages, with those columns)."""
    plan = ImagePlan(stale=set(stored) - {o.id for o in occurrences})
    written: set[str] = set()
    for occ in occurrences:
        row = stored.get(occ.id)
        differs = row is None or (row["surrogate_hash"], row["status"], row.get("ocr_text")) != (
            occ.surrogate_hash, occ.status, occ.ocr_text)
        if differs and occ.id not in written:
            written.add(occ.id)
            plan.changed.append(occ)
            plan.change.append("added" if row is None else "updated")
        else:
            plan.change.append("unchanged")
    return plan


def redated_documents(dates: Mapping[str, Any], stored: Mapping[str, Mapping[str, Mapping]]) -> dict[Any, list[str]]:
    """Re-parsed documents whose stored rows carry another ``published`` date than the page has now.

    ``dates``: ``{doc_url: date or None}`` of the re-parsed pages; ``stored``: ``{doc_url: {id: row
    with published}}`` (rows written before the column existed read None). Rows whose id did not
    change are not rewritten, so their denormalised date must be updated in place; returns
    ``{new date: [doc_url, …]}``.
    """
    out: dict[Any, list[str]] = {}
    for doc_url, published in dates.items():
        if any(row.get("published") != published for row in stored.get(doc_url, {}).values()):
            out.setdefault(published, []).append(doc_url)
    return out


def texts_to_embed(keys: Sequence[str], texts: Sequence[str], reusable: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """The distinct ``(keys, texts)`` whose key has no reusable vector, first occurrence first."""
    out_keys: list[str] = []
    out_texts: list[str] = []
    seen: set[str] = set()
    for key, text in zip(keys, texts):
        if key in reusable or key in seen:
            continue
        seen.add(key)
        out_keys.append(key)
        out_texts.append(text)
    return out_keys, out_texts


#: ``documents`` columns every re-fetch changes; a refreshed row differing only in these is not rewritten.
VOLATILE_DOCUMENT_FIELDS = frozenset({"fetched_at", "run_id"})


def refreshed_document_row(previous: Mapping, fetch: FetchResult, *, origin: str, run_id: str) -> dict:
    """The stored row of an unchanged page with this fetch's facts (time, validators, run) brought up to date.

    A 304 keeps the stored ``http_status``: the row describes the response that delivered the content.
    """
    row = dict(previous)
    row.update(
        origin=origin,
        final_url=fetch.final_url,
        http_status=previous.get("http_status") if fetch.status == "not_modified" else fetch.http_status,
        error=None,
        etag=fetch.etag or previous.get("etag"),
        last_modified=fetch.last_modified or previous.get("last_modified"),
        fetched_at=fetch.fetched_at,
        run_id=run_id,
    )
    return row


def refreshed_document_rows(unchanged: Iterable[tuple[Any, FetchResult]], previous: Mapping[str, Mapping], *,
                            run_id: str) -> list[dict]:
    """Refreshed ``documents`` rows of the ``unchanged`` ``(target, fetch)`` pages that need rewriting.

    ``target`` has ``url`` and ``origin``; ``previous`` maps url to the stored row. A row whose
    refresh changes nothing but :data:`VOLATILE_DOCUMENT_FIELDS` is left out (see the module docstring).
    """
    out = []
    for target, fetch in unchanged:
        stored = previous[target.url]
        row = refreshed_document_row(stored, fetch, origin=target.origin, run_id=run_id)
        if any(row[key] != stored.get(key) for key in row if key not in VOLATILE_DOCUMENT_FIELDS):
            out.append(row)
    return out


def tombstone_row(previous: Mapping, *, run_id: str, error: str, fetch: FetchResult | None = None) -> dict:
    """A ``gone`` row replacing ``previous``: title and url kept, content hash and counts cleared."""
    row = dict(previous)
    row.update(
        status="gone",
        error=error,
        content_hash=None,
        n_chunks=0,
        n_images=0,
        run_id=run_id,
    )
    if fetch is not None:
        row.update(http_status=fetch.http_status, final_url=fetch.final_url, fetched_at=fetch.fetched_at)
    return row
