"""HTTP and local-file fetching for mmrag.

:class:`Fetcher` is the one edge object that talks to the network. It never raises for network
or HTTP problems: every outcome is a :class:`~mmrag.records.FetchResult` whose ``status`` says
what happened (``ok``, ``not_modified``, ``http_<code>``, ``timeout``, ``unreachable``,
``too_large``, ``bad_content_type``, ``redirect_loop``, ``too_many_redirects``,
``robots_disallowed``, ``invalid_url``, ``error``) and whose ``error`` says it in words.

The small functions at the top (backoff, ``Retry-After``, content-type checks) are pure.
"""

from __future__ import annotations

import mimetypes
import random
import socket
import threading
import time
import urllib.robotparser
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Iterator, Literal
from urllib.parse import urldefrag, urljoin, urlsplit

import httpx

from mmrag.config import FetchConfig
from mmrag.records import FetchResult, sha256_hex
from mmrag.pipelines.rawstore import RawStore

Kind = Literal["page", "image", "feed"]

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# RFC 9309 asks crawlers to parse at least 500 KiB of robots.txt; anything beyond is ignored.
ROBOTS_MAX_BYTES = 512 * 1024

_ACCEPT = {
    "page": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
    "image": "image/*,*/*;q=0.1",
    "feed": "application/rss+xml,application/atom+xml,application/xml;q=0.9,text/xml;q=0.9,*/*;q=0.1",
}


# ---------------------------------------------------------------- pure helpers


def backoff_delay(retry: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``retry`` (1 = first retry).

    Exponential (``base_s * 2**(retry-1)``, capped at ``max_s``) with jitter: a uniformly random
    50-100 % of that, so parallel workers hitting the same failing host do not retry in lockstep.
    """
    capped = min(max_s, base_s * (2 ** (retry - 1)))
    return capped * (0.5 + 0.5 * rand())


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds requested by a ``Retry-After`` header (delta-seconds or HTTP-date), or None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def media_type(content_type: str | None) -> str:
    """``"Text/HTML; charset=latin-1"`` -> ``"text/html"``; ``""`` when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def content_type_problem(kind: Kind, content_type: str, page_types: list[str]) -> str | None:
    """Why a declared ``Content-Type`` is unacceptable for ``kind``, or None when it is fine.

    Pages: one of ``page_types``. Images: ``image/*`` or ``application/octet-stream``.
    Feeds (and sitemaps): any XML type (``*/xml``, ``*+xml``) or ``text/*``.
    """
    mtype = media_type(content_type)
    if kind == "page":
        allowed = [t.lower() for t in page_types]
        if mtype in allowed:
            return None
        return f"expected a page ({', '.join(allowed)}), got Content-Type {content_type!r}"
    if kind == "image":
        if mtype.startswith("image/") or mtype == "application/octet-stream":
            return None
        return f"expected an image (image/*), got Content-Type {content_type!r}"
    if mtype.startswith("text/") or mtype.endswith("/xml") or mtype.endswith("+xml"):
        return None
    return f"expected a feed or sitemap (XML or text), got Content-Type {content_type!r}"


def sniff_problem(kind: Kind, body: bytes) -> str | None:
    """Why a body served without ``Content-Type`` does not look like ``kind``, or None when it does.

    Pages must contain ``<html`` or ``<!doctype html`` near the start; feeds must start with ``<``.
    Images are accepted as they are: decoding them later is the real check.
    """
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if kind == "page":
        if b"<!doctype html" in head or b"<html" in head:
            return None
        return "no Content-Type and the body does not look like HTML"
    if kind == "feed" and not head.startswith(b"<"):
        return "no Content-Type and the body does not look like XML"
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched over HTTP(S), or None when it can."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        return f"malformed URL {url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"not an http(s) URL: {url!r}"
    if not host:
        return f"URL has no host: {url!r}"
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"malformed URL {url!r}: {exc}"
    return None


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL (the scope of one robots.txt)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1].lower()}"


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


