"""Label matching: which chunks and images of an index an eval entry's labels point at (pure functions).

Labels never name chunk ids, so one eval set serves every chunking setting:

* **Document**: a chunk's ``doc_url`` matches a label ``url`` when, after :func:`normalise_url`
  (scheme, host, port, query, fragment and a trailing ``index.html`` dropped, percent-escapes
  decoded, trailing ``/`` ignored), the label is a path suffix of it on segment boundaries:
  ``x.html`` matches ``file:///any/where/x.html``, ``posts/p/`` matches ``https://h/blog/posts/p/index.html``,
  but ``ost/p/`` does not.
* **Section** (optional): the chunk's ``section_path`` contains the label's ``section`` as one
  element (so subsections count), compared case- and whitespace-insensitively; ``"A > B"``
  matches the consecutive elements ``A``, ``B``.
* **Span** (optional ``contains``): the span is located in the document's parsed text
  (``documents.text``, which chunk offsets index into) by a case/whitespace-insensitive search
  mapped back to original offsets (:func:`find_spans`); a chunk counts when its
  ``[char_start, char_end)`` overlaps an occurrence by at least half the occurrence's length, so
  a span a chunker split counts for every chunk holding half of it or more. A chunk whose own
  text contains the span counts too (documents without stored text).
* **Image**: an image row matches when the path of its ``src_url`` ends with ``image_url`` (same
  normalisation and segment rule), and, when the label has a ``url``, the row's document matches it.

An entry's relevant ids for a target are the union over its labels; a label matching nothing is a
labelling error (:attr:`LabelMatch.reason` says which condition failed), reported by ``mmrag eval check``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from mmrag.eval.evalset import EvalEntry, ImageLabel, TextLabel

# --------------------------------------------------------------------------- text normalisation


def normalise_url(url: str) -> str:
    """The comparable path of a URL or path: no scheme/host/port/query/fragment, no trailing ``index.html`` or ``/``.

    ``file:///w/data/sample/a.html`` -> ``/w/data/sample/a.html``; ``https://h:8080/p/index.html?x#y`` -> ``/p``;
    ``posts/p/`` -> ``posts/p``.
    """
    url = url.strip()
    parts = urlsplit(url)
    path = parts.path if (parts.scheme or url.startswith("//")) else url.split("#")[0].split("?")[0]
    path = unquote(path)
    if path.endswith("index.html"):
        path = path[: -len("index.html")]
    return path.rstrip("/")


def path_suffix_matches(path: str, suffix: str) -> bool:
    """Whether normalised ``suffix`` ends ``path`` on a segment boundary (both from :func:`normalise_url`)."""
    suffix = suffix.lstrip("/")
    if not suffix:
        return path == ""
    return path == suffix or path.endswith("/" + suffix)


def url_matches(doc_url: str, label_url: str) -> bool:
    """Whether ``label_url`` names the document ``doc_url`` (a path suffix after :func:`normalise_url`)."""
    return path_suffix_matches(normalise_url(doc_url), normalise_url(label_url))


def _fold(ch: str) -> str:
    return ch.lower()


def normalise_text(text: str) -> str:
    """Lower case with each whitespace run as one space, trimmed (the comparison form of spans and headings)."""
    return "".join(_fold(ch) for ch in " ".join(text.split()))


@functools.lru_cache(maxsize=512)
def _normalised_with_offsets(text: str) -> tuple[str, tuple[int, ...]]:
    """``text`` normalised like :func:`normalise_text` (untrimmed) and, per output character, its index in ``text``."""
    out: list[str] = []
    offsets: list[int] = []
    in_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not in_space:
                out.append(" ")
                offsets.append(i)
            in_space = True
            continue
        in_space = False
        for folded in _fold(ch):
            out.append(folded)
            offsets.append(i)
    return "".join(out), tuple(offsets)


def find_spans(text: str, needle: str) -> list[tuple[int, int]]:
    """Every occurrence of ``needle`` in ``text`` as original ``(start, end)`` offsets, case/whitespace-insensitive.

    ``"Two  Words"`` is found in ``"…two\\nwords…"``; the offsets index ``text`` itself, so
    ``text[start:end]`` is the occurrence as written. Overlapping occurrences are all returned.
    """
    target = normalise_text(needle)
    if not target or not text:
        return []
    normalised, offsets = _normalised_with_offsets(text)
    spans = []
    at = normalised.find(target)
    while at != -1:
        spans.append((offsets[at], offsets[at + len(target) - 1] + 1))
        at = normalised.find(target, at + 1)
    return spans


def holds_half(chunk_start: int, chunk_end: int, span: tuple[int, int]) -> bool:
    """Whether ``[chunk_start, chunk_end)`` overlaps ``span`` by at least half the span's length."""
    start, end = span
    overlap = min(chunk_end, end) - max(chunk_start, start)
    return overlap > 0 and 2 * overlap >= end - start


