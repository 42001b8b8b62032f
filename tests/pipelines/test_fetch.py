"""Fetcher against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import tenacity

from mmrag.config import FetchConfig
from mmrag.records import sha256_hex
from mmrag.pipelines.fetch import Fetcher, content_type_problem, parse_retry_after, retry_policy
from mmrag.pipelines.rawstore import RawStore

PAGE = b"<!doctype html><html><body><p>Hello</p></body></html>"


def make_cfg(**overrides) -> FetchConfig:
    values = dict(
        connect_timeout_s=0.5, read_timeout_s=0.5, max_retries=2, backoff_base_s=0.001, backoff_max_s=5.0,
        max_page_bytes=10_000, max_image_bytes=20_000,
    )
    values.update(overrides)
    return FetchConfig(**values)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_fetcher(tmp_path, sleeps):
    """Build fetchers with a recording, non-waiting sleep and a raw store; closes them afterwards."""
    made = []

    def build(store: bool = True, real_sleep: bool = False, **cfg_overrides) -> Fetcher:
        fetcher = Fetcher(
            make_cfg(**cfg_overrides),
            RawStore(tmp_path / "raw") if store else None,
            sleep=time.sleep if real_sleep else sleeps.append,
        )
        made.append(fetcher)
        return fetcher

    yield build
    for fetcher in made:
        fetcher.close()


def test_ok_page_sends_user_agent_and_stores_body(server, make_fetcher, tmp_path):
    url = server.route("/page", lambda h: h.html(PAGE))
    fetcher = make_fetcher()

    result = fetcher.fetch(url)

    assert result.status == "ok" and result.ok
    assert result.http_status == 200 and result.attempts == 1 and result.error is None
    assert result.body == PAGE and result.body_sha256 == sha256_hex(PAGE)
    assert result.content_type == "text/html; charset=utf-8"
    assert result.final_url == url and result.fetched_at is not None
    assert {h["user-agent"] for h in server.headers_of("/page")} == {fetcher.cfg.user_agent}
    assert {h["user-agent"] for h in server.headers_of("/robots.txt")} == {fetcher.cfg.user_agent}
    store = RawStore(tmp_path / "raw")
    assert store.get(result.body_sha256) == PAGE
    assert store.recall(url)["body_sha256"] == result.body_sha256


def test_404_is_not_retried(server, make_fetcher, sleeps):
    result = make_fetcher().fetch(server.url("/missing"))
    assert result.status == "http_404" and result.http_status == 404
    assert result.attempts == 1 and server.hits["/missing"] == 1 and sleeps == []
    assert "404" in result.error and result.body is None


def test_403_is_not_retried(server, make_fetcher, sleeps):
    url = server.route("/forbidden", lambda h: h.respond(403, b"no"))
    result = make_fetcher().fetch(url)
    assert result.status == "http_403" and result.attempts == 1
    assert server.hits["/forbidden"] == 1 and sleeps == []


def test_500_then_200_succeeds_on_retry(server, make_fetcher, sleeps):
    def flaky(h):
        if server.hits["/flaky"] == 1:
            h.respond(500, b"oops")
        else:
            h.html(PAGE)

    url = server.route("/flaky", flaky)
    result = make_fetcher().fetch(url)
    assert result.status == "ok" and result.body == PAGE
    assert result.attempts == 2 and server.hits["/flaky"] == 2
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.001


def test_always_500_gives_up_after_max_retries(server, make_fetcher, sleeps):
    url = server.route("/broken", lambda h: h.respond(500, b"oops"))
    result = make_fetcher(max_retries=2).fetch(url)
    assert result.status == "http_500" and result.http_status == 500
    assert result.attempts == 3 and server.hits["/broken"] == 3
    assert len(sleeps) == 2 and sleeps[0] <= sleeps[1] * 2  # exponential with jitter
    assert "3 attempts" in result.error


@pytest.mark.parametrize(("retry_after", "expected_sleep"), [("2", 2.0), ("100", 5.0)])
def test_429_honours_retry_after_capped(server, make_fetcher, sleeps, retry_after, expected_sleep):
    def limited(h):
        if server.hits["/limited"] == 1:
            h.respond(429, b"slow down", {"Retry-After": retry_after})
        else:
            h.html(PAGE)

    url = server.route("/limited", limited)
    result = make_fetcher(backoff_max_s=5.0).fetch(url)
    assert result.status == "ok" and result.attempts == 2
    assert sleeps == [expected_sleep]


def test_slow_response_times_out(server, make_fetcher):
    def slow(h):
        time.sleep(1.0)
        h.html(PAGE)

    url = server.route("/slow", slow)
    started = time.monotonic()
    result = make_fetcher(read_timeout_s=0.15, max_retries=1, respect_robots=False).fetch(url)
    assert result.status == "timeout" and result.attempts == 2
    assert "0.15" in result.error
    assert time.monotonic() - started < 1.0


def test_redirect_loop(server, make_fetcher):
    server.route("/a", lambda h: h.respond(302, headers={"Location": "/b"}))
    server.route("/b", lambda h: h.respond(301, headers={"Location": server.url("/a")}))
    result = make_fetcher().fetch(server.url("/a"))
    assert result.status == "redirect_loop" and result.attempts == 1
    assert result.error == f"redirect loop: {server.url('/a')} -> {server.url('/b')} -> {server.url('/a')}"
    assert server.hits["/a"] == 1 and server.hits["/b"] == 1


def test_redirects_within_and_beyond_the_limit(server, make_fetcher):
    for n in range(6):
        server.route(f"/r{n}", lambda h, n=n: h.respond(302, headers={"Location": f"/r{n + 1}"}))
    server.route("/r6", lambda h: h.html(PAGE))
    fetcher = make_fetcher(max_redirects=3)

    too_many = fetcher.fetch(server.url("/r0"))
    assert too_many.status == "too_many_redirects" and "more than 3 redirects" in too_many.error

    within = fetcher.fetch(server.url("/r3"))
    assert within.status == "ok" and within.final_url == server.url("/r6") and within.url == server.url("/r3")


@pytest.mark.parametrize("with_length", [True, False])
def test_oversized_body_is_too_large(server, make_fetcher, with_length):
    big = b"<html>" + b"x" * 200_000
    url = server.route("/big", lambda h: h.respond(200, big, {"Content-Type": "text/html"}, content_length=with_length))
    result = make_fetcher(max_page_bytes=1000).fetch(url)
    assert result.status == "too_large" and result.body is None
    assert ("Content-Length" in result.error) == with_length


def test_image_limit_is_separate_from_page_limit(server, make_fetcher):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 5000
    url = server.route("/img.png", lambda h: h.respond(200, png, {"Content-Type": "image/png"}, content_length=False))
    fetcher = make_fetcher(max_page_bytes=1000, max_image_bytes=10_000)
    assert fetcher.fetch(url, kind="image").body == png
    assert make_fetcher(max_image_bytes=1000).fetch(url, kind="image").status == "too_large"


def test_content_type_checks(server, make_fetcher):
    pdf = server.route("/doc.pdf", lambda h: h.respond(200, b"%PDF-1.4", {"Content-Type": "application/pdf"}))
    png = server.route("/pic", lambda h: h.respond(200, b"\x89PNG", {"Content-Type": "image/png"}))
    octet = server.route("/blob", lambda h: h.respond(200, b"\x89PNG", {"Content-Type": "application/octet-stream"}))
    rss = server.route("/rss", lambda h: h.respond(200, b"<rss/>", {"Content-Type": "application/rss+xml"}))
    bare_html = server.route("/bare-html", lambda h: h.respond(200, b"  <!DOCTYPE html><html></html>"))
    bare_text = server.route("/bare-text", lambda h: h.respond(200, b"just text"))
    fetcher = make_fetcher()

    bad = fetcher.fetch(pdf)
    assert bad.status == "bad_content_type" and "application/pdf" in bad.error and bad.body is None
    assert fetcher.fetch(png, kind="image").status == "ok"
    assert fetcher.fetch(octet, kind="image").status == "ok"
    assert fetcher.fetch(png, kind="page").status == "bad_content_type"
    assert fetcher.fetch(pdf, kind="image").status == "bad_content_type"
    assert fetcher.fetch(rss, kind="feed").status == "ok"
    assert fetcher.fetch(bare_html).status == "ok"
    sniffed = fetcher.fetch(bare_text)
    assert sniffed.status == "bad_content_type" and "does not look like HTML" in sniffed.error


def test_latin1_page_body_is_returned_intact(server, make_fetcher):
    body = "<html><body>Café déjà vu</body></html>".encode("latin-1")
    url = server.route("/latin", lambda h: h.respond(200, body, {"Content-Type": "text/html; charset=ISO-8859-1"}))
    result = make_fetcher().fetch(url)
    assert result.status == "ok" and result.body == body
    assert result.content_type == "text/html; charset=ISO-8859-1"


def test_etag_conditional_get_returns_cached_body(server, make_fetcher):
    def tagged(h):
        if h.headers.get("If-None-Match") == '"v1"':
            h.respond(304, headers={"ETag": '"v1"'}, content_length=False)
        else:
            h.html(PAGE, ETag='"v1"')

    url = server.route("/tagged", tagged)
    fetcher = make_fetcher()

    first = fetcher.fetch(url)
    assert first.status == "ok" and first.etag == '"v1"' and not first.from_cache
    second = fetcher.fetch(url)
    assert second.status == "not_modified" and second.http_status == 304 and second.from_cache
    assert second.body == PAGE and second.body_sha256 == first.body_sha256
    assert second.content_type == first.content_type
    assert [h.get("if-none-match") for h in server.headers_of("/tagged")] == [None, '"v1"']
    unconditional = fetcher.fetch(url, conditional=False)
    assert unconditional.status == "ok" and "if-none-match" not in server.headers_of("/tagged")[-1]


def test_last_modified_sends_if_modified_since_and_survives_a_new_fetcher(server, make_fetcher):
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"

    def dated(h):
        if h.headers.get("If-Modified-Since") == stamp:
            h.respond(304, content_length=False)
        else:
            h.html(PAGE, **{"Last-Modified": stamp})

    url = server.route("/dated", dated)
    assert make_fetcher().fetch(url).status == "ok"
    again = make_fetcher().fetch(url)  # a later run: same raw store, new client
    assert again.status == "not_modified" and again.body == PAGE and again.last_modified == stamp


def test_without_raw_store_a_304_is_never_requested(server, make_fetcher):
    url = server.route("/tagged", lambda h: h.html(PAGE, ETag='"v1"'))
    fetcher = make_fetcher(store=False)
    assert fetcher.fetch(url).status == "ok"
    assert fetcher.fetch(url).status == "ok"
    assert all("if-none-match" not in h for h in server.headers_of("/tagged"))


def test_robots_txt_is_honoured_and_fetched_once(server, make_fetcher):
    robots = b"User-agent: *\nDisallow: /private\n"
    server.route("/robots.txt", lambda h: h.respond(200, robots, {"Content-Type": "text/plain"}))
    server.route("/private/page", lambda h: h.html(PAGE))
    server.route("/private/pic.png", lambda h: h.respond(200, b"img", {"Content-Type": "image/png"}))
    server.route("/public", lambda h: h.html(PAGE))
    server.route("/to-private", lambda h: h.respond(302, headers={"Location": "/private/page"}))
    fetcher = make_fetcher()

    blocked = fetcher.fetch(server.url("/private/page"))
    assert blocked.status == "robots_disallowed" and "robots.txt" in blocked.error
    assert fetcher.fetch(server.url("/private/pic.png"), kind="image").status == "robots_disallowed"
    assert fetcher.fetch(server.url("/to-private")).status == "robots_disallowed"
    assert fetcher.fetch(server.url("/public")).status == "ok"
    assert server.hits["/private/page"] == 0 and server.hits["/private/pic.png"] == 0
    assert server.hits["/robots.txt"] == 1

    ignoring = make_fetcher(respect_robots=False)
    assert ignoring.fetch(server.url("/private/page")).status == "ok"


def test_robots_txt_wildcards_and_agent_groups(server, make_fetcher):
    robots = b"User-agent: *\nDisallow: /\n\nUser-agent: mmrag\nDisallow: /*.pdf$\nAllow: /\n"
    server.route("/robots.txt", lambda h: h.respond(200, robots, {"Content-Type": "text/plain"}))
    server.route("/page", lambda h: h.html(PAGE))
    server.route("/doc.pdf", lambda h: h.respond(200, b"%PDF", {"Content-Type": "application/pdf"}))
    fetcher = make_fetcher()
    assert fetcher.fetch(server.url("/page")).status == "ok"  # our own group wins over '*'
    assert fetcher.fetch(server.url("/doc.pdf"), kind="image").status == "robots_disallowed"
    assert server.hits["/doc.pdf"] == 0


def test_robots_txt_over_the_size_cap_is_cut(server, make_fetcher):
    filler = b"# " + b"x" * 1000 + b"\n"
    robots = b"User-agent: *\n" + filler * 600 + b"Disallow: /late\n"  # the rule sits past 512 KiB: ignored
    server.route("/robots.txt", lambda h: h.respond(200, robots, {"Content-Type": "text/plain"}))
    server.route("/late", lambda h: h.html(PAGE))
    assert make_fetcher(max_page_bytes=2_000_000).fetch(server.url("/late")).status == "ok"


def test_robots_txt_server_error_allows(server, make_fetcher):
    server.route("/robots.txt", lambda h: h.respond(503, b"down"))
    url = server.route("/page", lambda h: h.html(PAGE))
    assert make_fetcher().fetch(url).status == "ok"


def _count_in_flight(server, path: str, hold_s: float):
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def handler(h):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(hold_s)
        with lock:
            in_flight -= 1
        h.html(PAGE)

    server.route(path, handler)
    return lambda: peak


@pytest.mark.parametrize(("limits", "expected_peak"), [
    ({"per_host_concurrency": 2, "concurrency": 8}, 2),
    ({"per_host_concurrency": 8, "concurrency": 1}, 1),
])
def test_concurrency_limits(server, make_fetcher, limits, expected_peak):
    peak = _count_in_flight(server, "/busy", hold_s=0.1)
    fetcher = make_fetcher(**limits)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: fetcher.fetch(server.url("/busy")), range(8)))
    assert all(r.status == "ok" for r in results)
    assert peak() == expected_peak


def test_per_host_delay_spaces_request_starts(server, make_fetcher):
    url = server.route("/spaced", lambda h: h.html(PAGE))
    fetcher = make_fetcher(real_sleep=True, per_host_delay_s=0.1, respect_robots=False, per_host_concurrency=4)
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: fetcher.fetch(url), range(3)))
    starts = sorted(t for path, _, t in server.requests if path == "/spaced")
    assert len(starts) == 3
    assert all(later - earlier >= 0.08 for earlier, later in zip(starts, starts[1:]))


def test_unreachable_host(make_fetcher, sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = make_fetcher(max_retries=1).fetch(f"http://127.0.0.1:{port}/page")
    assert result.status == "unreachable" and result.attempts == 2
    assert "127.0.0.1" in result.error and len(sleeps) == 1


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http:///nohost", "http://host:99999/"])
def test_invalid_url(make_fetcher, url):
    result = make_fetcher().fetch(url)
    assert result.status == "invalid_url" and result.attempts == 0 and result.error


def test_fetch_local(tmp_path, make_fetcher):
    page = tmp_path / "a page.html"
    page.write_bytes(PAGE)
    fetcher = make_fetcher(max_page_bytes=len(PAGE))

    result = fetcher.fetch_local(page)
    assert result.status == "ok" and result.body == PAGE and result.content_type == "text/html"
    assert result.url == page.resolve().as_uri() and result.url.startswith("file://") and "%20" in result.url
    assert RawStore(tmp_path / "raw").get(result.body_sha256) == PAGE

    assert fetcher.fetch_local(tmp_path / "nope.html").status == "not_found"
    page.write_bytes(PAGE + b"!")
    assert fetcher.fetch_local(page).status == "too_large"
    assert fetcher.fetch_local(tmp_path).status == "error"


def _waits(policy: tenacity.Retrying, attempt: int, retry_after_s: float | None = None, n: int = 200) -> list[float]:
    """The waits ``policy`` picks before the retry after ``attempt`` (a retryable result), sampled ``n`` times."""
    state = tenacity.RetryCallState(policy, None, (), {})
    state.attempt_number = attempt
    state.set_result(SimpleNamespace(retryable=True, retry_after_s=retry_after_s))
    return [policy.wait(state) for _ in range(n)]


def test_retry_policy_waits():
    policy = retry_policy(3, base_s=0.5, max_s=30, remaining_s=lambda: 1e9)
    # Exponential, capped, with equal jitter: 50-100 % of min(max, base * 2**(n-1)), not all the same.
    first, third, tenth = _waits(policy, 1), _waits(policy, 3), _waits(policy, 10)
    assert all(0.25 <= w <= 0.5 for w in first) and len(set(first)) > 1
    assert all(1.0 <= w <= 2.0 for w in third)
    assert all(15 <= w <= 30 for w in tenth)
    # Retry-After wins over the exponential wait, capped at max_s.
    assert _waits(policy, 1, retry_after_s=2.0, n=1) == [2.0]
    assert _waits(policy, 1, retry_after_s=100.0, n=1) == [30]


def test_retry_policy_stops_at_max_retries_or_the_deadline():
    attempts = []

    def always_failing():
        attempts.append(1)
        return SimpleNamespace(retryable=True, retry_after_s=None, n=len(attempts))

    sleeps = []
    last = retry_policy(2, base_s=0.1, max_s=1, remaining_s=lambda: 1e9, sleep=sleeps.append)(always_failing)
    assert last.n == 3 and len(attempts) == 3 and len(sleeps) == 2  # the last result, not an exception
    attempts.clear()
    sleeps.clear()
    late = retry_policy(5, base_s=10, max_s=60, remaining_s=lambda: 3.0, sleep=sleeps.append)(always_failing)
    assert late.n == 1 and sleeps == []  # a 5-10 s wait would pass a deadline 3 s away: no retry


def test_pure_helpers():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 60.0
    assert content_type_problem("feed", "text/xml; charset=utf-8", []) is None
    assert content_type_problem("feed", "application/json", []) is not None
    assert content_type_problem("page", "TEXT/HTML; charset=x", ["text/html"]) is None


def test_unknown_host_name_is_not_retried_and_short_circuits_later_requests():
    sleeps: list[float] = []
    fetcher = Fetcher(FetchConfig(max_retries=3, respect_robots=True), sleep=sleeps.append)
    with fetcher:
        first = fetcher.fetch("http://images.does-not-exist.invalid/a.png", kind="image")
        second = fetcher.fetch("http://images.does-not-exist.invalid/b.png", kind="image")
    assert first.status == "unreachable" and first.attempts == 1 and sleeps == []
    assert second.status == "unreachable" and "already failed in this run" in second.error
