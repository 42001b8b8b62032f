"""Guards around writing a database: one writer at a time, and clear one-line write errors.

**One writer.** Index and maintenance runs take an exclusive lock file next to a local database
(``<db>.lock`` beside the ``<db>`` directory, via ``filelock``: an OS lock, so a killed process
releases it). A second run waits up to ``ops.lock_timeout_s`` and then fails with
:class:`DatabaseLocked`. Object stores (``s3://``, ``gs://``, ``az://``) get no lock: a lock file
cannot be shared there. LanceDB commits each write atomically on S3 (conditional PUT), so a
concurrent writer cannot corrupt a table, but two index runs interleaving their batches could
still undo each other's stale-row deletions: run one writer per database (the deployments in
``prefect.yaml`` set ``concurrency_limit: 1`` for that reason).

**Object stores.** ``store.db_uri`` may be ``s3://bucket/path`` (tables and image bytes both live in
LanceDB). Credentials and endpoint come from the environment only (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true`` for a plain-HTTP
endpoint such as MinIO or moto), never from the config, so they are never logged or stored in ``runs``.
The raw store (``store.raw_dir``) stays a local directory: it is a per-machine cache for conditional
GETs and re-parses. A new machine with an empty raw store re-fetches every page once, but re-embeds
nothing: the bodies' hashes match the stored ``documents.content_hash``, so the pages count as unchanged.

**Write errors.** LanceDB reports I/O failures as ``RuntimeError("lance error: LanceError(IO): …
(os error 28) …")``; :func:`describe_write_error` turns those and plain ``OSError`` s into one line
naming the path and the OS reason. Every LanceDB write is a commit of a new version, so a failed
write leaves the last committed version as it was, readable.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class DatabaseLocked(RuntimeError):
    """Another run holds the database's write lock for longer than the timeout."""


class StoreWriteError(RuntimeError):
    """Writing the database (or the raw store) failed: disk full, permission denied, read-only."""


_LANCE_PATH = re.compile(r'at path "([^"]+)"')
_LANCE_OS = re.compile(r"LanceError\(IO\): (.*?\(os error (\d+)\))")
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.EDQUOT, errno.EFBIG})


def is_local_uri(db_uri: str) -> bool:
    """True for a plain path or ``file://`` URI (where a lock file can be used)."""
    return "://" not in db_uri or db_uri.startswith("file://")


def lock_path(db_uri: str) -> Path | None:
    """The lock file of a local database (``<db>.lock`` beside it), or None for an object store."""
    if not is_local_uri(db_uri):
        return None
    path = Path(db_uri.removeprefix("file://")).expanduser().resolve()
    return path.parent / f"{path.name}.lock"


@contextmanager
def write_lock(db_uri: str, timeout_s: float) -> Iterator[Path | None]:
    """Hold the database's write lock for the ``with`` body (no-op for object stores); yields the lock path."""
    path = lock_path(db_uri)
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout_s, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise DatabaseLocked(
            f"database {db_uri} is locked by another mmrag run (lock file {path}); waited {timeout_s:g} s "
            f"(ops.lock_timeout_s), try again when it has finished"
        ) from None
    try:
        yield path
    finally:
        lock.release()


def describe_write_error(exc: BaseException, default_path: str) -> str | None:
    """One line ``cannot write <path>: <reason>`` for disk-full/permission failures, else None."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        path = exc.filename or default_path
        return f"cannot write {path}: {os.strerror(exc.errno)} (os error {exc.errno})"
    text = str(exc)
    match = _LANCE_OS.search(text)
    if match and int(match.group(2)) in WRITE_ERRNOS:
        where = _LANCE_PATH.search(text)
        return f"cannot write {where.group(1) if where else default_path}: {match.group(1)}"
    return None


@contextmanager
def write_errors(default_path: str) -> Iterator[None]:
    """Turn disk-full and permission failures in the ``with`` body into :class:`StoreWriteError` (one line)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, (StoreWriteError, DatabaseLocked)):
            raise
        message = describe_write_error(exc, default_path)
        if message is None:
            raise
        raise StoreWriteError(message) from exc
