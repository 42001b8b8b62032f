"""HTTP and local-file fetching for mmrag.

:class:`Fetcher` is the one edge object that talks to the network. It never raises for network
or HTTP problems: every outcome is a :class:`~mmrag.records.FetchResult` whose ``status`` says
what happened (``ok``, ``not_modified``, ``http_<code>``, ``timeout``, ``unreachable``,
``too_large``, ``bad_content_type``, ``redirect_loop``, ``too_many_redirects``,
``robots_disallowed``, ``invalid_url``, ``error``) and whose ``error`` says it in words.

Every fetch has a deadline (``fetch.request_deadline_s``): httpx's timeouts are per socket read, so a
server sending its headers or body a byte a second would otherwise hold a worker, and the batch
after it, forever (httpx has no total timeout: encode/httpx#1450). The deadline is enforced on the
sockets themselves (:class:`_DeadlineBackend` cuts each connect, read and write to the time left, inside
:class:`DeadlineTransport`, our httpx transport over an httpcore pool, built on public APIs only), so
it interrupts a request stuck in its header read as well as in its body. A body arriving slower than
``fetch.min_bytes_per_s`` is cut off too (:class:`ThroughputMeter`). Retries (tenacity) share the
fetch's deadline; robots.txt is parsed by protego (wildcards, longest match, as RFC 9309 says).

The small functions and classes at the top (retry policy, ``Retry-After``, content-type checks,
deadline and throughput arithmetic) are pure; the socket-level enforcement and :class:`Fetcher` do I/O.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import mimetypes
import socket
import ssl
import threading
import time
import urllib.request
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal
from urllib.parse import urldefrag, urljoin, urlsplit

import httpcore
import httpx
import tenacity
from protego import Protego

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


class WaitRetryAfter(tenacity.wait.wait_base):
    """Tenacity wait: the seconds a ``Retry-After`` header asked for (capped at ``max_s``), else ``fallback``'s.

    The attempt's result must have a ``retry_after_s`` attribute (None when the server asked nothing).
    """

    def __init__(self, max_s: float, fallback: tenacity.wait.wait_base) -> None:
        self.max_s = max_s
        self.fallback = fallback

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds to wait before the next attempt."""
        asked = retry_state.outcome.result().retry_after_s
        return min(asked, self.max_s) if asked is not None else self.fallback(retry_state)


def retry_policy(
    max_retries: int, base_s: float, max_s: float, remaining_s: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """How one fetch retries an attempt whose result is ``retryable`` (timeouts, 5xx, 429, connection errors).

    At most ``max_retries`` retries. Before retry n it waits what ``Retry-After`` asked (capped at
    ``max_s``), else ``min(max_s, base_s * 2**(n-1))`` with equal jitter (half of it fixed, half
    uniformly random, so parallel workers hitting the same failing host do not retry in lockstep).
    A retry whose wait would use up what ``remaining_s()`` says is left of the fetch's deadline is not
    made. When retries stop, the last attempt's result is returned, never an exception.
    """
    half_base, half_max = base_s / 2, max_s / 2
    equal_jitter = (tenacity.wait_exponential(multiplier=half_base, max=half_max)
                    + tenacity.wait_random_exponential(multiplier=half_base, max=half_max))
    return tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda outcome: outcome.retryable),
        wait=WaitRetryAfter(max_s, equal_jitter),
        # tenacity decides the wait before asking stop, so a wait that would pass the deadline is never begun.
        stop=tenacity.stop_after_attempt(max_retries + 1) | (lambda state: state.upcoming_sleep >= remaining_s()),
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result(),
    )


