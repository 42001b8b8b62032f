"""Parse one HTML page into a :class:`~mmrag.records.ParsedDocument` (pure: bytes in, record out).

Which library does what
-----------------------
* **Decoding** (:func:`decode_html`): a byte-order mark wins, then the ``charset`` of the
  Content-Type header, then the page's own ``<meta charset>`` / ``http-equiv`` / XML declaration
  (found by BeautifulSoup's ``EncodingDetector``), then ``charset_normalizer`` detection, then
  UTF-8. Legacy labels are mapped the way browsers map them (WHATWG Encoding Standard):
  ``iso-8859-1``/``ascii`` decode as cp1252, ``shift_jis`` as cp932, ``gb2312`` as gb18030, ...
* **DOM and content**: BeautifulSoup over lxml's forgiving HTML parser. This module picks the
  content root (``<article>``, else ``[itemprop=articleBody]``, ``<main>``, ``[role=main]``,
  ``<body>``), prunes chrome and walks the root in document order with a heading stack, which is
  what keeps text blocks, images and captions in order with their section path. trafilatura is
  *not* used for the body: on the reference corpora its XML output moves images out of order and
  keeps "More Posts" sidebars, and it drops ``srcset``/``<picture>`` information.
* **Metadata**: htmldate (trafilatura's date extractor) for the published date (``YYYY-MM-DD``);
  title, canonical URL and language come from the DOM.
* **Fallback**: when the walk finds no text at all but trafilatura's extractor does, its plain
  text is used (one paragraph block per line, empty section path) and a warning says so.

Choices worth knowing
---------------------
* Title: ``og:title`` (the publisher's headline, without the site-name suffix ``<title>`` usually
  carries), else the first ``<h1>`` of the content root, else ``<title>``.
* Chrome removed: ``script style noscript template iframe object embed svg canvas form button
  input select textarea nav aside dialog``, comments, hidden elements (``hidden``,
  ``aria-hidden="true"``, inline ``display:none``), ``<header>``/``<footer>`` not inside an
  ``<article>``/``<main>`` (a header/footer inside the article is the article's own: title,
  byline), block elements whose class/id names chrome (``sidebar``, ``comments``, ``disqus``,
  ``share``, ``related``, ``newsletter``, ``footer``, ...) and sections headed "More posts",
  "Related articles", "Comments", "You may also like", ... No element holding more than half of
  the page's text is ever pruned (ASP.NET pages wrap everything in a ``<form>``).
* Section path: ``h1``..``h6`` on a stack; a heading pops every heading of the same or a deeper
  level. A heading repeating its parent's text (Medium repeats the ``<h1>`` title as an ``<h3>``)
  appears once in the path. Headings inside links (teaser cards) are text, not sections.
* Text is kept as rendered: runs of ASCII whitespace collapse to one space, ``<br>`` and block
  boundaries inside a block become ``\\n``, ``<pre>`` keeps its whitespace verbatim. Non-breaking
  and other Unicode spaces (``\\xa0``, ``\\u200a``) are kept as they are; compare texts with
  :func:`normalize_whitespace` when that matters.
* Blocks: ``paragraph`` (``<p>`` and loose inline text), ``list`` (items joined by ``\\n``),
  ``pre``, ``blockquote``, ``table`` (cells joined by `` | ``, rows by ``\\n``; a table holding
  headings/figures/nested tables is layout and is walked instead) and ``caption`` (a
  ``<figcaption>`` of a figure without images, e.g. a captioned equation or code listing, and an
  image's sibling caption, see below). The ``<figcaption>`` of an image figure is the image's
  caption and not a text block; a sibling caption stays in the text as well (it reads as part of
  the article, and text labels quote it), as one ``caption`` block.
* Images: ``<img>`` and ``<picture>``; the largest ``srcset`` candidate by ``w`` (else the highest
  ``x``) across ``<source>``s and the ``<img>``; lazy-load ``data-src``/``data-srcset`` are used
  when ``src`` is missing or a ``data:`` placeholder. ``data:`` URIs are recorded as they are;
  images without any source are skipped.
* Image captions, first found wins: the ``<figcaption>`` of the image's ``<figure>``; a *sibling
  caption* (``caption_source="sibling"``); ``alt``; ``title``. Many blogs caption without
  ``<figure>``: colah's posts write ``<div class="bigcenterimgcontainer"><img><div
  class="caption">..</div></div>`` or put the caption ``<div>`` right after the image's wrapper,
  WordPress ``<p class="wp-caption-text">``, Blogger ``<td class="tr-caption">``. A sibling caption
  is a ``<figcaption>`` or an element whose class contains "caption" (holding no image, heading,
  list or table), or an element whose text is all inside one such, that *follows* the image, or
  follows a wrapper the image is the only content of (no text of its own; up to four levels:
  ``<p><a><img></a></p>``), with only whitespace, ``<br>`` and other images in between: images
  followed by one caption share it, and a caption after a paragraph is not an image's. Captions
  before images are not looked for: in the image, caption, image, caption sequence they belong to
  the previous image. Sibling captions rank below ``<figcaption>`` (the explicit markup) and
  above ``alt`` (written for screen readers, often empty or a file name; colah's repeat the
  caption at best).
* Image context: ``context_before``/``context_after`` hold the article text nearest the image in
  its section, for the image's text surrogate (most figures are explained by the paragraph that
  introduces them, "Consider what happens if we unroll the loop:"): the text of the block holding
  the image on each side of it (an image inside a paragraph or list), else the nearest block
  before/after in the same section that is not a caption; whitespace-normalised and clipped to
  about 400 characters (:func:`clip_context`: the end of the text before, the start of the text
  after).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from urllib.parse import urljoin

import charset_normalizer
from bs4 import BeautifulSoup, CData, Comment, NavigableString, Tag
from bs4.dammit import EncodingDetector

from mmrag.records import ImageRef, ParsedDocument, TextBlock

# -- decoding ------------------------------------------------------------------------------------

# Labels browsers decode differently from Python's codec of the same name (WHATWG Encoding Standard).
_BROWSER_ENCODINGS = {
    "ascii": "cp1252",
    "latin_1": "cp1252",
    "iso8859_1": "cp1252",
    "iso8859_9": "cp1254",
    "iso8859_11": "cp874",
    "tis_620": "cp874",
    "shift_jis": "cp932",
    "cp932": "cp932",
    "euc_kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
}
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.I)


def _codec_for(label: str | None, *, in_document: bool = False) -> str | None:
    """Python codec name browsers would use for a charset label; None when unknown.

    A UTF-16 label inside the document itself cannot be true of bytes that were read as ASCII
    to find it; browsers then use UTF-8 (``in_document=True``).
    """
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name.replace("-", "_")
    except LookupError:
        return None
    if in_document and name.startswith("utf_16"):
        return "utf-8"
    return _BROWSER_ENCODINGS.get(name, name)


def charset_from_content_type(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header value, if any."""
    match = _CHARSET_PARAM.search(content_type or "")
    return match.group(1) if match else None


