"""Turn the CLI's ``SOURCE...`` arguments into page targets.

A source is one of (see :func:`classify_source`):

* ``url``       an http(s) page URL;
* ``sitemap``   an http(s) URL or local ``.xml`` file holding a ``<urlset>`` or ``<sitemapindex>``;
* ``feed``      an http(s) URL or local ``.xml`` file holding an RSS or Atom feed;
* ``url_list``  a local text file, one URL a line (``#`` comments and blank lines ignored);
* ``html_file`` a local ``.html``/``.htm`` file;
* ``directory`` a local directory, searched recursively for ``.html``/``.htm`` files.

The parsers are pure; :func:`expand_sources` is the one function doing I/O (through a
:class:`~mmrag.pipelines.fetch.Fetcher`).
"""

from __future__ import annotations

import fnmatch
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

import feedparser
from lxml import etree

from mmrag.pipelines.fetch import Fetcher, url_problem

SourceKind = Literal["url", "sitemap", "feed", "url_list", "html_file", "directory"]

#: Files in a directory source that are skipped by default (fnmatch globs, see :func:`expand_sources`).
DEFAULT_EXCLUDE = ("index.html",)
#: How many levels of sitemaps are read: an index, its child indexes, and their children.
MAX_SITEMAP_DEPTH = 3

_HTML_SUFFIXES = (".html", ".htm")
_XML_HINTS = ("sitemap", "feed", "rss", "atom")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class PageTarget:
    """One page to fetch and index: an http(s) URL, or a local file (``url`` is then its ``file://`` URI)."""

    url: str
    local_path: str | None
    origin: str


@dataclass(frozen=True)
class SourceError:
    """A source argument (or part of one) that yielded no targets, and why."""

    source: str
    message: str


# ---------------------------------------------------------------- pure parsers


def _safe_xml_parser() -> etree.XMLParser:
    # No DTD loading, no entity expansion, no network: sitemaps and feeds are untrusted input.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def normalize_url(url: str) -> str:
    """The form of ``url`` used to spot duplicates and emitted in targets.

    Lowercases scheme and host, drops the fragment and a default port (80/443), and turns an
    empty path into ``/``. Path and query are kept as they are.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{port}"
    if parts.username is not None:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        netloc = f"{userinfo}@{netloc}"
    path = parts.path or ("/" if scheme in _DEFAULT_PORTS else "")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def sniff_xml_kind(data: bytes) -> Literal["sitemap", "feed"] | None:
    """``"sitemap"`` for a ``<urlset>``/``<sitemapindex>`` root, ``"feed"`` for RSS/RDF/Atom, else None."""
    try:
        for _event, element in etree.iterparse(
            io.BytesIO(data), events=("start",), resolve_entities=False, no_network=True, load_dtd=False
        ):
            root = etree.QName(element).localname.lower()
            if root in ("urlset", "sitemapindex"):
                return "sitemap"
            if root in ("rss", "feed", "rdf"):
                return "feed"
            return None
    except etree.LxmlError:
        return None
    return None


def parse_sitemap(xml: bytes, base_url: str) -> tuple[list[str], list[str]]:
    """Page URLs of a ``<urlset>`` and child sitemap URLs of a ``<sitemapindex>``, absolute and de-duplicated.

    Namespace-agnostic. Raises ValueError when ``xml`` is not well-formed or is not a sitemap.
    """
    try:
        root = etree.fromstring(xml, parser=_safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
    if root is None:
        raise ValueError("empty XML document")
    kind = etree.QName(root).localname
    if kind not in ("urlset", "sitemapindex"):
        raise ValueError(f"not a sitemap: the root element is <{kind}>, expected <urlset> or <sitemapindex>")
    locs = []
    for entry in root:
        if not isinstance(entry.tag, str):  # comments, processing instructions
            continue
        for child in entry:
            if isinstance(child.tag, str) and etree.QName(child).localname == "loc" and (child.text or "").strip():
                locs.append(urljoin(base_url, child.text.strip()))
    locs = _dedup(locs)
    return (locs, []) if kind == "urlset" else ([], locs)


def parse_feed(data: bytes, base_url: str) -> list[str]:
    """Entry links of an RSS or Atom feed, absolute (resolved against ``base_url``) and de-duplicated in order.

    Raises ValueError when ``data`` is not a feed feedparser can read.
    """
    # content-location gives feedparser the document's base for xml:base resolution.
    parsed = feedparser.parse(data, response_headers={"content-location": base_url})
    if not parsed.get("version") and not parsed.entries:
        reason = parsed.get("bozo_exception")
        raise ValueError(f"not an RSS or Atom feed{f': {reason}' if reason else ''}")
    links = []
    for entry in parsed.entries:
        link = entry.get("link")
        if not link:
            alternates = [
                link_info.get("href")
                for link_info in entry.get("links", [])
                if link_info.get("rel", "alternate") == "alternate"
            ]
            link = next((href for href in alternates if href), None)
        if link:
            absolute = urljoin(base_url, link.strip())
            if urlsplit(absolute).scheme in ("http", "https"):
                links.append(absolute)
    return _dedup(links)


def parse_url_list(text: str) -> list[str]:
    """Non-blank lines of ``text`` that are not ``#`` comments, stripped, in order."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _local_path(source: str) -> Path | None:
    """The local path ``source`` names (a plain path or a ``file://`` URI), or None for a URL."""
    parts = urlsplit(source)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    if len(parts.scheme) > 1 and "://" in source:  # any other URL; one letter would be a Windows drive
        return None
    return Path(source).expanduser()