class Deadline:
    """A time budget of ``limit_s`` seconds that starts running at the first :meth:`start`."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._started: float | None = None

    def start(self) -> None:
        """Start the clock (later calls change nothing)."""
        if self._started is None:
            self._started = self._clock()

    def remaining(self) -> float:
        """Seconds left: all of ``limit_s`` before the start, zero or less once the deadline has passed."""
        return self.limit_s if self._started is None else self.limit_s - (self._clock() - self._started)


class ThroughputMeter:
    """Whether a transfer has become too slow: fewer than ``min_bytes_per_s * window_s`` bytes in the last ``window_s``.

    Judged only once a whole window has passed since ``started`` (the grace period), from the
    running byte totals given to :meth:`too_slow` as data arrives. ``min_bytes_per_s`` 0 never judges.
    """

    def __init__(self, min_bytes_per_s: float, window_s: float, started: float) -> None:
        self.min_bytes_per_s = min_bytes_per_s
        self.window_s = window_s
        self._started = started
        self._samples: deque[tuple[float, int]] = deque([(started, 0)])  # (time, bytes received by then)

    def too_slow(self, total_bytes: int, now: float) -> float | None:
        """Record that ``total_bytes`` had arrived at ``now``; the rate of the last window if below the minimum, else None."""
        self._samples.append((now, total_bytes))
        if self.min_bytes_per_s <= 0 or now - self._started < self.window_s:
            return None
        cutoff = now - self.window_s
        while self._samples[1][0] <= cutoff:  # keep the last sample at or before the cutoff: the window's baseline
            self._samples.popleft()
        rate = (total_bytes - self._samples[0][1]) / self.window_s
        return rate if rate < self.min_bytes_per_s else None


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


# ---------------------------------------------------------------- deadlines on the sockets


@dataclass
class _Transfer:
    """One request in flight on this thread: its deadline and what its sockets delivered so far."""

    deadline: Deadline
    bytes_read: int = 0  # from the socket, headers included
    response: httpx.Response | None = None  # set once the headers are in
    expired: bool = False  # a socket operation was stopped by the deadline

    def deadline_error(self, url: str) -> str:
        """What the deadline interrupted, in words: the limit and how much had been received."""
        if self.response is not None:
            got = (f"HTTP {self.response.status_code} headers and {self.response.num_bytes_downloaded} bytes "
                   "of the body received")
        elif self.bytes_read:
            got = f"{self.bytes_read} bytes received, the response headers still incomplete"
        else:
            got = "nothing received"
        return f"request deadline of {self.deadline.limit_s:g} s (fetch.request_deadline_s) passed for {url}: {got}"


# The request each thread is making: httpx's sync client runs a request's socket I/O on the caller's thread.
_this_thread = threading.local()


def _bounded(operation: Callable[[float | None], Any], timeout: float | None, timeout_error: type[Exception]) -> Any:
    """``operation(timeout)`` with the timeout cut to what is left of this thread's request deadline, if any."""
    transfer: _Transfer | None = getattr(_this_thread, "transfer", None)
    if transfer is None:
        return operation(timeout)
    remaining = transfer.deadline.remaining()
    if timeout is not None and timeout <= remaining:
        return operation(timeout)
    if remaining <= 0:
        transfer.expired = True
        raise timeout_error(f"request deadline of {transfer.deadline.limit_s:g} s passed")
    try:
        return operation(remaining)
    except timeout_error:
        transfer.expired = True
        raise


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and TLS handshake ends by the current request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = _bounded(lambda t: self._inner.read(max_bytes, t), timeout, httpcore.ReadTimeout)
        transfer = getattr(_this_thread, "transfer", None)
        if transfer is not None:
            transfer.bytes_read += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _bounded(lambda t: self._inner.write(buffer, t), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(
            _bounded(lambda t: self._inner.start_tls(ssl_context, server_hostname, t), timeout, httpcore.ConnectTimeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore network backend handing out :class:`_DeadlineStream` sockets (connects are bounded too)."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(_bounded(
            lambda t: self._inner.connect_tcp(host, port, t, local_address, socket_options), timeout,
            httpcore.ConnectTimeout))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(_bounded(
            lambda t: self._inner.connect_unix_socket(path, t, socket_options), timeout, httpcore.ConnectTimeout))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# httpcore's exceptions and the httpx ones a transport raises instead (httpx's own table is private, so this is ours).
# Looked up along the raised exception's class hierarchy, so the most specific entry wins.
_HTTPX_ERROR_FOR: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
}


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """Re-raise an httpcore exception from the ``with`` block as the matching httpx one (others pass unchanged)."""
    try:
        yield
    except Exception as exc:
        for cls in type(exc).__mro__:
            if cls in _HTTPX_ERROR_FOR:
                raise _HTTPX_ERROR_FOR[cls](str(exc)) from exc
        raise


