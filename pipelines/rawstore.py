"""Content-addressed store of raw response bodies, so a re-parse never re-fetches.

Layout under ``root``::

    ab/cdef...            body whose SHA-256 hex digest is ``abcdef...``
    urls/<sha256(url)>.json  what the last fetch of ``url`` returned (for conditional GETs)

Every file is written to a temporary file in its final directory and moved into place with
:func:`os.replace`, so readers (other threads or processes) never see a partial file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mmrag.records import FetchResult, sha256_hex

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

#: Keys of the per-URL record returned by :meth:`RawStore.recall`.
URL_RECORD_KEYS = ("etag", "last_modified", "body_sha256", "content_type", "final_url", "http_status", "fetched_at")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


class RawStore:
    """Raw bodies keyed by their SHA-256, plus a small metadata record per fetched URL.

    Safe to share between threads: writes are atomic and identical bodies map to the same file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def body_path(self, sha: str) -> Path:
        """Where the body with hex digest ``sha`` lives (``root/ab/cdef...``); raises ValueError on a malformed digest."""
        if not _SHA256_HEX.fullmatch(sha):
            raise ValueError(f"not a lowercase SHA-256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha[2:]

    def put(self, body: bytes) -> str:
        """Store ``body`` (once) and return its SHA-256 hex digest."""
        sha = sha256_hex(body)
        path = self.body_path(sha)
        if not path.exists():
            _atomic_write(path, body)
        return sha

    def get(self, sha: str) -> bytes | None:
        """The body with digest ``sha``, or None when it is not stored."""
        try:
            return self.body_path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def has(self, sha: str) -> bool:
        """True when the body with digest ``sha`` is stored."""
        return self.body_path(sha).is_file()

    def url_record_path(self, url: str) -> Path:
        """Where the metadata record of ``url`` lives (``root/urls/<sha256(url)>.json``)."""
        return self.root / "urls" / f"{sha256_hex(url)}.json"

    def remember(self, url: str, result: FetchResult) -> None:
        """Record what fetching ``url`` returned, so a later run can send a conditional GET."""
        record: dict[str, Any] = {
            "url": url,
            "etag": result.etag,
            "last_modified": result.last_modified,
            "body_sha256": result.body_sha256,
            "content_type": result.content_type,
            "final_url": result.final_url,
            "http_status": result.http_status,
            "fetched_at": result.fetched_at.isoformat() if result.fetched_at else None,
        }
        _atomic_write(self.url_record_path(url), json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))

    def recall(self, url: str) -> dict[str, Any] | None:
        """The record last :meth:`remember`-ed for ``url`` (keys: :data:`URL_RECORD_KEYS`), or None.

        An unreadable or corrupt record counts as absent: it only ever saves a download.
        """
        try:
            data = json.loads(self.url_record_path(url).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        return {key: data.get(key) for key in URL_RECORD_KEYS}
