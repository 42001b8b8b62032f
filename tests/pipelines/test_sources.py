"""Source parsing (pure) and expansion (against a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.config import FetchConfig
from mmrag.pipelines.fetch import Fetcher
from mmrag.pipelines.sources import (
    PageTarget,
    SourceError,
    classify_source,
    expand_sources,
    normalize_url,
    parse_feed,
    parse_sitemap,
    parse_url_list,
    sniff_xml_kind,
)

SM_NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(*locs: str) -> bytes:
    entries = "".join(f"<url><loc> {loc} </loc><lastmod>2024-01-01</lastmod></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset {SM_NS}>{entries}</urlset>'.encode()


def sitemapindex(*locs: str) -> bytes:
    entries = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0"?><sitemapindex {SM_NS}>{entries}</sitemapindex>'.encode()


RSS = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>T</title><link>https://blog.example/</link>
<item><title>One</title><link>https://blog.example/one</link></item>
<item><title>Two</title><link>/two</link></item>
<item><title>One again</title><link>https://blog.example/one</link></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>urn:a</id><updated>2024-01-01T00:00:00Z</updated>
<entry><title>E1</title><id>urn:1</id><updated>2024-01-01T00:00:00Z</updated>
  <link rel="alternate" type="text/html" href="https://atom.example/posts/1"/>
  <link rel="edit" href="https://atom.example/edit/1"/></entry>
<entry><title>E2</title><id>urn:2</id><updated>2024-01-01T00:00:00Z</updated>
  <link href="posts/2"/></entry>
</feed>"""


# ---------------------------------------------------------------- pure parsers


def test_parse_sitemap_urlset_resolves_and_dedups():
    pages, children = parse_sitemap(urlset("https://x.example/a", "/b", "https://x.example/a"), "https://x.example/sitemap.xml")
    assert pages == ["https://x.example/a", "https://x.example/b"] and children == []


def test_parse_sitemap_index():
    pages, children = parse_sitemap(sitemapindex("https://x.example/s1.xml", "https://x.example/s2.xml"), "https://x.example/")
    assert pages == [] and children == ["https://x.example/s1.xml", "https://x.example/s2.xml"]


def test_parse_sitemap_without_namespace_and_errors():
    assert parse_sitemap(b"<urlset><url><loc>https://a.example/</loc></url></urlset>", "https://a.example/")[0] == [
        "https://a.example/"
    ]
    with pytest.raises(ValueError, match="not well-formed"):
        parse_sitemap(b"<urlset><url>", "https://a.example/")
    with pytest.raises(ValueError, match="not a sitemap"):
        parse_sitemap(RSS, "https://a.example/")


def test_parse_sitemap_does_not_expand_external_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE urlset [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
        f"<urlset {SM_NS}><url><loc>https://a.example/&xxe;</loc></url></urlset>"
    ).encode()
    pages, _ = parse_sitemap(xxe, "https://a.example/")
    assert not any("TOPSECRET" in page for page in pages)


def test_parse_feed_rss():
    assert parse_feed(RSS, "https://blog.example/feed.xml") == ["https://blog.example/one", "https://blog.example/two"]


def test_parse_feed_atom_uses_alternate_links_and_resolves_relative():
    assert parse_feed(ATOM, "https://atom.example/feed.atom") == [
        "https://atom.example/posts/1",
        "https://atom.example/posts/2",
    ]


def test_parse_feed_rejects_non_feeds():
    with pytest.raises(ValueError, match="not an RSS or Atom feed"):
        parse_feed(b"<html><body>hi</body></html>", "https://a.example/")


def test_parse_url_list():
    text = "# my list\nhttps://a.example/1\n\n   https://a.example/2  \n  # indented comment\n"
    assert parse_url_list(text) == ["https://a.example/1", "https://a.example/2"]