def section_matches(section_path: Sequence[str] | None, section: str) -> bool:
    """Whether ``section_path`` contains ``section`` (``"A > B"``: consecutive elements), case/whitespace-insensitive."""
    if not section_path:
        return False
    wanted = [normalise_text(s) for s in section.split(" > ")]
    path = [normalise_text(s) for s in section_path]
    n = len(wanted)
    return any(path[i : i + n] == wanted for i in range(len(path) - n + 1))


# --------------------------------------------------------------------------- the corpus as plain rows


@dataclass(frozen=True)
class Corpus:
    """What labels are matched against: every chunk and image row of one index, and the documents' texts.

    ``chunks``: dicts with ``id``, ``doc_url``, ``section_path``, ``char_start``, ``char_end``, ``text``.
    ``images``: dicts with ``id``, ``doc_url``, ``src_url``. ``doc_texts``: ``{url: documents.text}``.
    Build with :func:`build_corpus`.
    """

    chunks_by_doc: Mapping[str, tuple[dict[str, Any], ...]]
    images: tuple[dict[str, Any], ...]
    doc_texts: Mapping[str, str | None]
    doc_urls: tuple[str, ...]

    @property
    def n_chunks(self) -> int:
        """Number of chunk rows."""
        return sum(len(v) for v in self.chunks_by_doc.values())


def build_corpus(
    chunks: Iterable[Mapping[str, Any]],
    images: Iterable[Mapping[str, Any]] = (),
    doc_texts: Mapping[str, str | None] | None = None,
) -> Corpus:
    """A :class:`Corpus` from chunk rows, image rows and ``{document url: parsed text}``."""
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for row in chunks:
        by_doc.setdefault(row["doc_url"], []).append(dict(row))
    texts = dict(doc_texts or {})
    image_rows = tuple(dict(r) for r in images)
    urls = sorted(set(by_doc) | set(texts) | {r["doc_url"] for r in image_rows})
    return Corpus(
        chunks_by_doc={k: tuple(v) for k, v in by_doc.items()},
        images=image_rows,
        doc_texts=texts,
        doc_urls=tuple(urls),
    )


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class LabelMatch:
    """What one label matched: ``ids`` of chunks (target ``text``) or images (``image``); ``reason`` when none."""

    entry_id: str
    target: str
    index: int
    label: dict[str, Any]
    ids: frozenset[str]
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the label matched at least one row."""
        return bool(self.ids)


@dataclass(frozen=True)
class EntryLabels:
    """The relevant ids of one entry per target (``text``, ``image``) and each label's match."""

    entry_id: str
    relevant: Mapping[str, frozenset[str]]
    matches: tuple[LabelMatch, ...] = field(default_factory=tuple)

    @property
    def unmatched(self) -> list[LabelMatch]:
        """Labels that matched nothing (labelling errors)."""
        return [m for m in self.matches if not m.ok]

    def unmatched_targets(self) -> list[str]:
        """Targets the entry has labels for but no relevant row in the index (it cannot be scored there)."""
        return [t for t, ids in self.relevant.items() if not ids]


