"""RawStore: content-addressed bodies and per-URL records."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from mmrag.records import FetchResult, sha256_hex
from mmrag.pipelines.rawstore import URL_RECORD_KEYS, RawStore


def test_put_get_has_round_trip(tmp_path):
    store = RawStore(tmp_path)
    body = b"\xff\x00 not utf-8 \xe9"
    sha = store.put(body)
    assert sha == sha256_hex(body)
    assert (tmp_path / sha[:2] / sha[2:]).read_bytes() == body
    assert store.has(sha) and store.get(sha) == body
    assert store.put(body) == sha  # idempotent
    assert [p.name for p in (tmp_path / sha[:2]).iterdir()] == [sha[2:]]  # no temp files left behind


def test_missing_and_malformed_digests(tmp_path):
    store = RawStore(tmp_path)
    absent = sha256_hex(b"never stored")
    assert store.get(absent) is None and not store.has(absent)
    for bad in ("../../etc/passwd", "ABC", absent.upper()):
        with pytest.raises(ValueError, match="SHA-256"):
            store.get(bad)


def test_concurrent_puts_of_the_same_body(tmp_path):
    store = RawStore(tmp_path)
    body = b"x" * 100_000
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = set(pool.map(lambda _: store.put(body), range(32)))
    assert digests == {sha256_hex(body)} and store.get(sha256_hex(body)) == body


def test_remember_and_recall(tmp_path):
    store = RawStore(tmp_path)
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    result = FetchResult(
        url="https://a.example/x", final_url="https://a.example/y", status="ok", http_status=200,
        content_type="text/html; charset=utf-8", body=b"hi", body_sha256=sha256_hex(b"hi"),
        etag='"v1"', last_modified="Wed, 01 May 2024 12:00:00 GMT", fetched_at=when,
    )
    assert store.recall("https://a.example/x") is None
    store.remember("https://a.example/x", result)

    record = store.recall("https://a.example/x")
    assert set(record) == set(URL_RECORD_KEYS)
    assert record == {
        "etag": '"v1"', "last_modified": "Wed, 01 May 2024 12:00:00 GMT", "body_sha256": sha256_hex(b"hi"),
        "content_type": "text/html; charset=utf-8", "final_url": "https://a.example/y", "http_status": 200,
        "fetched_at": when.isoformat(),
    }
    assert store.url_record_path("https://a.example/x") == tmp_path / "urls" / f"{sha256_hex('https://a.example/x')}.json"
    assert store.recall("https://a.example/other") is None


def test_corrupt_record_counts_as_absent(tmp_path):
    store = RawStore(tmp_path)
    path = store.url_record_path("https://a.example/x")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert store.recall("https://a.example/x") is None
