"""Picklable stand-ins for the run's fetcher and embedder, so tasks can run on Dask workers.

Dask serialises every task argument, even for in-process workers, and neither an ``httpx``
client nor a loaded model with its locks pickles. :class:`SharedHandle` pickles as
``(key, kind, config)``: unpickled in the process that created it, it is the very same object
(one HTTP connection pool and per-host limiter, one model); in another process (Dask process
workers or a remote cluster) it builds its own from the config, once per process. Attribute
access is forwarded, so a handle works wherever the real object does.

Caveat for process workers: each process has its own per-host limiter, so the per-host
concurrency applies per worker process, and each process loads its own model.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from mmrag.config import MmragConfig
from mmrag.pipelines.fetch import Fetcher
from mmrag.pipelines.rawstore import RawStore
from mmrag.pipelines.embed import create_embedder

_LIVE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _build(kind: str, config: MmragConfig) -> Any:
    if kind == "fetcher":

        return Fetcher(config.fetch, RawStore(config.store.raw_dir))
    if kind == "embedder":
        return create_embedder(config.embed)
    raise ValueError(f"unknown shared resource kind {kind!r}")


class SharedHandle:
    """A picklable reference to a per-process fetcher or embedder (see the module docstring)."""

    def __init__(self, kind: str, config: MmragConfig, obj: Any = None, key: str | None = None):
        self._key = key or f"{kind}-{uuid.uuid4().hex}"
        self._kind = kind
        self._config = config
        if obj is not None:
            with _LOCK:
                _LIVE[self._key] = obj

    def resolve(self) -> Any:
        """The real object in this process (built from the config on first use in a new process)."""
        obj = _LIVE.get(self._key)
        if obj is None:
            with _LOCK:
                obj = _LIVE.get(self._key)
                if obj is None:
                    obj = _LIVE[self._key] = _build(self._kind, self._config)
        return obj

    def release(self) -> None:
        """Forget the object in this process (the creator calls this at the end of the run)."""
        with _LOCK:
            _LIVE.pop(self._key, None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __reduce__(self):
        return (SharedHandle, (self._kind, self._config, None, self._key))

    def __repr__(self) -> str:
        return f"SharedHandle({self._kind})"