def test_sniff_xml_kind():
    assert sniff_xml_kind(urlset("https://a/")) == "sitemap"
    assert sniff_xml_kind(sitemapindex("https://a/s.xml")) == "sitemap"
    assert sniff_xml_kind(RSS) == "feed"
    assert sniff_xml_kind(ATOM) == "feed"
    assert sniff_xml_kind(b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>') == "feed"
    assert sniff_xml_kind(b"<html><body>x</body></html>") is None
    assert sniff_xml_kind(b"not xml at all") is None


def test_normalize_url():
    assert normalize_url("HTTPS://Example.COM:443/a/B?q=1#frag") == "https://example.com/a/B?q=1"
    assert normalize_url("http://example.com") == "http://example.com/"
    assert normalize_url("http://example.com:8080/x") == "http://example.com:8080/x"


# ---------------------------------------------------------------- classification and expansion


@pytest.fixture
def fetcher(tmp_path):
    with Fetcher(FetchConfig(connect_timeout_s=0.5, read_timeout_s=0.5, max_retries=0), sleep=lambda s: None) as f:
        yield f


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_classify_local_sources(tmp_path):
    site = tmp_path / "site"
    write(site / "a.html", "<html></html>")
    write(tmp_path / "urls.txt", "https://a.example/\n")
    write(tmp_path / "map.xml", urlset("https://a.example/"))
    write(tmp_path / "news.xml", RSS)
    assert classify_source(str(site)) == "directory"
    assert classify_source(str(site / "a.html")) == "html_file"
    assert classify_source((site / "a.html").as_uri()) == "html_file"
    assert classify_source(str(tmp_path / "urls.txt")) == "url_list"
    assert classify_source(str(tmp_path / "map.xml")) == "sitemap"
    assert classify_source(str(tmp_path / "news.xml")) == "feed"
    assert classify_source("https://a.example/post/1") == "url"


def test_classify_xml_looking_urls_by_content(server, fetcher):
    server.route("/sitemap.xml", lambda h: h.respond(200, urlset("https://a/"), {"Content-Type": "application/xml"}))
    server.route("/blog/rss", lambda h: h.respond(200, RSS, {"Content-Type": "application/rss+xml"}))
    server.route("/feed-the-birds", lambda h: h.html())  # an article that only mentions "feed"
    assert classify_source(server.url("/sitemap.xml"), fetcher) == "sitemap"
    assert classify_source(server.url("/blog/rss"), fetcher) == "feed"
    assert classify_source(server.url("/feed-the-birds"), fetcher) == "url"
    assert classify_source(server.url("/sitemap.xml")) == "sitemap"  # no fetcher: by name


def xml(body: bytes):
    """A route serving ``body`` as application/xml."""
    return lambda h: h.respond(200, body, {"Content-Type": "application/xml"})


def test_expand_nested_sitemaps_with_depth_limit_and_dedup(server, fetcher):
    u = server.url
    server.route("/sitemap_index.xml", xml(sitemapindex(u("/s-pages.xml"), u("/s-nested.xml"))))
    server.route("/s-pages.xml", xml(urlset(u("/p1"), u("/p2#section"))))
    server.route("/s-nested.xml", xml(sitemapindex(u("/s-deep.xml"), u("/s-pages.xml"))))
    server.route("/s-deep.xml", xml(sitemapindex(u("/s-too-deep.xml"))))
    server.route("/s-too-deep.xml", xml(urlset(u("/never"))))
    same_page = u("/p1").replace("http://", "HTTP://") + "#top"

    targets, errors = expand_sources([u("/sitemap_index.xml"), same_page], fetcher)

    assert [t.url for t in targets] == [u("/p1"), u("/p2")]
    assert all(t.origin == u("/sitemap_index.xml") and t.local_path is None for t in targets)
    assert server.hits["/s-pages.xml"] == 1 and server.hits["/s-deep.xml"] == 1
    assert server.hits["/s-too-deep.xml"] == 0
    assert errors == [
        SourceError(u("/sitemap_index.xml"), f"sitemap {u('/s-too-deep.xml')}: nested more than 3 levels deep, not read")
    ]


def test_expand_feeds(server, fetcher):
    server.route("/feed.xml", lambda h: h.respond(200, RSS, {"Content-Type": "application/rss+xml"}))
    server.route("/atom", lambda h: h.respond(200, ATOM, {"Content-Type": "application/atom+xml"}))
    targets, errors = expand_sources([server.url("/feed.xml"), server.url("/atom")], fetcher)
    assert errors == []
    assert [t.url for t in targets] == [
        "https://blog.example/one",
        server.url("/two"),  # relative links resolve against the feed's own URL
        "https://atom.example/posts/1",
        server.url("/posts/2"),
    ]
    assert targets[0].origin == server.url("/feed.xml") and targets[2].origin == server.url("/atom")


def test_expand_url_list_with_dedup_and_bad_lines(tmp_path, fetcher):
    listing = write(
        tmp_path / "urls.txt",
        "# reading list\nhttps://A.example/x#one\nhttps://a.example:443/x\n\nmailto:me@a.example\nhttps://a.example/y\n",
    )
    targets, errors = expand_sources([str(listing), "https://a.example/y?"], fetcher)
    assert targets == [
        PageTarget("https://a.example/x", None, str(listing)),
        PageTarget("https://a.example/y", None, str(listing)),
    ]
    assert len(errors) == 1 and "mailto:" in errors[0].message and errors[0].source == str(listing)


def test_expand_directory_excludes_top_level_index_only(tmp_path, fetcher):
    site = tmp_path / "site"
    for name in ("index.html", "b.htm", "a.html", "sub/index.html", "sub/c.HTML", "notes.txt"):
        write(site / name, "<html></html>")
    targets, errors = expand_sources([str(site)], fetcher)
    assert errors == []
    assert [Path(t.local_path).relative_to(site.resolve()).as_posix() for t in targets] == [
        "a.html", "b.htm", "sub/c.HTML", "sub/index.html",
    ]
    assert all(t.url == Path(t.local_path).as_uri() and t.origin == str(site) for t in targets)

    everything, _ = expand_sources([str(site)], fetcher, exclude=[])
    assert len(everything) == 5
    no_index, _ = expand_sources([str(site)], fetcher, exclude=["*index.html"])
    assert len(no_index) == 3


def test_expand_html_file_and_duplicates_across_sources(tmp_path, fetcher):
    page = write(tmp_path / "one.html", "<html></html>")
    targets, errors = expand_sources([str(page), page.as_uri(), str(tmp_path)], fetcher, exclude=[])
    assert errors == []
    assert targets == [PageTarget(page.resolve().as_uri(), str(page.resolve()), str(page))]


def test_expand_reports_missing_and_empty_sources(tmp_path, server, fetcher):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    bad_xml = write(tmp_path / "junk.xml", "<html><body>x</body></html>")
    sources = [str(tmp_path / "nope"), str(tmp_path / "missing.txt"), str(empty_dir), str(bad_xml),
               server.url("/sitemap.xml"), "ftp://files.example/x"]

    targets, errors = expand_sources(sources, fetcher)

    assert targets == []
    assert [e.source for e in errors] == sources
    messages = [e.message for e in errors]
    assert messages[0].startswith("no such file or directory") and messages[1].startswith("no such file")
    assert messages[2] == "yielded no pages"
    assert "neither a sitemap nor an RSS/Atom feed" in messages[3]
    assert "HTTP 404" in messages[4]
    assert "not an http(s) URL" in messages[5]


def test_a_sitemap_index_listing_itself_says_so(server, fetcher):
    u = server.url
    server.route("/loop.xml", xml(sitemapindex(u("/loop.xml"))))
    server.route("/a.xml", xml(sitemapindex(u("/b.xml"))))
    server.route("/b.xml", xml(sitemapindex(u("/a.xml"))))

    targets, errors = expand_sources([u("/loop.xml"), u("/a.xml")], fetcher)

    assert targets == []
    assert errors == [
        SourceError(u("/loop.xml"), f"sitemap {u('/loop.xml')} lists itself as a child sitemap (a loop): not read again"),
        SourceError(u("/a.xml"), f"sitemap {u('/b.xml')} lists its parent sitemap {u('/a.xml')} as a child sitemap "
                                 "(a loop): not read again"),
    ]  # and not only "yielded no pages"


def test_a_url_list_that_is_not_utf8_names_the_byte_offset(tmp_path, fetcher):
    listing = tmp_path / "urls.txt"
    listing.write_bytes(b"https://a.example/\nhttps://b.example/caf\xe9\n")
    targets, errors = expand_sources([str(listing)], fetcher)
    assert targets == []
    assert errors == [SourceError(str(listing), f"URL list {listing} is not UTF-8 text (byte offset 40: b'\\xe9')")]
