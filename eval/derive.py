"""Query sets derived from the corpus itself: caption → image and heading → section.

* ``caption``: each distinct non-empty image caption is a query; its relevant images are the
  occurrences with that caption (label ``image_url`` = source path relative to the page's
  folder, plus the page's ``url``).
* ``heading``: each section heading (below the article title) is a query; its relevant chunks are
  the section's (label ``url`` + ``section``, so any chunking matches and subsections count).

**Leakage.** These queries are copies of indexed text, so they measure string overlap more than
retrieval. :func:`leakage_report` measures, for the index at hand, how many queries appear
verbatim in what the embedder actually embedded: caption queries in the image rows' text
surrogate (``vector_source == "text_surrogate"``: caption + alt + ``Section: <heading>``), heading
queries in chunk text and in image surrogates. Every entry gets ``"derived"`` and ``"leakage"``
keys (extra keys are kept by the eval set schema); ``mmrag eval derive`` prints the warnings.
Use derived sets for smoke tests and relative comparisons, not as absolute quality numbers.

Labels are written machine-independently: the shortest path suffix of the page URL that is
unique in the index (``chunking-strategies-for-rag.html``, ``articles/x/``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmrag.eval.evalset import EvalEntry
from mmrag.eval.labels import normalise_text, normalise_url, path_suffix_matches

KINDS = ("caption", "heading")


def unique_suffix(url: str, all_urls: Iterable[str]) -> str:
    """The shortest path suffix (whole segments) of ``url`` that matches no other URL of ``all_urls``.

    A trailing ``/`` is kept when the URL has one, so the label reads like the URL.
    """
    path = normalise_url(url)
    others = {normalise_url(u) for u in all_urls} - {path}
    segments = [s for s in path.split("/") if s]
    trailing = "/" if url.split("?")[0].split("#")[0].endswith(("/", "/index.html")) else ""
    for n in range(1, len(segments) + 1):
        suffix = "/".join(segments[-n:])
        if not any(path_suffix_matches(o, suffix) for o in others):
            return suffix + trailing
    return "/".join(segments) + trailing


def image_label_path(src_url: str, doc_url: str) -> str:
    """The image's path relative to its page's folder when below it, else its whole path (no host)."""
    src = normalise_url(src_url)
    folder = normalise_url(doc_url).rsplit("/", 1)[0] if not doc_url.endswith("/") else normalise_url(doc_url)
    if folder and src.startswith(folder + "/"):
        return src[len(folder) + 1 :]
    return src.lstrip("/")


def derive_caption_entries(images: Sequence[Mapping[str, Any]], doc_urls: Iterable[str]) -> list[EvalEntry]:
    """Caption → image entries (``cap-001`` …) from image rows (``doc_url``, ``src_url``, ``caption``), page order."""
    doc_urls = sorted(set(doc_urls) | {r["doc_url"] for r in images})
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(images, key=lambda r: (r["doc_url"], r.get("position") or 0)):
        caption = " ".join((row.get("caption") or "").split())
        if caption and row.get("src_url"):
            groups.setdefault(normalise_text(caption), []).append({**row, "caption": caption})
    entries = []
    for number, rows in enumerate(groups.values(), 1):
        labels = []
        for row in rows:
            label = {"image_url": image_label_path(row["src_url"], row["doc_url"]),
                     "url": unique_suffix(row["doc_url"], doc_urls)}
            if label not in labels:
                labels.append(label)
        entries.append(
            EvalEntry(
                id=f"cap-{number:03d}", query=rows[0]["caption"], kind="caption", relevant_images=labels,
                reference_answer=None, derived="caption",
            )
        )
    return entries


def derive_heading_entries(chunks: Sequence[Mapping[str, Any]], doc_urls: Iterable[str] = ()) -> list[EvalEntry]:
    """Heading → section entries (``head-001`` …) from chunk rows (``doc_url``, ``section_path``), page order.

    Headings below the article title only; a heading repeated within one page is labelled with
    its parent (``"Parent > Heading"``).
    """
    doc_urls = sorted(set(doc_urls) | {c["doc_url"] for c in chunks})
    sections: dict[tuple[str, tuple[str, ...]], None] = {}
    for chunk in sorted(chunks, key=lambda c: (c["doc_url"], c.get("position") or 0, c.get("char_start") or 0)):
        path = tuple(chunk.get("section_path") or ())
        for depth in range(2, len(path) + 1):
            sections.setdefault((chunk["doc_url"], path[:depth]), None)
    entries = []
    for number, (doc_url, path) in enumerate(sections, 1):
        heading = path[-1]
        same = [p for d, p in sections if d == doc_url and normalise_text(p[-1]) == normalise_text(heading)]
        section = heading if len(same) == 1 else " > ".join(path[-2:])
        entries.append(
            EvalEntry(
                id=f"head-{number:03d}", query=heading, kind="heading",
                relevant=[{"url": unique_suffix(doc_url, doc_urls), "section": section}],
                reference_answer=None, derived="heading",
            )
        )
    return entries


def leakage_report(
    entries: Sequence[EvalEntry],
    chunks: Sequence[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    *,
    embedder: str = "",
) -> dict[str, Any]:
    """How many derived queries appear verbatim in what the embedder embedded; marks ``entry.leakage``.

    Returns ``{"caption": {...}, "heading": {...}, "warnings": [lines]}`` with, per kind,
    ``queries`` and counts of queries found in ``image_surrogates`` (embedded text of images
    whose vectors come from text) and ``chunk_text``.
    """
    surrogates = [normalise_text(r.get("surrogate_text") or "") for r in images
                  if (r.get("vector_source") or "text_surrogate") == "text_surrogate"]
    chunk_texts = [normalise_text(c.get("text") or "") for c in chunks]
    report: dict[str, Any] = {"warnings": []}
    for kind in KINDS:
        of_kind = [e for e in entries if e.kind == kind]
        if not of_kind:
            continue
        in_surrogate = in_chunks = 0
        for entry in of_kind:
            needle = normalise_text(entry.query)
            hit_surrogate = any(needle in s for s in surrogates)
            hit_chunk = any(needle in t for t in chunk_texts)
            in_surrogate += hit_surrogate
            in_chunks += hit_chunk
            setattr(entry, "leakage", bool(hit_surrogate or hit_chunk))
        report[kind] = {"queries": len(of_kind), "image_surrogates": in_surrogate, "chunk_text": in_chunks}
        who = f"embedder {embedder!r}" if embedder else "the embedder"
        if kind == "caption" and in_surrogate:
            report["warnings"].append(
                f"leakage: {in_surrogate}/{len(of_kind)} caption queries appear verbatim in the image text surrogates "
                f"{who} embedded (caption + alt + section heading): caption→image scores measure string overlap, "
                "not retrieval quality"
            )
        if kind == "heading" and (in_surrogate or in_chunks):
            report["warnings"].append(
                f"leakage: {in_chunks}/{len(of_kind)} heading queries appear verbatim in chunk text and "
                f"{in_surrogate}/{len(of_kind)} in image surrogates ('Section: <heading>') that {who} embedded; "
                "headings are also every chunk's section path, so heading→section scores are optimistic"
            )
        elif kind == "heading":
            report["warnings"].append(
                f"note: heading queries are copies of section paths; {who} did not embed them verbatim "
                f"(0/{len(of_kind)} in chunk text or image surrogates), but metadata filters or a full-text "
                "reranker over section names would see them"
            )
    return report


def derive_entries(
    chunks: Sequence[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    *,
    kinds: Sequence[str] = KINDS,
    embedder: str = "",
) -> tuple[list[EvalEntry], dict[str, Any]]:
    """Derived entries of ``kinds`` and their :func:`leakage_report` (entries carry ``derived`` and ``leakage``)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown derive kind {sorted(unknown)[0]!r}: use caption or heading")
    doc_urls = {c["doc_url"] for c in chunks} | {r["doc_url"] for r in images}
    entries: list[EvalEntry] = []
    if "caption" in kinds:
        entries += derive_caption_entries(images, doc_urls)
    if "heading" in kinds:
        entries += derive_heading_entries(chunks, doc_urls)
    return entries, leakage_report(entries, chunks, images, embedder=embedder)