def _looks_like_xml_url(url: str) -> bool:
    path = urlsplit(url).path.lower()
    return path.endswith(".xml") or any(hint in url.lower() for hint in _XML_HINTS)


def _classify_by_name(source: str) -> SourceKind:
    path = _local_path(source)
    if path is None:
        return "url"
    if path.is_dir():
        return "directory"
    if path.suffix.lower() in _HTML_SUFFIXES:
        return "html_file"
    return "url_list"


def classify_source(source: str, fetcher: Fetcher | None = None) -> SourceKind:
    """What kind of source ``source`` is (see the module docstring).

    A local ``.xml`` file, and an http(s) URL ending in ``.xml`` or containing ``sitemap``,
    ``feed``, ``rss`` or ``atom``, is read and sniffed (:func:`sniff_xml_kind`); a URL is read only
    when ``fetcher`` is given and counts as ``url`` when it is not a sitemap or feed. Without a
    fetcher such a URL is classified by name (``sitemap`` in it -> ``sitemap``, else ``feed``).
    A missing local path is classified by its name alone.
    """
    kind, _body, _error = _classify(source, fetcher)
    return kind


def _classify(source: str, fetcher: Fetcher | None) -> tuple[SourceKind, bytes | None, str | None]:
    """The kind of ``source``, the body read to decide it (if any), and why reading it failed (if it did)."""
    path = _local_path(source)
    if path is not None:
        if path.is_file() and path.suffix.lower() == ".xml":
            try:
                body = path.read_bytes()
            except OSError as exc:
                return "url_list", None, f"cannot read {path}: {exc.strerror or exc}"
            kind = sniff_xml_kind(body)
            if kind is None:
                return "url_list", None, f"{path} is neither a sitemap nor an RSS/Atom feed"
            return kind, body, None
        return _classify_by_name(source), None, None
    if not _looks_like_xml_url(source):
        return "url", None, None
    if fetcher is None:
        return ("sitemap" if "sitemap" in source.lower() else "feed"), None, None
    result = fetcher.fetch(source, kind="feed")
    if result.status == "bad_content_type":  # e.g. an HTML article whose URL mentions "feed"
        return "url", None, None
    if result.body is None:
        return "url", None, f"cannot fetch it to tell a sitemap or feed from a page: {result.error or result.status}"
    return sniff_xml_kind(result.body) or "url", result.body, None


# ---------------------------------------------------------------- expansion


class _Collector:
    """Accumulates targets (first occurrence of each normalised URL wins) and errors."""

    def __init__(self) -> None:
        self.targets: list[PageTarget] = []
        self.errors: list[SourceError] = []
        self._seen: set[str] = set()

    def add_url(self, url: str, origin: str) -> None:
        problem = url_problem(url)
        if problem:
            self.errors.append(SourceError(origin, problem))
            return
        self._add(PageTarget(normalize_url(url), None, origin))

    def add_file(self, path: Path, origin: str) -> None:
        resolved = path.resolve()
        self._add(PageTarget(resolved.as_uri(), str(resolved), origin))

    def _add(self, target: PageTarget) -> None:
        if target.url not in self._seen:
            self._seen.add(target.url)
            self.targets.append(target)

    def error(self, source: str, message: str) -> None:
        self.errors.append(SourceError(source, message))


