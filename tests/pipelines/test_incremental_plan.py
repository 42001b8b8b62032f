"""The pure decisions of incremental re-indexing and the write guards (no database, no Prefect)."""

from __future__ import annotations

import errno
import threading

import pytest

from mmrag.records import Chunk, FetchResult
from pipelines import guard, incremental


def fetch(status="ok", sha="h1", **kw) -> FetchResult:
    return FetchResult(url="u", final_url="u", status=status, body=b"x" if status in ("ok", "not_modified") else None,
                       body_sha256=sha if status in ("ok", "not_modified") else None, **kw)


def chunk(text: str, position: int, doc: str = "d") -> Chunk:
    return Chunk(doc_url=doc, article_title="t", section_path=("s",), position=position, char_start=0,
                 char_end=len(text), text=text, token_count=3, strategy="paragraph")


def test_unchanged_needs_same_hash_ok_status_and_all_rows():
    prev = {"status": "ok", "content_hash": "h1", "n_chunks": 2, "n_images": 1}
    assert incremental.is_unchanged(fetch(), prev, 2, 1)
    assert incremental.is_unchanged(fetch("not_modified"), prev, 2, 1)
    assert not incremental.is_unchanged(fetch(sha="h2"), prev, 2, 1)
    assert not incremental.is_unchanged(fetch(), prev, 1, 1), "a chunk row missing (other chunking, crash)"
    assert not incremental.is_unchanged(fetch(), {**prev, "status": "http_500"}, 2, 1)
    assert not incremental.is_unchanged(fetch(), None, 0, 0)
    assert not incremental.is_unchanged(fetch("http_500"), prev, 2, 1)


def test_gone_only_for_known_pages():
    assert incremental.is_gone(fetch("http_404"), {"status": "ok"})
    assert incremental.is_gone(fetch("http_410"), {"status": "ok"})
    assert not incremental.is_gone(fetch("http_404"), None)
    assert not incremental.is_gone(fetch("http_503"), {"status": "ok"})


def test_dropped_urls_only_from_complete_sources():
    previous = [{"url": "a", "origin": "S", "status": "ok"}, {"url": "b", "origin": "S", "status": "ok"},
                {"url": "c", "origin": "T", "status": "ok"}, {"url": "d", "origin": "S", "status": "gone"}]
    assert incremental.dropped_urls(previous, ["a"], ["S"]) == ["b"]
    assert incremental.dropped_urls(previous, ["a"], []) == []


def test_plan_chunks_counts_moves_as_updates():
    stored_chunks = [chunk("one", 0), chunk("two", 1), chunk("three", 2)]
    stored = {"d": {c.id: {"content_hash": c.content_hash} for c in stored_chunks}}
    new = [chunk("two", 0), chunk("one", 1), chunk("four", 2)]
    plan = incremental.plan_chunks(new, stored)
    assert (plan.added, plan.updated, plan.deleted, plan.unchanged) == (1, 2, 1, 0)
    assert {c.text for c in plan.new} == {"one", "two", "four"} and len(plan.stale) == 3
    same = incremental.plan_chunks(stored_chunks, stored)
    assert (same.added, same.updated, same.deleted, same.unchanged, same.new) == (0, 0, 0, 3, [])


def test_texts_to_embed_skips_reusable_and_duplicates():
    keys, texts = incremental.texts_to_embed(["a", "b", "a", "c"], ["A", "B", "A", "C"], {"b": object()})
    assert keys == ["a", "c"] and texts == ["A", "C"]


def test_tombstone_and_refresh_rows():
    prev = {"url": "u", "status": "ok", "title": "T", "content_hash": "h", "n_chunks": 3, "n_images": 1, "etag": "e1"}
    tomb = incremental.tombstone_row(prev, run_id="r2", error="gone: 404", fetch=fetch("http_404", http_status=404))
    assert tomb["status"] == "gone" and tomb["title"] == "T" and tomb["content_hash"] is None
    assert tomb["n_chunks"] == 0 and tomb["http_status"] == 404 and tomb["run_id"] == "r2"
    fresh = incremental.refreshed_document_row(prev, fetch("not_modified", http_status=304, etag="e2"), origin="S", run_id="r3")
    assert fresh["etag"] == "e2" and fresh["content_hash"] == "h" and fresh["origin"] == "S" and fresh["status"] == "ok"


def test_write_errors_become_one_line_naming_the_path():
    lance = RuntimeError('lance error: LanceError(IO): Read-only file system (os error 30) at path "/db/t.lance/x", '
                         "/root/.cargo/registry/src/lance-io/object_store.rs:1006:34")
    assert guard.describe_write_error(lance, "/db") == "cannot write /db/t.lance/x: Read-only file system (os error 30)"
    full = RuntimeError("lance error: LanceError(IO): No space left on device (os error 28), /root/.cargo/x.rs:258:9")
    assert guard.describe_write_error(full, "/db") == "cannot write /db: No space left on device (os error 28)"
    assert guard.describe_write_error(OSError(errno.EACCES, "Permission denied", "/raw/ab"), "/db") == (
        "cannot write /raw/ab: Permission denied (os error 13)")
    assert guard.describe_write_error(RuntimeError("lance error: something else"), "/db") is None
    with pytest.raises(guard.StoreWriteError, match="^cannot write /db: No space left"):
        with guard.write_errors("/db"):
            raise full
    with pytest.raises(ValueError):
        with guard.write_errors("/db"):
            raise ValueError("not a write error")


def test_lock_path_and_object_stores(tmp_path):
    assert guard.lock_path(str(tmp_path / "db")) == tmp_path / "db.lock"
    assert guard.lock_path("s3://bucket/db") is None
    with guard.write_lock("s3://bucket/db", 0) as held:
        assert held is None
    with guard.write_lock(str(tmp_path / "db"), 0):
        errors = []

        def second():
            try:
                with guard.write_lock(str(tmp_path / "db"), 0.1):
                    pass
            except guard.DatabaseLocked as exc:
                errors.append(str(exc))

        t = threading.Thread(target=second)
        t.start()
        t.join()
        assert errors and "db.lock" in errors[0]
