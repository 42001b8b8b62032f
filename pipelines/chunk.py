"""Cut a :class:`~mmrag.records.ParsedDocument` into retrievable :class:`~mmrag.records.Chunk` s (pure).

Every chunk is a slice of ``doc.text``: ``doc.text[chunk.char_start:chunk.char_end] == chunk.text``
exactly (no re-normalisation). Chunks never start or end with whitespace and never cross a
section boundary (consecutive blocks with the same section path form one section).

Strategies (``ChunkingConfig.strategy``):

* ``paragraph``: one chunk per text block (paragraph, list, pre, blockquote, table, caption)
  of at least ``min_chars`` characters; shorter blocks are dropped (the original design). With
  ``merge_min_tokens`` N, a block under N tokens is merged with the blocks after it in its section
  until the chunk reaches N tokens or the next block would pass the embedder's limit (a short last
  run joins the chunk before it when that fits): real posts have many one-line paragraphs ("As a
  result, training a GAN faces a dilemma:") that mean little alone. A merged chunk is still one
  slice of ``doc.text``.
* ``window``: windows of at most ``window_chars`` characters over each section's text,
  consecutive windows sharing about ``window_overlap`` of it. A window ends at the last
  whitespace in its second half (or at ``window_chars`` when there is none) and the next one
  starts ``window_overlap * window_chars`` characters before that end, moved back to the start
  of the word there (:func:`window_spans`).
* ``tokens``: whole sentences packed greedily into chunks of at most ``cfg.max_tokens`` tokens
  (default: the embedder's ``max_tokens``) within a section; a sentence over the budget is
  split at word boundaries (a single word over it, at characters).

Context (``ChunkingConfig.context``): with ``title_section`` each chunk carries
``"<article title>\n<section path>"`` as :attr:`~mmrag.records.Chunk.context`; the embedded and
full-text indexed text is that context and the chunk's words (``Chunk.search_text``), while
``text`` and the offsets stay the page's own. Budgets leave room for the context's tokens.

Oversize rule, after every strategy: a chunk with more than ``max_tokens`` tokens (the
embedder's limit) is re-packed by sentences into pieces within the limit (``oversize="split"``)
or kept whole with ``truncated=True`` and its full token count (``oversize="truncate"``; the
embedder will only see the first ``max_tokens`` tokens).

Sentence splitting is a small regex splitter (:func:`split_sentences`): no sentence-splitting
library is installed and NLTK's punkt data cannot be downloaded here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mmrag.config import ChunkingConfig
from mmrag.records import Chunk, ParsedDocument

Span = tuple[int, int]
TokenCounter = Callable[[str], int]

# -- sentences -----------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s|$)|[。！？]+[」』”’)]*|\n")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig figs eq eqs no nos vol pp ca approx dept est "
    "inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec mt ft resp".split()
)
_WORD = re.compile(r"\S+")


def _trim(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_abbreviation(text: str, dot: int, after: int) -> bool:
    """True when the period at ``dot`` ends an abbreviation or initial rather than a sentence."""
    words = text[:dot].split()
    if not words:
        return False
    word = words[-1].lstrip("([\"'“‘").lower()
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
        return True
    rest = text[after:].lstrip()
    return bool(rest) and rest[0].islower()  # "... approx. three" / "see p. five"


def split_sentences(text: str) -> list[Span]:
    """Sentence spans ``(start, end)`` of ``text``, surrounding whitespace excluded.

    A sentence ends at ``.``/``!``/``?``/``…`` (plus closing quotes or brackets) followed by
    whitespace, at CJK full stops, and at every line break (list items, table rows, code lines).
    A period after a known abbreviation, an initial or before a lowercase word is not an end.
    """
    spans: list[Span] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        mark = match.group()
        if mark == "\n":
            end = match.start()
        else:
            single_period = mark[0] == "." and mark.rstrip("\"'”’»)]") == "."
            if single_period and _is_abbreviation(text, match.start(), match.end()):
                continue
            end = match.end()
        s, e = _trim(text, start, end)
        if e > s:
            spans.append((s, e))
        start = match.end()
    s, e = _trim(text, start, len(text))
    if e > s:
        spans.append((s, e))
    return spans


# -- packing -------------------------------------------------------------------------------------


def _split_characters(text: str, span: Span, budget: int, count: TokenCounter) -> list[Span]:
    """Longest prefixes within budget (binary search); at least one character each."""
    pieces: list[Span] = []
    start, end = span
    while start < end:
        lo, hi = start + 1, end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        pieces.append((start, lo))
        start = lo
    return pieces


def _pack(text: str, units: list[Span], budget: int, count: TokenCounter, *, level: int = 0) -> list[Span]:
    """Greedily join consecutive units into spans of at most ``budget`` tokens.

    A unit over the budget is split into words (level 1) and a word into characters (level 2).
    """
    packed: list[Span] = []
    current: Span | None = None
    for unit in units:
        if count(text[unit[0]:unit[1]]) > budget:
            if current is not None:
                packed.append(current)
                current = None
            if level == 0:
                words = [(m.start(), m.end()) for m in _WORD.finditer(text, unit[0], unit[1])]
                packed.extend(_pack(text, words, budget, count, level=1))
            else:
                packed.extend(_split_characters(text, unit, budget, count))
            continue
        if current is None:
            current = unit
        elif count(text[current[0]:unit[1]]) <= budget:
            current = (current[0], unit[1])
        else:
            packed.append(current)
            current = unit
    if current is not None:
        packed.append(current)
    return packed


def pack_sentences(text: str, span: Span, budget: int, count_tokens: TokenCounter) -> list[Span]:
    """Spans inside ``span`` of ``text`` holding whole sentences, each of at most ``budget`` tokens."""
    start, end = span
    sentences = [(start + s, start + e) for s, e in split_sentences(text[start:end])]
    return _pack(text, sentences, budget, count_tokens)


# -- strategies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    path: tuple[str, ...]
    start: int
    end: int
    blocks: tuple[Span, ...]


def _sections(doc: ParsedDocument) -> list[_Section]:
    """Runs of consecutive blocks sharing one section path."""
    sections: list[_Section] = []
    for block in doc.blocks:
        span = (block.char_start, block.char_end)
        if sections and sections[-1].path == block.section_path:
            last = sections[-1]
            sections[-1] = _Section(last.path, last.start, block.char_end, (*last.blocks, span))
        else:
            sections.append(_Section(block.section_path, block.char_start, block.char_end, (span,)))
    return sections


def window_spans(text: str, span: Span, size: int, overlap: float) -> list[Span]:
    """Windows of about ``size`` characters over ``span`` of ``text``, sharing up to ``overlap * size``.

    Breaks at whitespace where possible: a window ends at the last whitespace in its second half
    (but late enough to leave room for the overlap); the next starts ``round(overlap * size)``
    characters before that end, moved back to the start of the word it falls in (so consecutive
    windows share the overlap plus at most part of one word). Without whitespace, cuts are exact.
    """
    overlap_chars = round(size * overlap)
    start, end = _trim(text, *span)
    windows: list[Span] = []
    while start < end:
        stop = min(start + size, end)
        if stop < end:
            earliest = start + max(size // 2, overlap_chars + 1)
            cut = next((i for i in range(stop, earliest - 1, -1) if text[i].isspace()), None)
            if cut is not None:
                stop = cut
        s, e = _trim(text, start, stop)
        if e > s:
            windows.append((s, e))
        if stop >= end:
            break
        nxt = stop - overlap_chars
        if nxt > 0 and not text[nxt - 1].isspace() and not text[nxt].isspace():
            word_start = nxt
            while word_start > start and not text[word_start - 1].isspace():
                word_start -= 1
            nxt = word_start if word_start > start else nxt  # a word longer than the window is cut
        nxt, _ = _trim(text, nxt, end)
        start = nxt if nxt > start else stop
    return windows


def context_prefix(title: str | None, section_path: Sequence[str]) -> str:
    """The context line(s) a chunk carries with ``title_section``: the title, then the section path joined by ``>``."""
    parts = [" ".join((title or "").split()), " > ".join(" ".join(p.split()) for p in section_path if p.strip())]
    return "\n".join(p for p in parts if p)


def merge_short_spans(text: str, spans: Sequence[Span], *, min_tokens: int, max_tokens: int,
                      count: TokenCounter) -> list[Span]:
    """Consecutive ``spans`` (blocks of one section, in order) merged into slices of ``text`` of at least
    ``min_tokens`` tokens where possible, never over ``max_tokens`` (a block already over it stays alone).

    A run grows until it reaches ``min_tokens`` or the next block would pass ``max_tokens``; a last run
    still short is joined to the run before it when the two fit in ``max_tokens``.
    """
    runs: list[Span] = []
    current: Span | None = None
    for span in spans:
        if current is None:
            current = span
        elif count(text[current[0]:span[1]]) <= max_tokens:
            current = (current[0], span[1])
        else:
            runs.append(current)
            current = span
        if count(text[current[0]:current[1]]) >= min_tokens:
            runs.append(current)
            current = None
    if current is not None:
        if runs and count(text[runs[-1][0]:current[1]]) <= max_tokens:
            runs[-1] = (runs[-1][0], current[1])
        else:
            runs.append(current)
    return runs


def _strategy_spans(
    doc: ParsedDocument, cfg: ChunkingConfig, count: TokenCounter, max_tokens: int,
    budget_for: Callable[[tuple[str, ...]], int],
) -> Iterable[tuple[Span, tuple[str, ...]]]:
    """``(span, section path)`` of every chunk the strategy makes, before the oversize rule."""
    if cfg.strategy == "paragraph":
        if cfg.merge_min_tokens:
            for section in _sections(doc):
                kept = [(s, e) for s, e in section.blocks if e - s >= cfg.min_chars]
                for span in merge_short_spans(doc.text, kept, min_tokens=cfg.merge_min_tokens,
                                              max_tokens=budget_for(section.path), count=count):
                    yield span, section.path
            return
        for block in doc.blocks:
            if len(block.text) >= cfg.min_chars:
                yield (block.char_start, block.char_end), block.section_path
        return
    for section in _sections(doc):
        if cfg.strategy == "window":
            spans = window_spans(doc.text, (section.start, section.end), cfg.window_chars, cfg.window_overlap)
        else:
            budget = max(1, (cfg.max_tokens or max_tokens) - (max_tokens - budget_for(section.path)))  # room for the context
            sentences = [
                (block_start + s, block_start + e)
                for block_start, block_end in section.blocks
                for s, e in split_sentences(doc.text[block_start:block_end])
            ]
            spans = _pack(doc.text, sentences, budget, count)
        for span in spans:
            yield span, section.path


def chunk_document(
    doc: ParsedDocument,
    cfg: ChunkingConfig,
    *,
    count_tokens: TokenCounter,
    max_tokens: int,
) -> list[Chunk]:
    """Chunks of ``doc`` under the strategy of ``cfg``, positions ``0..n-1`` in document order.

    ``count_tokens`` is the embedder's own tokenizer count and ``max_tokens`` its input limit;
    chunks over the limit are split or marked ``truncated`` as ``cfg.oversize`` says.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    strategy = cfg.key()
    contexts: dict[tuple[str, ...], str] = {}
    budgets: dict[tuple[str, ...], int] = {}

    def context_of(path: tuple[str, ...]) -> str:
        if path not in contexts:
            contexts[path] = context_prefix(doc.title, path) if cfg.context != "none" else ""
        return contexts[path]

    def budget_for(path: tuple[str, ...]) -> int:
        """The embedder's limit less the context's tokens (at least a quarter of the limit is left for text)."""
        if path not in budgets:
            context = context_of(path)
            budgets[path] = max(max_tokens // 4, max_tokens - count_tokens(context)) if context else max_tokens
        return budgets[path]

    chunks: list[Chunk] = []
    for (start, end), path in _strategy_spans(doc, cfg, count_tokens, max_tokens, budget_for):
        limit = budget_for(path)
        tokens = count_tokens(doc.text[start:end])
        if tokens <= limit:
            pieces = [((start, end), tokens, False)]
        elif cfg.oversize == "truncate":
            pieces = [((start, end), tokens, True)]
        else:
            pieces = [
                ((s, e), count_tokens(doc.text[s:e]), False)
                for s, e in pack_sentences(doc.text, (start, end), limit, count_tokens)
            ]
        for (s, e), n_tokens, truncated in pieces:
            chunks.append(
                Chunk(
                    doc_url=doc.url,
                    article_title=doc.title,
                    section_path=path,
                    position=len(chunks),
                    char_start=s,
                    char_end=e,
                    text=doc.text[s:e],
                    token_count=n_tokens,
                    strategy=strategy,
                    truncated=truncated,
                    published=doc.published,
                    context=context_of(path),
                )
            )
    return chunks