def _html_files(directory: Path, exclude: Iterable[str]) -> list[Path]:
    patterns = list(exclude)
    found = []
    for path in directory.rglob("*"):
        if path.suffix.lower() in _HTML_SUFFIXES and path.is_file():
            relative = path.relative_to(directory).as_posix()
            if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns):
                found.append((relative, path))
    return [path for _relative, path in sorted(found)]


def _expand_sitemap(
    url: str, body: bytes | None, origin: str, fetcher: Fetcher, out: _Collector, depth: int, seen: set[str],
    chain: tuple[str, ...] = (),
) -> int:
    """Add the pages of the sitemap at ``url`` (and its children) to ``out``; return how many were found."""
    seen.add(url)
    if body is None:
        result = fetcher.fetch(url, kind="feed")
        if result.body is None:
            out.error(origin, f"sitemap {url}: {result.error or result.status}")
            return 0
        body = result.body
    try:
        pages, children = parse_sitemap(body, url)
    except ValueError as exc:
        out.error(origin, f"sitemap {url}: {exc}")
        return 0
    for page in pages:
        out.add_url(page, origin)
    found = len(pages)
    for child in children:
        if child == url or child in chain:  # a loop, not a sitemap listed twice: say so (it may be why nothing was found)
            out.error(origin, f"sitemap {url} lists {'itself' if child == url else f'its parent sitemap {child}'} "
                              "as a child sitemap (a loop): not read again")
            continue
        if child in seen:
            continue
        if depth >= MAX_SITEMAP_DEPTH:
            out.error(origin, f"sitemap {child}: nested more than {MAX_SITEMAP_DEPTH} levels deep, not read")
            continue
        found += _expand_sitemap(child, None, origin, fetcher, out, depth + 1, seen, (*chain, url))
    return found


def _expand_one(source: str, fetcher: Fetcher, exclude: Iterable[str], out: _Collector) -> int:
    """Add the targets of one source to ``out``; return how many it yielded (before de-duplication)."""
    path = _local_path(source)
    if path is None:
        problem = url_problem(source)
        if problem:
            out.error(source, f"unsupported source: {problem}")
            return 0
    elif not path.exists():
        out.error(source, f"no such file or directory: {path}")
        return 0

    kind, body, error = _classify(source, fetcher)
    if error:
        out.error(source, error)
        return 0
    base_url = path.resolve().as_uri() if path is not None else source
    if kind == "url":
        out.add_url(source, source)
        return 1
    if kind == "html_file":
        out.add_file(path, source)
        return 1
    if kind == "directory":
        files = _html_files(path, exclude)
        for file in files:
            out.add_file(file, source)
        return len(files)
    if kind == "sitemap":
        return _expand_sitemap(base_url, body, source, fetcher, out, 1, set())
    if kind == "feed":
        if body is None:
            result = fetcher.fetch(source, kind="feed")
            if result.body is None:
                out.error(source, f"feed {source}: {result.error or result.status}")
                return 0
            body = result.body
        try:
            links = parse_feed(body, base_url)
        except ValueError as exc:
            out.error(source, f"feed {source}: {exc}")
            return 0
        for link in links:
            out.add_url(link, source)
        return len(links)
    # url_list
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        out.error(source, f"URL list {path} is not UTF-8 text (byte offset {exc.start}: {exc.object[exc.start:exc.start + 1]!r})")
        return 0
    except OSError as exc:
        out.error(source, f"cannot read URL list {path}: {exc.strerror or exc}")
        return 0
    urls = parse_url_list(text)
    for url in urls:
        out.add_url(url, source)
    return len(urls)


def expand_sources(
    sources: list[str], fetcher: Fetcher, *, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> tuple[list[PageTarget], list[SourceError]]:
    """Expand source arguments into de-duplicated page targets, plus one error per source problem.

    Never raises for a bad source: a missing path, an unreadable list, a failed fetch or a
    malformed sitemap/feed becomes a :class:`SourceError`, as does a source that yields nothing.
    URLs are emitted normalised (:func:`normalize_url`); the first occurrence wins. Sitemap
    indexes are followed :data:`MAX_SITEMAP_DEPTH` levels deep.

    ``exclude`` applies to directory sources: fnmatch globs matched against each file's POSIX
    path relative to the directory (``*`` also matches ``/``), so the default ``index.html``
    skips only the top-level ``index.html`` and ``*index.html`` would skip every one.
    """
    out = _Collector()
    for source in sources:
        errors_before = len(out.errors)
        found = _expand_one(source, fetcher, exclude, out)
        if found == 0 and len(out.errors) == errors_before:
            out.error(source, "yielded no pages")
    return out.targets, out.errors