def _detect_codec(data: bytes) -> str | None:
    """UTF-8 when the bytes are valid UTF-8, else charset_normalizer's best guess, near-ties among
    legacy code pages going to windows-1252. (Detection needs some text: a few bytes can fool it.)

    Short Western-European texts decode without errors in several single-byte code pages and
    charset_normalizer may rank cp1257 or cp1250 first; windows-1252 is the web's commonest
    legacy encoding and the WHATWG default for undeclared Western pages.
    """
    try:
        data.decode("utf-8")
        return "utf-8"  # valid UTF-8 (or plain ASCII) is almost never an accident
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    western = next((m for m in matches if "cp1252" in m.could_be_from_charset), None)
    if western is not None and western is not best and western.chaos <= best.chaos + 0.1:
        return "cp1252"
    return _codec_for(best.encoding)


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str, list[str]]:
    """Decode page bytes the way a browser would; returns ``(text, codec, warnings)``.

    Order: byte-order mark, Content-Type ``charset``, the document's own declaration
    (``<meta charset>``, ``http-equiv``, XML declaration), then detection (:func:`_detect_codec`),
    then UTF-8. The chosen codec decodes with replacement characters, and a warning counts them.
    """
    warnings: list[str] = []
    data, bom_encoding = EncodingDetector.strip_byte_order_mark(body)
    header_label = charset_from_content_type(content_type)
    declared_label = EncodingDetector.find_declared_encoding(data, is_html=True)
    codec = None
    declarations = (("byte-order mark", bom_encoding), ("Content-Type", header_label), ("document", declared_label))
    for source, label in declarations:
        if label:
            codec = _codec_for(label, in_document=source == "document")
            if codec:
                break
            warnings.append(f"unknown charset {label!r} declared by {source}; ignored")
    if codec is None and data:
        codec = _detect_codec(data)
    codec = codec or "utf-8"
    text = data.decode(codec, errors="replace")
    replaced = text.count("\ufffd") - data.decode(codec, errors="ignore").count("\ufffd")
    if replaced:
        warnings.append(f"{replaced} undecodable byte sequence(s) replaced while decoding as {codec}")
    return text, codec, warnings


# -- text rendering ------------------------------------------------------------------------------