# ---------------------------------------------------------------- limits


class HostLimiter:
    """Global and per-host limits on requests in flight, and a minimum gap between request starts per host."""

    def __init__(
        self,
        concurrency: int,
        per_host_concurrency: int,
        per_host_delay_s: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._global = threading.BoundedSemaphore(concurrency)
        self._per_host_concurrency = per_host_concurrency
        self._delay_s = per_host_delay_s
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._next_start: dict[str, float] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one request slot for ``host`` for the duration of the ``with`` block."""
        with self._lock:
            host_slots = self._host_slots.setdefault(host, threading.BoundedSemaphore(self._per_host_concurrency))
        # Host slot first, global slot last: a request waiting for a busy host must not hold
        # one of the global slots that requests to other hosts could use meanwhile.
        with host_slots:
            self._wait_turn(host)
            with self._global:
                yield

    def _wait_turn(self, host: str) -> None:
        if self._delay_s <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next_start.get(host, now))
            self._next_start[host] = start + self._delay_s
        if start > now:
            self._sleep(start - now)


# ---------------------------------------------------------------- fetcher


@dataclass
class _Outcome:
    """What one attempt (one redirect chain) produced, before raw-store bookkeeping."""

    status: str
    final_url: str
    http_status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    redirect_to: str | None = None


class Fetcher:
    """Fetches pages, images and feeds over one shared, thread-safe ``httpx.Client``.

    Call :meth:`fetch` from as many threads as you like; the limits of ``cfg`` (global and
    per-host concurrency, per-host delay) hold across them. With a ``raw_store`` every body is
    stored by hash and a later fetch of the same URL is a conditional GET. ``sleep`` is used for
    every wait (backoff, per-host delay) so tests can replace it. Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(
        self,
        cfg: FetchConfig,
        raw_store: RawStore | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.raw_store = raw_store
        self._sleep = sleep
        self._rand = rand
        self._limiter = HostLimiter(cfg.concurrency, cfg.per_host_concurrency, cfg.per_host_delay_s, sleep)
        self._client = httpx.Client(
            headers={"User-Agent": cfg.user_agent},
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout_s,
                read=cfg.read_timeout_s,
                write=cfg.read_timeout_s,
                pool=cfg.connect_timeout_s + cfg.read_timeout_s,
            ),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
            follow_redirects=False,  # followed by hand: loops, counting and robots.txt per hop
            max_redirects=cfg.max_redirects,
            transport=transport,
        )
        self._unreachable_hosts: dict[str, str] = {}  # host -> first error, for this fetcher's lifetime
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        self._robots_locks_guard = threading.Lock()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    # ------------------------------------------------------------ public

    def fetch(self, url: str, *, kind: Kind = "page", conditional: bool = True) -> FetchResult:
        """GET ``url`` as a ``kind`` resource, with retries, limits and robots.txt; never raises for network/HTTP problems.

        With ``conditional`` and a raw store that remembers this URL, validators are sent and a
        ``304`` gives status ``not_modified`` with the stored body (``from_cache=True``).
        """
        started = time.monotonic()
        problem = url_problem(url)
        if problem:
            return FetchResult(url=url, final_url=url, status="invalid_url", error=problem, attempts=0,
                               fetched_at=_now())
        if self.cfg.reparse_from_raw:
            stored = self._stored_result(url, started)
            if stored is not None:
                return stored
        cached = self._recall_with_body(url) if conditional else None
        headers = {"Accept": _ACCEPT[kind]}
        if cached and cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]
        if cached and cached.get("last_modified"):
            headers["If-Modified-Since"] = cached["last_modified"]

        total_attempts = self.cfg.max_retries + 1
        for attempt in range(1, total_attempts + 1):
            outcome = self._follow_redirects(url, kind, headers)
            if not outcome.retryable or attempt == total_attempts:
                break
            if outcome.retry_after_s is not None:
                delay = min(outcome.retry_after_s, self.cfg.backoff_max_s)
            else:
                delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rand)
            self._sleep(delay)
        if outcome.retryable and attempt > 1:
            outcome.error = f"{outcome.error} (gave up after {attempt} attempts)"

        if outcome.status == "not_modified":
            if cached is None:  # a 304 we did not ask for
                outcome.status, outcome.error = "http_304", f"HTTP 304 from {outcome.final_url} without a conditional request"
            else:
                body = self.raw_store.get(cached["body_sha256"]) if self.raw_store else None
                if body is None:  # store pruned since recall: fetch the body again
                    return self.fetch(url, kind=kind, conditional=False)
                result = FetchResult(
                    url=url, final_url=outcome.final_url, status="not_modified", http_status=304,
                    content_type=cached.get("content_type"), body=body, body_sha256=cached["body_sha256"],
                    etag=outcome.etag or cached.get("etag"),
                    last_modified=outcome.last_modified or cached.get("last_modified"),
                    fetched_at=_now(), attempts=attempt, elapsed_s=time.monotonic() - started, from_cache=True,
                )
                self.raw_store.remember(url, result)
                return result

        body_sha = None
        if outcome.status == "ok" and outcome.body is not None:
            body_sha = self.raw_store.put(outcome.body) if self.raw_store else sha256_hex(outcome.body)
        result = FetchResult(
            url=url, final_url=outcome.final_url, status=outcome.status, http_status=outcome.http_status,
            content_type=outcome.content_type, body=outcome.body if outcome.status == "ok" else None,
            body_sha256=body_sha, etag=outcome.etag, last_modified=outcome.last_modified, error=outcome.error,
            fetched_at=_now(), attempts=attempt, elapsed_s=time.monotonic() - started,
        )
        if result.status == "ok" and self.raw_store:
            self.raw_store.remember(url, result)
        return result

    def fetch_local(self, path: str | Path, *, kind: Kind = "page") -> FetchResult:
        """Read a local file as a ``FetchResult`` (``url`` is its ``file://`` URI).

        Status ``ok``, ``not_found``, ``too_large`` (over the page or image limit for ``kind``) or
        ``error``; ``content_type`` is guessed from the suffix. The body goes into the raw store.
        """
        started = time.monotonic()
        resolved = Path(path).expanduser().resolve()
        url = resolved.as_uri()

        def failed(status: str, error: str) -> FetchResult:
            return FetchResult(url=url, final_url=url, status=status, error=error, fetched_at=_now(),
                               elapsed_s=time.monotonic() - started)

        if not resolved.exists():
            return failed("not_found", f"no such file: {resolved}")
        if not resolved.is_file():
            return failed("error", f"not a regular file: {resolved}")
        limit = self._size_limit(kind)
        try:
            size = resolved.stat().st_size
            if size > limit:
                return failed("too_large", f"{resolved} is {size} bytes, over the {kind} limit of {limit} bytes")
            body = resolved.read_bytes()
        except OSError as exc:
            return failed("error", f"cannot read {resolved}: {exc.strerror or exc}")
        body_sha = self.raw_store.put(body) if self.raw_store else sha256_hex(body)
        return FetchResult(
            url=url, final_url=url, status="ok", content_type=mimetypes.guess_type(resolved.name)[0],
            body=body, body_sha256=body_sha, fetched_at=_now(), elapsed_s=time.monotonic() - started,
        )

    # ------------------------------------------------------------ internals

    def _size_limit(self, kind: Kind) -> int:
        return self.cfg.max_image_bytes if kind == "image" else self.cfg.max_page_bytes

    def _stored_result(self, url: str, started: float) -> FetchResult | None:
        """The last stored response of ``url`` as a result (no request made), or None when none is stored."""
        record = self.raw_store.recall(url) if self.raw_store else None
        body = None
        if record and record.get("body_sha256"):
            try:
                body = self.raw_store.get(record["body_sha256"])
            except ValueError:  # corrupt digest in the record
                body = None
        if body is None:
            return None
        return FetchResult(
            url=url, final_url=record.get("final_url") or url, status="ok", http_status=record.get("http_status"),
            content_type=record.get("content_type"), body=body, body_sha256=record["body_sha256"],
            etag=record.get("etag"), last_modified=record.get("last_modified"), fetched_at=_now(),
            attempts=0, elapsed_s=time.monotonic() - started, from_cache=True,
        )

    def _recall_with_body(self, url: str) -> dict | None:
        """The stored record of ``url`` when it has validators and its body is still stored."""
        if self.raw_store is None:
            return None
        record = self.raw_store.recall(url)
        if not record or not (record.get("etag") or record.get("last_modified")):
            return None
        sha = record.get("body_sha256")
        try:
            return record if sha and self.raw_store.has(sha) else None
        except ValueError:  # corrupt digest in the record
            return None

    def _follow_redirects(self, url: str, kind: Kind, headers: dict[str, str]) -> _Outcome:
        chain = [url]
        current = url
        while True:
            if self.cfg.respect_robots and not self._robots_allow(current):
                return _Outcome("robots_disallowed", current,
                                error=f"robots.txt of {_origin(current)} disallows {current} for {self.cfg.user_agent!r}")
            outcome = self._request(current, kind, headers)
            if outcome.redirect_to is None:
                return outcome
            target = urldefrag(urljoin(current, outcome.redirect_to)).url
            problem = url_problem(target)
            if problem:
                return _Outcome("invalid_url", current, http_status=outcome.http_status,
                                error=f"redirect from {current} to an unusable URL: {problem}")
            if target in chain:
                return _Outcome("redirect_loop", current, http_status=outcome.http_status,
                                error="redirect loop: " + " -> ".join([*chain, target]))
            chain.append(target)
            if len(chain) - 1 > self.cfg.max_redirects:
                return _Outcome("too_many_redirects", current, http_status=outcome.http_status,
                                error=f"more than {self.cfg.max_redirects} redirects: " + " -> ".join(chain))
            current = target

    def _request(self, url: str, kind: Kind, headers: dict[str, str]) -> _Outcome:
        """One GET without following redirects, holding a host slot for its whole duration."""
        host = _host(url)
        if host in self._unreachable_hosts:
            # One dead host must not cost a full retry cycle for each of its hundreds of images.
            return _Outcome("unreachable", url, error=f"{self._unreachable_hosts[host]} (host already failed in this run)")
        with self._limiter.slot(host):
            try:
                with self._client.stream("GET", url, headers=headers) as response:
                    return self._read_response(url, kind, response)
            except httpx.ConnectTimeout:
                return _Outcome("timeout", url, retryable=True,
                                error=f"could not connect to {host} within {self.cfg.connect_timeout_s} s")
            except httpx.TimeoutException as exc:
                return _Outcome("timeout", url, retryable=True,
                                error=f"{type(exc).__name__}: {host} sent nothing for {self.cfg.read_timeout_s} s")
            except httpx.ConnectError as exc:
                error = f"cannot connect to {host}: {exc}"
                if _is_unknown_name(exc):  # the name does not exist: retrying cannot help
                    self._unreachable_hosts.setdefault(host, error)
                    return _Outcome("unreachable", url, error=error)
                return _Outcome("unreachable", url, retryable=True, error=error)
            except httpx.UnsupportedProtocol as exc:
                return _Outcome("invalid_url", url, error=f"unsupported URL {url!r}: {exc}")
            except httpx.DecodingError as exc:
                return _Outcome("error", url, error=f"cannot decode the response body of {url}: {exc}")
            except httpx.TransportError as exc:  # connection reset, protocol violations: transient as a rule
                return _Outcome("error", url, retryable=True, error=f"{type(exc).__name__} from {url}: {exc}")

    def _read_response(self, url: str, kind: Kind, response: httpx.Response) -> _Outcome:
        code = response.status_code
        hdrs = response.headers
        base = {"http_status": code, "etag": hdrs.get("etag"), "last_modified": hdrs.get("last-modified")}
        if code in REDIRECT_CODES:
            location = hdrs.get("location")
            if location:
                return _Outcome("redirect", url, redirect_to=location, **base)
            return _Outcome(f"http_{code}", url, error=f"HTTP {code} redirect without a Location from {url}", **base)
        if code == 304:
            return _Outcome("not_modified", url, **base)
        if not 200 <= code < 300:
            retryable = code >= 500 or code == 429
            return _Outcome(
                f"http_{code}", url, retryable=retryable,
                retry_after_s=parse_retry_after(hdrs.get("retry-after")) if retryable else None,
                error=f"HTTP {code} {response.reason_phrase} from {url}".rstrip(), **base,
            )

        content_type = hdrs.get("content-type") or None
        base["content_type"] = content_type
        limit = self._size_limit(kind)
        declared = hdrs.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _Outcome("too_large", url, **base,
                            error=f"Content-Length {declared} of {url} is over the {kind} limit of {limit} bytes")
        if content_type:
            problem = content_type_problem(kind, content_type, self.cfg.page_content_types)
            if problem:
                return _Outcome("bad_content_type", url, error=f"{problem} from {url}", **base)

        received = bytearray()
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > limit:
                return _Outcome("too_large", url, **base,
                                error=f"body of {url} is over the {kind} limit of {limit} bytes (stopped reading)")
        body = bytes(received)
        if not content_type:
            problem = sniff_problem(kind, body)
            if problem:
                return _Outcome("bad_content_type", url, error=f"{problem} from {url}", **base)
        return _Outcome("ok", url, body=body, **base)

    def _robots_allow(self, url: str) -> bool:
        origin = _origin(url)
        if origin not in self._robots:
            with self._robots_locks_guard:
                lock = self._robots_locks.setdefault(origin, threading.Lock())
            with lock:  # one robots.txt request per origin, even with many threads waiting
                if origin not in self._robots:
                    self._robots[origin] = self._load_robots(origin)
        parser = self._robots[origin]
        return parser is None or parser.can_fetch(self.cfg.user_agent, url)

    def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | None:
        """The parsed robots.txt of ``origin``, or None meaning "allow everything"."""
        robots_url = f"{origin}/robots.txt"
        try:
            with self._limiter.slot(_host(robots_url)):
                with self._client.stream("GET", robots_url, follow_redirects=True) as response:
                    if response.status_code != 200:
                        # 4xx: no robots.txt, so everything is allowed (RFC 9309, 2.3.1.3).
                        # 5xx: RFC 9309 says assume "disallow all"; we deliberately allow instead:
                        # a batch indexer fetches a few named articles, a broken robots.txt should
                        # not silently drop a whole site, and a failing server fails the pages anyway.
                        return None
                    received = bytearray()
                    for chunk in response.iter_bytes():
                        received += chunk
                        if len(received) >= ROBOTS_MAX_BYTES:
                            break
        except httpx.HTTPError:
            # Unreachable or timing out: allow, for the same reason as a 5xx above.
            return None
        parser = urllib.robotparser.RobotFileParser(robots_url)
        parser.parse(bytes(received[:ROBOTS_MAX_BYTES]).decode("utf-8", errors="replace").splitlines())
        return parser


def _is_unknown_name(exc: BaseException) -> bool:
    """True when a connect error comes from DNS saying the host name does not exist (not a transient failure)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror) and seen.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Name or service not known" in str(exc) or "nodename nor servname" in str(exc)


def _now() -> datetime:
    return datetime.now(timezone.utc)