class _ResponseBody(httpx.SyncByteStream):
    """An httpcore response body as an httpx one: its errors become httpx errors, and closing it frees the connection."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with _as_httpx_errors():
                close()


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport whose sockets end every connect, read, write and TLS handshake by the request's deadline.

    httpx's own ``HTTPTransport`` takes no network backend, so this is a small one of our own built on public
    APIs only: an ``httpcore.ConnectionPool`` given a :class:`_DeadlineBackend`, requests and responses
    translated between httpx and httpcore, httpcore's exceptions raised as httpx's. ``limits`` bound the
    pool; ``ssl_context`` defaults to ``httpx.create_ssl_context()`` (certifi, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR``). With ``proxy`` (an ``http``, ``https`` or, with socksio installed, ``socks5`` URL,
    credentials in it allowed) every request goes through that proxy, its sockets bounded the same way.
    """

    def __init__(self, limits: httpx.Limits | None = None, *, ssl_context: ssl.SSLContext | None = None,
                 proxy: str | httpx.URL | None = None) -> None:
        limits = limits or httpx.Limits()
        self._connections = httpcore.ConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            proxy=None if proxy is None else _httpcore_proxy(proxy),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(httpcore.SyncBackend()),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` over the pool; the response's body streams (read it, then close the response)."""
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,  # httpx's per-request timeouts travel here
        )
        with _as_httpx_errors():
            core_response = self._connections.handle_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseBody(core_response.stream),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        """Close every pooled connection."""
        with _as_httpx_errors():
            self._connections.close()


def _httpcore_proxy(url: str | httpx.URL) -> httpcore.Proxy:
    """An httpcore proxy for ``url``, credentials in the URL becoming its Proxy-Authorization (parsed by ``httpx.Proxy``)."""
    proxy = httpx.Proxy(url)  # ValueError for a scheme other than http, https, socks5, socks5h
    if proxy.url.scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
        raise ValueError(f"proxy {proxy.url} is a SOCKS proxy, which needs the socksio package (pip install 'httpx[socks]')")
    return httpcore.Proxy(
        url=httpcore.URL(scheme=proxy.url.raw_scheme, host=proxy.url.raw_host, port=proxy.url.port,
                         target=proxy.url.raw_path),
        auth=proxy.raw_auth,
        headers=proxy.headers.raw,
        ssl_context=proxy.ssl_context,
    )


def environment_proxy_mounts(make_transport: Callable[[str], httpx.BaseTransport]) -> dict[str, httpx.BaseTransport | None]:
    """``httpx.Client`` mounts for the proxies the environment names, each transport made by ``make_transport(proxy_url)``.

    httpx reads ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` only when it builds its own
    transport, and its reader is private; this follows its rules with the standard library's public
    ``urllib.request.getproxies()`` (which also reads the system settings on macOS and Windows): a proxy for
    ``http://``, ``https://`` or ``all://`` URLs; each ``NO_PROXY`` host (a name matching itself and its
    subdomains, an IP address, ``localhost`` or a URL pattern) mounted as None, which httpx routes to the
    client's own transport, that is direct; ``NO_PROXY=*`` turns every proxy off.
    """
    found = urllib.request.getproxies()
    no_proxy = [host.strip() for host in found.get("no", "").split(",") if host.strip()]
    if "*" in no_proxy:
        return {}
    mounts: dict[str, httpx.BaseTransport | None] = {}
    for scheme in ("http", "https", "all"):
        if found.get(scheme):
            proxy_url = found[scheme] if "://" in found[scheme] else f"http://{found[scheme]}"
            mounts[f"{scheme}://"] = make_transport(proxy_url)
    if not mounts:
        return {}
    for host in no_proxy:
        try:
            address = ipaddress.ip_address(host.split("/")[0])
        except ValueError:
            address = None
        if "://" in host:
            mounts[host] = None
        elif address is not None and address.version == 6:
            mounts[f"all://[{host}]"] = None
        elif address is not None or host.lower() == "localhost":
            mounts[f"all://{host}"] = None
        else:  # "example.com": it and its subdomains; ".example.com": the subdomains only
            mounts[f"all://*{host}"] = None
    return mounts


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
    per-host concurrency, per-host delay) hold across them, and every fetch has the deadline and
    minimum throughput of ``cfg``. With a ``raw_store`` every body is stored by hash and a later
    fetch of the same URL is a conditional GET. ``sleep`` is used for every wait (backoff, per-host
    delay) so tests can replace it. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        cfg: FetchConfig,
        raw_store: RawStore | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.raw_store = raw_store
        self._sleep = sleep
        self._limiter = HostLimiter(cfg.concurrency, cfg.per_host_concurrency, cfg.per_host_delay_s, sleep)
        mounts = None
        if transport is None:
            transport, mounts = self._deadline_transports(cfg)
        self._client = httpx.Client(
            headers={"User-Agent": cfg.user_agent},
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout_s,
                read=cfg.read_timeout_s,
                write=cfg.read_timeout_s,
                pool=cfg.connect_timeout_s + cfg.read_timeout_s,
            ),
            follow_redirects=False,  # followed by hand: loops, counting and robots.txt per hop
            max_redirects=cfg.max_redirects,
            transport=transport,
            mounts=mounts,
        )
        self._unreachable_hosts: dict[str, str] = {}  # host -> first error, for this fetcher's lifetime
        self._robots: dict[str, Protego | None] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        self._robots_locks_guard = threading.Lock()

    @staticmethod
    def _deadline_transports(cfg: FetchConfig) -> tuple[DeadlineTransport, dict[str, httpx.BaseTransport | None]]:
        """The client's transport and mounts when none was given: a :class:`DeadlineTransport` for every route.

        Proxies: httpx ignores the environment's proxies once it is handed a transport, so we mount a
        :class:`DeadlineTransport` through each proxy that ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` name, minus
        the ``NO_PROXY`` hosts (:func:`environment_proxy_mounts`), as read when the Fetcher is made. The deadline
        then bounds the sockets to the proxy. A transport given to the Fetcher (a test's ``httpx.MockTransport``)
        is used for everything, with no proxies.
        """
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        ssl_context = httpx.create_ssl_context()  # shared by the direct and the proxied pools
        mounts = environment_proxy_mounts(lambda proxy: DeadlineTransport(limits, ssl_context=ssl_context, proxy=proxy))
        return DeadlineTransport(limits, ssl_context=ssl_context), mounts

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

        # One deadline for the whole fetch: every attempt, redirect hop and backoff wait spends from it.
        deadline = Deadline(self.cfg.request_deadline_s)
        retrying = retry_policy(self.cfg.max_retries, self.cfg.backoff_base_s, self.cfg.backoff_max_s,
                                deadline.remaining, self._sleep)
        outcome = retrying(self._follow_redirects, url, kind, headers, deadline)
        attempt = retrying.statistics["attempt_number"]
        if outcome.retryable and attempt <= self.cfg.max_retries:
            outcome.error = (f"{outcome.error} (not retried after attempt {attempt}: the next wait would pass the "
                             f"request deadline of {self.cfg.request_deadline_s:g} s)")
        elif outcome.retryable and attempt > 1:
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

    def _follow_redirects(self, url: str, kind: Kind, headers: dict[str, str], deadline: Deadline) -> _Outcome:
        chain = [url]
        current = url
        while True:
            if self.cfg.respect_robots and not self._robots_allow(current):
                return _Outcome("robots_disallowed", current,
                                error=f"robots.txt of {_origin(current)} disallows {current} for {self.cfg.user_agent!r}")
            outcome = self._request(current, kind, headers, deadline)
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

    @contextmanager
    def _slot_with_deadline(self, host: str, transfer: _Transfer) -> Iterator[None]:
        """Hold a request slot for ``host``, start ``transfer``'s deadline and bound this thread's sockets by it."""
        with self._limiter.slot(host):
            transfer.deadline.start()
            outer = getattr(_this_thread, "transfer", None)
            _this_thread.transfer = transfer
            try:
                yield
            finally:
                _this_thread.transfer = outer

    def _request(self, url: str, kind: Kind, headers: dict[str, str], deadline: Deadline) -> _Outcome:
        """One GET without following redirects, holding a host slot for its whole duration, ending by ``deadline``."""
        host = _host(url)
        if host in self._unreachable_hosts:
            # One dead host must not cost a full retry cycle for each of its hundreds of images.
            return _Outcome("unreachable", url, error=f"{self._unreachable_hosts[host]} (host already failed in this run)")
        transfer = _Transfer(deadline)
        with self._slot_with_deadline(host, transfer):
            try:
                with self._client.stream("GET", url, headers=headers) as response:
                    transfer.response = response
                    return self._read_response(url, kind, response)
            except httpx.TimeoutException as exc:
                if transfer.expired:  # not retryable: the fetch's deadline is spent
                    return _Outcome("timeout", url, error=transfer.deadline_error(url),
                                    http_status=transfer.response.status_code if transfer.response else None)
                if isinstance(exc, httpx.ConnectTimeout):
                    return _Outcome("timeout", url, retryable=True,
                                    error=f"could not connect to {host} within {self.cfg.connect_timeout_s} s")
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
        meter = ThroughputMeter(self.cfg.min_bytes_per_s, self.cfg.throughput_window_s, time.monotonic())
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > limit:
                return _Outcome("too_large", url, **base,
                                error=f"body of {url} is over the {kind} limit of {limit} bytes (stopped reading)")
            rate = meter.too_slow(response.num_bytes_downloaded, time.monotonic())
            if rate is not None:
                return _Outcome("timeout", url, retryable=True, **base, error=(
                    f"body of {url} stalled: {rate:.0f} bytes/s over the last {meter.window_s:g} s, under "
                    f"fetch.min_bytes_per_s = {meter.min_bytes_per_s:g} ({response.num_bytes_downloaded} bytes received)"))
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
        return parser is None or parser.can_fetch(url, self.cfg.user_agent)

    def _load_robots(self, origin: str) -> Protego | None:
        """The parsed robots.txt of ``origin``, or None meaning "allow everything".

        One request (redirects followed) with a deadline of its own, ``fetch.request_deadline_s``.
        """
        robots_url = f"{origin}/robots.txt"
        try:
            with self._slot_with_deadline(_host(robots_url), _Transfer(Deadline(self.cfg.request_deadline_s))):
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
            # Unreachable or timing out (its deadline included): allow, for the same reason as a 5xx above.
            return None
        return Protego.parse(bytes(received[:ROBOTS_MAX_BYTES]).decode("utf-8", errors="replace"))


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