_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCK_TAGS = frozenset(
    "address article aside blockquote body center details dialog dd div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hgroup hr html li main menu nav ol p pre section summary table "
    "tbody thead tfoot tr td th caption ul".split()
)
_NEVER_CONTENT = ("head", "script", "style", "noscript", "template", "link", "meta", "title")
_CHROME_TAGS = (
    "iframe object embed svg canvas form button input select textarea nav aside dialog video audio".split()
)
_ASCII_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
_BREAK = "\x00"  # marks a structural line break while rendering; NULs are removed from input first
_MARK = "\x01"  # marks where an image sits when rendering the text around it; removed from input too
_BREAK_RUN = re.compile(r" *(?:\x00 *)+")
_XML_PROLOG = re.compile(r"^\s*<\?xml[^>]*\?>")


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace, NBSP and other Unicode spaces included, to one space; strip."""
    return " ".join(text.split())


def _is_text(node: object) -> bool:
    return isinstance(node, NavigableString) and (type(node) is NavigableString or isinstance(node, CData))


_EXIT = object()  # marks leaving a block element during rendering


def _render(nodes: Iterable[object], *, verbatim: bool = False, mark: Tag | None = None,
            skip: Tag | None = None) -> str:
    """Visible text of ``nodes``: ``<br>`` and nested block boundaries become ``\\n``.

    ``mark`` (an image) is rendered as :data:`_MARK`, so the text around it can be split there;
    ``skip`` (the image's caption) is left out. Iterative, so arbitrarily deep markup cannot
    exhaust the recursion limit.
    """
    parts: list[str] = []
    stack: list[object] = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        if node is _EXIT:
            parts.append(_BREAK)
        elif node is mark:
            parts.append(_MARK)
        elif node is skip:
            parts.append(_BREAK)
        elif isinstance(node, Tag):
            if node.name == "br":
                parts.append(_BREAK)
            elif node.name not in ("img", "picture", "source"):
                if node.name in _BLOCK_TAGS:
                    parts.append(_BREAK)
                    stack.append(_EXIT)
                stack.extend(reversed(node.contents))
        elif _is_text(node):
            parts.append(str(node))
    raw = "".join(parts)
    if verbatim:
        raw = raw.replace("\r\n", "\n").replace(_BREAK, "\n")
        return raw.strip("\r\n").rstrip()
    text = _BREAK_RUN.sub("\n", _ASCII_WHITESPACE.sub(" ", raw))
    return text.strip()


def _one_line(text: str) -> str:
    return _ASCII_WHITESPACE.sub(" ", text).strip()


# -- chrome pruning ------------------------------------------------------------------------------

_CHROME_NAME = re.compile(
    r"(?:^|[-_])(?:comments?|disqus|share|sharing|social|related|newsletter|subscribe|subscription|sidebar|"
    r"breadcrumbs?|navbar|menu|cookies?|advert|advertisement|ads?|promo|popup|modal|pagination|pager|"
    r"footer|masthead|widget|more-(?:posts|stories|articles))(?:[-_]|$)",
    re.I,
)
_CHROME_CLASS_EXACT = frozenset({"sr-only", "screen-reader-text", "visually-hidden", "visuallyhidden", "skip-link"})
_CHROME_CLASS_TAGS = frozenset({"div", "section", "ul", "ol", "dl", "table", "p", "aside", "header", "footer", "nav"})
_RELATED_HEADING = re.compile(
    r"^(?:(?:more|other|related|recommended|popular|recent|latest|similar|trending)\s+"
    r"(?:posts?|articles?|stories|reads?|reading|from\b.*)"
    r"|you\s+(?:may|might)\s+also\s+(?:like|enjoy).*|read\s+next|up\s+next|\d*\s*comments?|\d*\s*responses?"
    r"|leave\s+a\s+(?:comment|reply)|share\s+this(?:\s+\w+)?|sign\s+up\s+for\s+.*newsletter.*)\s*[:.!]?$",
    re.I,
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def _subtree_text_lengths(root: Tag) -> dict[int, int]:
    """Visible characters under every tag (by ``id``), in one bottom-up pass."""
    lengths: dict[int, int] = {}
    for node in reversed([root, *root.descendants]):
        if isinstance(node, Tag):
            lengths[id(node)] = sum(
                lengths.get(id(child), 0) if isinstance(child, Tag) else len(child.strip()) if _is_text(child) else 0
                for child in node.children
            )
    return lengths


class _Pruner:
    """Removes chrome in one top-down pass, never an element holding more than half of the page's text."""

    def __init__(self, body: Tag):
        self.text_lengths = _subtree_text_lengths(body)
        self.limit = self.text_lengths.get(id(body), 0) / 2

    def _removable(self, el: Tag) -> bool:
        return self.text_lengths.get(id(el), 0) <= self.limit

    def prune(self, body: Tag) -> None:
        """Tags that are never article content, hidden elements, site header/footer, chrome-named blocks."""
        stack: list[tuple[Tag, bool, bool]] = [(body, _is_main_like(body), False)]
        while stack:
            el, in_main, in_code = stack.pop()
            for child in list(el.children):
                if not isinstance(child, Tag):
                    continue
                if self._is_chrome(child, in_main, in_code) and self._removable(child):
                    child.decompose()
                    continue
                stack.append((child, in_main or _is_main_like(child), in_code or child.name in ("pre", "code")))

    @staticmethod
    def _is_chrome(el: Tag, in_main: bool, in_code: bool) -> bool:
        return (
            el.name in _CHROME_TAGS
            or _is_hidden(el)
            or (el.name in ("header", "footer") and not in_main)
            or (el.name in _CHROME_CLASS_TAGS and not in_code and _has_chrome_name(el))
        )

    def prune_related_sections(self, root: Tag) -> None:
        """Sections headed "More posts", "Related articles", "Comments", ... inside the content root."""
        for heading in root.find_all(_HEADINGS):
            if heading.parent is not None and _RELATED_HEADING.match(_one_line(_render([heading]))):
                self._remove_section(heading, root)
            # (a heading inside an already removed section only edits that detached subtree)

    def _remove_section(self, heading: Tag, root: Tag) -> None:
        container = heading.parent
        if container is not root and container.find(_HEADINGS) is heading and self._removable(container):
            container.extract()
            return
        # The heading sits among the content: drop it and what follows up to the next heading of its rank.
        level = int(heading.name[1])
        doomed = [heading]
        for sibling in heading.next_siblings:
            if isinstance(sibling, Tag) and sibling.name in _HEADINGS and int(sibling.name[1]) <= level:
                break
            doomed.append(sibling)
        for node in doomed:
            node.extract()


def _is_main_like(tag: Tag) -> bool:
    return tag.name in ("article", "main") or tag.get("role") == "main"


def _is_hidden(tag: Tag) -> bool:
    if tag.name in ("html", "body"):
        return False
    return (
        tag.has_attr("hidden")
        or str(tag.get("aria-hidden", "")).lower() == "true"
        or bool(_HIDDEN_STYLE.search(str(tag.get("style", ""))))
    )


def _has_chrome_name(tag: Tag) -> bool:
    classes = tag.get("class") or []
    if isinstance(classes, str):
        classes = classes.split()
    names = [*classes, str(tag.get("id") or "")]
    return any(name in _CHROME_CLASS_EXACT or _CHROME_NAME.search(name) for name in names if name)


def _content_root(soup: BeautifulSoup) -> Tag:
    """The element holding the article: the largest ``<article>``, ``[itemprop=articleBody]``, ``<main>``,
    ``[role=main]`` that holds at least a quarter of the page's text; else ``<body>``."""
    body = soup.body or soup
    body_len = len(body.get_text(strip=True))
    for candidates in (
        soup.find_all("article"),
        soup.find_all(attrs={"itemprop": "articleBody"}),
        soup.find_all("main"),
        soup.find_all(attrs={"role": "main"}),
    ):
        if candidates:
            best = max(candidates, key=lambda el: len(el.get_text(strip=True)))
            if body_len and len(best.get_text(strip=True)) >= 0.25 * body_len:
                return best
    return body


# -- images --------------------------------------------------------------------------------------


def parse_srcset(srcset: str) -> list[tuple[str, float | None, float | None]]:
    """Candidates of a ``srcset`` value as ``(url, width, density)``; URLs may contain commas."""
    candidates: list[tuple[str, float | None, float | None]] = []
    pos, n = 0, len(srcset)
    while pos < n:
        while pos < n and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = pos
            while pos < n and srcset[pos] != ",":
                pos += 1
            descriptor = srcset[start:pos].strip()
        if not url:
            continue
        width = density = None
        for token in descriptor.split():
            try:
                if token.endswith("w"):
                    width = float(token[:-1])
                elif token.endswith("x"):
                    density = float(token[:-1])
            except ValueError:
                pass
        candidates.append((url, width, density))
    return candidates


def largest_candidate(candidates: list[tuple[str, float | None, float | None]]) -> str | None:
    """URL of the widest candidate when any has a ``w`` descriptor, else of the highest density (1x default)."""
    if not candidates:
        return None
    with_width = [c for c in candidates if c[1] is not None]
    if with_width:
        return max(with_width, key=lambda c: c[1])[0]
    return max(candidates, key=lambda c: c[2] if c[2] is not None else 1.0)[0]


def _img_sources(img: Tag) -> list[tuple[str, float | None, float | None]]:
    srcset = str(img.get("srcset") or img.get("data-srcset") or "")
    src = str(img.get("src") or "").strip()
    if not src or src.startswith("data:"):
        src = str(img.get("data-src") or img.get("data-lazy-src") or img.get("data-original") or "").strip() or src
    candidates = parse_srcset(srcset)
    if src:
        candidates.append((src, None, None))
    return candidates


def _figure_caption(figure: Tag) -> Tag | None:
    for caption in figure.find_all("figcaption"):
        if caption.find_parent("figure") is figure and _one_line(_render([caption])):
            return caption
    return None


def _figure_has_images(figure: Tag) -> bool:
    return figure.find(("img", "picture")) is not None


# Sibling captions: how far up image-only wrappers (<a>, <p>, <div class="imgcontainer">, <td>, <tr>)
# the search climbs, and the longest text a caption's holder may have for its descendants to be searched.
_CAPTION_WRAPPER_LEVELS = 4
_CAPTION_HOLDER_MAX_CHARS = 2000
_NOT_IN_CAPTION = ("img", "picture", "figure", "table", "ul", "ol", "pre", *("h1", "h2", "h3", "h4", "h5", "h6"))


def _has_caption_class(tag: Tag) -> bool:
    classes = tag.get("class") or []
    if isinstance(classes, str):
        classes = classes.split()
    return any("caption" in name.lower() for name in classes)


def _caption_shaped(tag: Tag) -> bool:
    """``<figcaption>`` or a class naming a caption (``caption``, ``wp-caption-text``, ``imageCaption``,
    ``tr-caption``, ...), holding no image, heading, list, table or figure (``div.wp-caption`` and
    Blogger's ``table.tr-caption-container`` wrap the image *and* its caption: containers, not captions)."""
    return (
        (tag.name == "figcaption" or _has_caption_class(tag))
        and tag.name not in _NOT_IN_CAPTION
        and tag.find(_NOT_IN_CAPTION) is None
    )


# -- context -------------------------------------------------------------------------------------

CONTEXT_CHARS = 400  # about this many characters of text are kept on each side of an image


def clip_context(text: str, limit: int = CONTEXT_CHARS, *, keep_end: bool = False) -> str:
    """``text`` whitespace-normalised and cut to about ``limit`` characters at a word boundary.

    The start is kept (``…`` marks the cut at the end), or with ``keep_end`` the end (``…`` first):
    the text before an image keeps its end, the one nearest the image.
    """
    text = normalize_whitespace(text)
    if len(text) <= limit:
        return text
    if keep_end:
        cut = text[-limit:]
        space = cut.find(" ")
        if 0 <= space < limit // 2:
            cut = cut[space + 1:]
        return "…" + cut
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut + "…"


# -- the walk ------------------------------------------------------------------------------------


def _holds_block_elements(root: Tag) -> dict[int, bool]:
    """For every tag (by ``id``): does it contain a block-level element? One bottom-up pass."""
    holds: dict[int, bool] = {}
    for node in reversed([root, *root.descendants]):
        if isinstance(node, Tag):
            holds[id(node)] = any(
                isinstance(child, Tag) and (child.name in _BLOCK_TAGS or holds.get(id(child), False))
                for child in node.children
            )
    return holds


class _Walker:
    """Walks the content root in document order, collecting blocks and images under a heading stack."""

    def __init__(self, root: Tag, base_url: str):
        self.base_url = base_url
        self.root = root
        self.headings: list[tuple[int, str]] = []
        self.blocks: list[tuple[str, str, tuple[str, ...]]] = []
        self.images: list[ImageRef] = []
        self._holds_blocks = _holds_block_elements(root)
        self._text_lengths = _subtree_text_lengths(root)
        self._caption_ids: set[int] = set()  # sibling captions attached to an image: emitted as caption blocks
        # Per image: (blocks emitted before it, index of the block holding it or None, text before and
        # after it inside that block), resolved into context_before/context_after by image_contexts().
        self._anchors: list[tuple[int, int | None, str, str]] = []
        self._holder: tuple[list[object], int | None] | None = None  # nodes of the block being emitted, its index

    # structure

    def section_path(self) -> tuple[str, ...]:
        path: list[str] = []
        for _, text in self.headings:
            if not path or normalize_whitespace(path[-1]).casefold() != normalize_whitespace(text).casefold():
                path.append(text)
        return tuple(path)

    def _is_block(self, tag: Tag) -> bool:
        """Block-level tags, and unknown or inline tags wrapping blocks (``<d-article>``, ``<font>``)."""
        return tag.name in _BLOCK_TAGS or self._holds_blocks.get(id(tag), False)

    # emitting

    def _add_block(self, kind: str, text: str) -> int | None:
        """Append a block unless its text is blank; its index, or None when nothing was added."""
        if not text.strip():
            return None
        self.blocks.append((kind, text, self.section_path()))
        return len(self.blocks) - 1

    def _add_images_in(self, nodes: list[object], block_index: int | None = None) -> None:
        """Record the images inside ``nodes``, the content of the block just emitted (``block_index``)."""
        self._holder = (nodes, block_index)
        try:
            self._add_images(nodes)
        finally:
            self._holder = None

    def _add_images(self, nodes: list[object]) -> None:
        for node in nodes:
            if not isinstance(node, Tag):
                continue
            if node.name in ("img", "picture"):
                found: Iterable[Tag] = [node]
            else:
                found = node.find_all(("img", "picture"))
            for el in found:
                if el.name == "img" and el.find_parent("picture") is not None:
                    continue  # counted with its <picture>
                self._add_image(el)

    def _add_image(self, el: Tag) -> None:
        """One :class:`ImageRef` for ``el`` (an ``<img>`` or ``<picture>``); nothing when it has no source."""
        if el.name == "picture":
            img = el.find("img")
            candidates = [
                c for source in el.find_all("source")
                for c in parse_srcset(str(source.get("srcset") or source.get("data-srcset") or ""))
            ]
            if img is not None:
                candidates += _img_sources(img)
        else:
            img = el
            candidates = _img_sources(el)
        src = largest_candidate(candidates)
        if not src:
            return
        src = src.strip()
        if not src.lower().startswith("data:"):
            src = urljoin(self.base_url, src)
        alt = _one_line(str(img.get("alt") or "")) if img is not None else ""
        title = _one_line(str((img.get("title") if img is not None else None) or el.get("title") or ""))
        figure = el.find_parent("figure")
        caption_el = _figure_caption(figure) if figure is not None else None
        caption = ""
        if caption_el is not None:
            caption, source = _one_line(_render([caption_el])), "figcaption"
        elif (caption_el := self._sibling_caption(el)) is not None:
            caption, source = _one_line(_render([caption_el])), "sibling"
            self._caption_ids.add(id(caption_el))
        elif alt:
            caption, source = alt, "alt"
        elif title:
            caption, source = title, "title"
        else:
            source = "none"
        self.images.append(
            ImageRef(
                src=src,
                caption=caption,
                caption_source=source,
                alt=alt,
                title=title,
                section_path=self.section_path(),
                position=len(self.images),
                in_figure=figure is not None,
            )
        )
        self._anchors.append((len(self.blocks), *self._text_around(el, caption_el)))

    def _text_around(self, el: Tag, caption: Tag | None) -> tuple[int | None, str, str]:
        """Index of the block holding image ``el`` (None when it stands alone) and that block's text
        before and after it, the image's own ``caption`` left out."""
        if self._holder is None:
            return None, "", ""
        nodes, index = self._holder
        if index is None:
            return None, "", ""
        rendered = _render(nodes, mark=el, skip=caption)
        before, _, after = rendered.partition(_MARK)
        return index, before.replace(_MARK, " "), after.replace(_MARK, " ")

    def _sibling_caption(self, el: Tag) -> Tag | None:
        """The caption-shaped element right after image ``el``, or after the wrapper(s) ``el`` is the only
        content of (``<p><a><img></a></p><p class="caption">``); None when anything with text comes first.

        Whitespace, ``<br>`` and other images (or image-only wrappers) are stepped over, so a group of
        images followed by one caption shares it; anything else stops the search, an empty element
        too (it may be a script-filled figure or a pruned video with a caption of its own).
        Only *following* elements are looked at:
        colah, WordPress, Blogger and Squarespace put captions after images, and looking back would take
        the previous figure's caption in the common image, caption, image, caption sequence.
        """
        node = el
        for _ in range(_CAPTION_WRAPPER_LEVELS):
            for sibling in node.next_siblings:
                if not isinstance(sibling, Tag):
                    if _is_text(sibling) and sibling.strip():
                        return None  # loose text between image and caption candidate
                    continue
                caption = self._caption_in(sibling)
                if caption is not None:
                    return caption
                if sibling.name != "br" and not self._is_image_group(sibling):
                    return None
            parent = node.parent
            if parent is None or parent is self.root or self._text_lengths.get(id(parent), 0):
                return None  # the wrapper holds text of its own: the image is not its only content
            node = parent
        return None

    def _is_image_group(self, tag: Tag) -> bool:
        """An image, or an element holding images and no visible text."""
        return tag.name in ("img", "picture") or (
            not self._text_lengths.get(id(tag), 0) and tag.find(("img", "picture")) is not None
        )

    def _caption_in(self, tag: Tag) -> Tag | None:
        """``tag`` when it is caption-shaped, or its one caption-shaped descendant holding all its text
        (``<p><span class="caption">..</span></p>``, Blogger's ``<tr><td class="tr-caption">``)."""
        length = self._text_lengths.get(id(tag), 0)
        if not length:
            return None
        if _caption_shaped(tag):
            return tag
        if length > _CAPTION_HOLDER_MAX_CHARS or tag.find(("img", "picture")) is not None:
            return None
        inner = tag.find(_caption_shaped)
        if inner is not None and self._text_lengths.get(id(inner), 0) == length:
            return inner
        return None

    def image_contexts(self) -> list[ImageRef]:
        """The images with ``context_before``/``context_after`` filled in from the blocks around them.

        Each side is the text of the image's holding block on that side of the image when there is
        some, else the nearest block of the same section that is not a caption (a caption block, or
        one repeating the image's caption), clipped by :func:`clip_context`.
        """
        images = []
        for ref, (emitted, holder, inside_before, inside_after) in zip(self.images, self._anchors):
            before = normalize_whitespace(inside_before) or self._nearest_text(ref, holder, range(emitted - 1, -1, -1))
            after = normalize_whitespace(inside_after) or self._nearest_text(ref, holder, range(emitted, len(self.blocks)))
            images.append(replace(ref, context_before=clip_context(before, keep_end=True),
                                  context_after=clip_context(after)))
        return images

    def _nearest_text(self, ref: ImageRef, holder: int | None, indices: Iterable[int]) -> str:
        """Text of the first block among ``indices`` that can serve as context for ``ref``; "" at a section change."""
        caption = normalize_whitespace(ref.caption)
        for index in indices:
            kind, text, path = self.blocks[index]
            if path != ref.section_path:
                return ""  # nothing nearer in the image's own section
            if index != holder and kind != "caption" and normalize_whitespace(text) != caption:
                return text
        return ""

    # walking

    def walk(self, root: Tag) -> None:
        """Visit ``root`` in document order, turning loose inline runs into paragraphs.

        Iterative (a stack of child iterators), so deeply nested markup cannot exhaust recursion.
        """
        stack: list[tuple[Iterator[object], list[object]]] = [(iter(list(root.children)), [])]
        while stack:
            children, run = stack[-1]
            child = next(children, None)
            if child is None:
                self._flush(run)
                stack.pop()
            elif isinstance(child, Tag) and self._is_block(child):
                self._flush(run)
                run.clear()
                container = self._visit_block(child)
                if container is not None:
                    stack.append((iter(list(container.children)), []))
            elif isinstance(child, Tag) or _is_text(child):
                run.append(child)

    def _flush(self, run: list[object]) -> None:
        if not run:
            return
        index = self._add_block("paragraph", _render(run))
        self._add_images_in(list(run), index)

    def _leaf(self, kind: str, el: Tag, text: str) -> None:
        index = self._add_block(kind, text)
        self._add_images_in([el], index)

    def _visit_block(self, el: Tag) -> Tag | None:
        """Emit a block element; return it when it is a container to descend into."""
        name = el.name
        if id(el) in self._caption_ids:  # an earlier image's sibling caption: kept as text, marked a caption
            self._leaf("caption", el, _render([el]))
        elif name in _HEADINGS:
            if el.find_parent("a") is not None:  # a teaser card's title, not a section of this page
                self._leaf("paragraph", el, _render([el]))
                return None
            text = _one_line(_render([el]))
            if text:
                level = int(name[1])
                while self.headings and self.headings[-1][0] >= level:
                    self.headings.pop()
                self.headings.append((level, text))
            self._add_images_in([el])
        elif name == "p":
            self._leaf("paragraph", el, _render([el]))
        elif name in ("ul", "ol", "dl", "menu", "blockquote") and el.find(_HEADINGS) is not None:
            return el  # holds sections (often an unclosed <ul> swallowing the rest of the page)
        elif name in ("ul", "ol", "dl", "menu"):
            lines = (_render([child]) for child in el.children)
            self._leaf("list", el, "\n".join(line for line in lines if line))
        elif name == "pre":
            self._leaf("pre", el, _render(el.children, verbatim=True))
        elif name == "blockquote":
            self._leaf("blockquote", el, _render([el]))
        elif name == "table":
            if el.find(("h1", "h2", "h3", "h4", "h5", "h6", "table", "figure", "pre", "blockquote")) is not None:
                return el  # layout table
            self._leaf("table", el, _table_text(el))
        elif name == "figcaption":
            figure = el.find_parent("figure")
            if figure is None or not _figure_has_images(figure):
                self._leaf("caption", el, _render([el]))
        elif name != "hr":
            return el
        return None


def _table_text(table: Tag) -> str:
    rows: list[str] = []
    caption = table.find("caption")
    if caption is not None:
        rows.append(_one_line(_render([caption])))
    for tr in table.find_all("tr"):
        cells = [_one_line(_render([cell])) for cell in tr.find_all(("td", "th"), recursive=False)]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(row for row in rows if row)


# -- metadata ------------------------------------------------------------------------------------


def _meta_content(soup: BeautifulSoup, *keys: str) -> str | None:
    for key in keys:
        for attr in ("property", "name", "http-equiv", "itemprop"):
            tag = soup.find("meta", attrs={attr: re.compile(f"^{re.escape(key)}$", re.I)})
            if tag is not None and str(tag.get("content") or "").strip():
                return str(tag["content"]).strip()
    return None


def _canonical_url(soup: BeautifulSoup, base_url: str) -> str | None:
    for link in soup.find_all("link", href=True):
        rel = link.get("rel") or []
        rels = rel.split() if isinstance(rel, str) else rel
        if "canonical" in (r.lower() for r in rels) and str(link["href"]).strip():
            return urljoin(base_url, str(link["href"]).strip())
    return None


def _language(soup: BeautifulSoup) -> str | None:
    html = soup.find("html")
    lang = None
    if html is not None:
        lang = html.get("lang") or html.get("xml:lang")
    lang = lang or _meta_content(soup, "content-language", "og:locale", "language")
    lang = str(lang or "").strip().split(",")[0].strip().replace("_", "-")
    return lang or None


def published_date(html_text: str, url: str | None = None) -> str | None:
    """Publication date as ``YYYY-MM-DD`` found by htmldate (trafilatura's date extractor), or None.

    Structured evidence first (meta tags, ``<time>``, JSON-LD, the URL); then htmldate's free-text
    search ("Posted on August 27, 2015"), whose bare-year guesses (``YYYY-01-01`` from a mere
    "in 2018") are discarded.
    """
    from htmldate import find_date

    try:
        found = find_date(html_text, url=url, original_date=True, extensive_search=False)
        if found:
            return found
        guessed = find_date(html_text, url=url, original_date=True, extensive_search=True)
    except Exception:  # third-party heuristics on arbitrary markup: a failure costs the date, never the page
        return None
    return guessed if guessed and not guessed.endswith("-01-01") else None


def _trafilatura_text(html_text: str) -> list[str]:
    import trafilatura

    try:
        text = trafilatura.extract(html_text, include_comments=False, include_tables=True) or ""
    except Exception:  # fallback only: no text is the honest answer when it fails
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- entry point ---------------------------------------------------------------------------------


def _iter_offsets(texts: list[str]) -> Iterator[tuple[int, int]]:
    pos = 0
    for text in texts:
        yield pos, pos + len(text)
        pos += len(text) + 2


def parse_html(body: bytes, url: str, content_type: str | None = None) -> ParsedDocument:
    """Parse an article page into title, metadata, text blocks and images, all in document order.

    ``url`` is the page's URL (relative links resolve against it, or against ``<base href>``);
    ``content_type`` is the response header, whose ``charset`` wins over the page's own (a ``str``
    body is taken as already decoded). Never raises on malformed or empty markup: such pages
    give a document without blocks and a message in ``warnings``.
    """
    if isinstance(body, str):
        html_text, warnings = body, []
    else:
        html_text, _, warnings = decode_html(body or b"", content_type)
    # NULs and \x01 would collide with the render sentinels; an XML prolog means nothing once decoded (and makes bs4 warn).
    html_text = _XML_PROLOG.sub("", html_text.replace(_BREAK, "").replace(_MARK, ""), count=1)
    soup = BeautifulSoup(html_text, "lxml")

    base_tag = soup.find("base", href=True)
    base_url = urljoin(url, str(base_tag["href"]).strip()) if base_tag is not None else url
    canonical = _canonical_url(soup, base_url)
    language = _language(soup)
    og_title = _meta_content(soup, "og:title")
    title_tag = soup.find("title")
    page_title = _one_line(title_tag.get_text()) if title_tag is not None else ""
    published = published_date(html_text, url) if soup.find(True) else None
    for node in soup.find_all(string=lambda s: isinstance(s, Comment)):
        node.extract()
    for el in soup.find_all(_NEVER_CONTENT):
        el.decompose()

    body_el = soup.body or soup
    pruner = _Pruner(body_el)
    pruner.prune(body_el)
    root = _content_root(soup)
    pruner.prune_related_sections(root)

    walker = _Walker(root, base_url)
    walker.walk(root)

    h1 = root.find("h1")
    h1_text = _one_line(_render([h1])) if h1 is not None else ""
    title = _one_line(og_title or "") or h1_text or page_title
    if not title:
        warnings.append("no title found")

    raw_blocks = walker.blocks
    if not raw_blocks and html_text.strip():
        fallback = _trafilatura_text(html_text)
        if fallback:
            raw_blocks = [("paragraph", line, ()) for line in fallback]
            warnings.append("content walk found no text; used trafilatura's plain-text extraction")
    if not raw_blocks:
        warnings.append("no article text found" if html_text.strip() else "empty page")

    texts = [text for _, text, _ in raw_blocks]
    blocks = tuple(
        TextBlock(kind=kind, text=text, section_path=path, char_start=start, char_end=end)
        for (kind, text, path), (start, end) in zip(raw_blocks, _iter_offsets(texts))
    )
    return ParsedDocument(
        url=url,
        title=title,
        canonical_url=canonical,
        text="\n\n".join(texts),
        blocks=blocks,
        images=tuple(walker.image_contexts()),
        language=language,
        published=published,
        warnings=tuple(warnings),
    )