def match_text_label(label: TextLabel, corpus: Corpus, *, entry_id: str = "", index: int = 0) -> LabelMatch:
    """The chunks of ``corpus`` one text label points at (see the module docstring for the rules)."""
    docs = [u for u in corpus.doc_urls if url_matches(u, label.url)]

    def result(ids: Iterable[str], reason: str | None = None) -> LabelMatch:
        ids = frozenset(ids)
        return LabelMatch(entry_id, "text", index, label.model_dump(mode="json"), ids, None if ids else reason)

    if not docs:
        return result((), f"no document URL ends with {label.url!r}")
    candidates = [c for u in docs for c in corpus.chunks_by_doc.get(u, ())]
    if not candidates:
        return result((), f"documents matching {label.url!r} have no chunks in this table")
    if label.section:
        candidates = [c for c in candidates if section_matches(c.get("section_path"), label.section)]
        if not candidates:
            return result((), f"no chunk of {', '.join(docs)} is in section {label.section!r}")
    if not label.contains:
        return result(c["id"] for c in candidates)
    needle = normalise_text(label.contains)
    ids = set()
    found_in_text = False
    for url in docs:
        spans = find_spans(corpus.doc_texts.get(url) or "", label.contains)
        found_in_text = found_in_text or bool(spans)
        for chunk in candidates:
            if chunk["doc_url"] != url:
                continue
            start, end = chunk.get("char_start"), chunk.get("char_end")
            split_hit = start is not None and end is not None and any(holds_half(start, end, s) for s in spans)
            if split_hit or needle in normalise_text(chunk.get("text") or ""):
                ids.add(chunk["id"])
    if ids:
        return result(ids)
    where = f" within section {label.section!r}" if label.section else ""
    if found_in_text:
        return result((), f"span {label.contains!r} is in the document text but no chunk{where} holds half of it")
    return result((), f"span {label.contains!r} not found in the text of {', '.join(docs)}")


def match_image_label(label: ImageLabel, corpus: Corpus, *, entry_id: str = "", index: int = 0) -> LabelMatch:
    """The image rows of ``corpus`` one image label points at."""
    wanted = normalise_url(label.image_url)
    rows = [r for r in corpus.images if r.get("src_url") and path_suffix_matches(normalise_url(r["src_url"]), wanted)]
    reason = None
    if not rows:
        reason = f"no image source URL ends with {label.image_url!r}"
    elif label.url:
        rows = [r for r in rows if url_matches(r["doc_url"], label.url)]
        if not rows:
            reason = f"image {label.image_url!r} does not appear in a document ending with {label.url!r}"
    ids = frozenset(r["id"] for r in rows)
    return LabelMatch(entry_id, "image", index, label.model_dump(mode="json"), ids, reason)


def label_entry(entry: EvalEntry, corpus: Corpus) -> EntryLabels:
    """Relevant chunk and image ids of one entry (union over its labels), with each label's match."""
    matches = [match_text_label(lb, corpus, entry_id=entry.id, index=i) for i, lb in enumerate(entry.relevant)]
    matches += [match_image_label(lb, corpus, entry_id=entry.id, index=i) for i, lb in enumerate(entry.relevant_images)]
    relevant = {
        target: frozenset().union(*(m.ids for m in matches if m.target == target))
        for target in entry.targets
    }
    return EntryLabels(entry.id, relevant, tuple(matches))


def label_entries(entries: Iterable[EvalEntry], corpus: Corpus) -> dict[str, EntryLabels]:
    """:func:`label_entry` for every entry, keyed by entry id (input order)."""
    return {e.id: label_entry(e, corpus) for e in entries}


def unmatched_labels(labels: Mapping[str, EntryLabels]) -> list[LabelMatch]:
    """Every label, over all entries, that matched nothing."""
    return [m for entry in labels.values() for m in entry.unmatched]
