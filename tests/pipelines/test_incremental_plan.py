"""The pure decisions of incremental re-indexing and the write guards (no database, no Prefect)."""

from __future__ import annotations

import errno
import threading

import pytest

from mmrag.records import Chunk, FetchResult
from mmrag.pipelines import guard, incremental


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


def test_confirmed_pages_keep_their_rows_and_new_fetch_facts_rewrite_them():
    from datetime import datetime, timezone
    from types import SimpleNamespace

    prev = {"url": "u", "origin": "S", "final_url": "u", "status": "ok", "http_status": 200, "error": None,
            "content_hash": "h1", "etag": "e1", "last_modified": None, "run_id": "r1",
            "fetched_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "text": "body"}
    target = SimpleNamespace(url="u", origin="S")
    now = datetime(2026, 2, 1, tzinfo=timezone.utc)
    confirmed = fetch("not_modified", http_status=304, etag="e1", fetched_at=now)
    assert incremental.refreshed_document_row(prev, confirmed, origin="S", run_id="r2")["http_status"] == 200
    assert incremental.refreshed_document_rows([(target, confirmed)], {"u": prev}, run_id="r2") == []
    assert incremental.refreshed_document_rows([(target, fetch(http_status=200, etag="e1", fetched_at=now))],
                                               {"u": prev}, run_id="r2") == [], "same body re-sent with a 200"
    new_etag = incremental.refreshed_document_rows([(target, fetch("not_modified", http_status=304, etag="e2",
                                                                   fetched_at=now))], {"u": prev}, run_id="r2")
    assert [(r["etag"], r["fetched_at"], r["run_id"], r["text"]) for r in new_etag] == [("e2", now, "r2", "body")]
    moved = incremental.refreshed_document_rows([(SimpleNamespace(url="u", origin="S2"), confirmed)], {"u": prev},
                                                run_id="r2")
    assert [r["origin"] for r in moved] == ["S2"]
    assert len(incremental.refreshed_document_rows([(target, confirmed)], {"u": {**prev, "error": "old"}},
                                                   run_id="r2")) == 1, "a cleared error is news"


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


def test_redated_documents_finds_kept_rows_with_another_date():
    from datetime import date

    from mmrag.pipelines.incremental import redated_documents

    may, june = date(2024, 5, 1), date(2024, 6, 1)
    stored = {"a": {"1": {"published": may}, "2": {"published": may}},
              "b": {"3": {"published": None}},  # written before the column existed
              "c": {"4": {"published": may}, "5": {"published": june}},
              "d": {"6": {"published": None}}}
    dates = {"a": may, "b": june, "c": june, "d": None, "new": june}
    assert redated_documents(dates, stored) == {june: ["b", "c"]}
    assert redated_documents({"a": None}, stored) == {None: ["a"]}  # a date that disappeared is cleared


class Occ:
    def __init__(self, id, surrogate_hash="s", status="ok", ocr_text=None):
        self.id, self.surrogate_hash, self.status, self.ocr_text = id, surrogate_hash, status, ocr_text


def test_plan_images_writes_new_and_changed_rows_once_and_deletes_the_rest():
    stored = {"a": {"surrogate_hash": "s", "status": "ok", "ocr_text": None},
              "b": {"surrogate_hash": "s", "status": "ok", "ocr_text": None},
              "c": {"surrogate_hash": "s", "status": "ok", "ocr_text": "old"},
              "gone": {"surrogate_hash": "s", "status": "ok", "ocr_text": None}}
    occs = [Occ("a"), Occ("b", surrogate_hash="s2"), Occ("c", ocr_text="new"), Occ("new"), Occ("new"),
            Occ("d_failed", status="http_404")]
    plan = incremental.plan_images(occs, stored)
    assert [o.id for o in plan.changed] == ["b", "c", "new", "d_failed"]
    assert plan.change == ["unchanged", "updated", "updated", "added", "unchanged", "added"]  # a repeated id counts once
    assert plan.stale == {"gone"}
    status_only = incremental.plan_images([Occ("a", status="corrupt")], stored)
    assert status_only.change == ["updated"] and status_only.stale == {"b", "c", "gone"}
