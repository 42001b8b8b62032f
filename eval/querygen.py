"""Generated query sets: questions an LLM writes from the indexed corpus, labelled by where they came from.

``mmrag eval generate --db URI --out FILE`` writes an eval set in our schema (:mod:`mmrag.eval.evalset`):

* **text** (kind ``gen-text``): chunks are sampled with a seeded RNG spread over documents and, within
  a document, over sections (round robin: every document before any gets a second question, every
  section of a document before any gets a second). From each chunk one sentence (6-60 words, found
  verbatim in the document's text) is the evidence; the LLM sees the title, section, the chunk and
  that sentence and writes ``Question:`` / ``Answer:``. The entry's label is ``url`` (the shortest
  unique path suffix, as ``eval derive`` writes them) + ``contains`` = the sentence, so the label does
  not depend on the chunking; the answer is the ``reference_answer``.
* **figure** (kind ``gen-figure``): images that decoded and have a caption or OCR text. A text LLM
  writes the question from caption, OCR text, alt text and section; a backend that accepts images
  (``supports_images`` and ``llm.send_images``) also gets the picture's bytes from ``image_blobs``.
  Label: ``relevant_images`` ``[{image_url: path of the source below the page's folder, url: page}]``.

Filters, each counted in :class:`GenerateSummary`:

* ``unparsed``: the LLM gave no question (no ``Question:`` line or line ending in ``?``);
* ``vague``: the question names its own prompt ("the passage", "the key sentence"), so it cannot be
  asked of a search engine;
* ``overlap``: a question copying more than ``eval.generate_max_overlap`` of its content words from
  its evidence is rewritten once ("use other words"), and dropped when the rewrite still copies;
* ``duplicate``: MiniLM cosine above ``eval.generate_dedupe_cosine`` with a kept question (or one
  already in the set, with ``--add``);
* ``unanswerable`` (only with a judge): the judge model, given only the evidence, says it does not
  answer the question;
* ``unresolved``: the label matches nothing in the index (:mod:`mmrag.eval.labels`), so the set
  always passes ``mmrag eval check``.

``leakage`` counts kept questions that appear verbatim in chunk text or image surrogates (like
``eval derive``), and each entry carries ``leakage`` and ``span_overlap``.

Reproducible: the sampling is seeded; every LLM output is cached by the SHA-256 of (model, prompt,
image, options) in ``<FILE>.llm-cache.json``, so a rerun with the same seed over the same index
writes the same set without calling the model. Provenance goes to ``<FILE>.meta.json``: the model,
every prompt template with its SHA-256, the seed, per entry the source row ids and prompt hash, the
tables and their versions, and the content hash of every document. ``--add N`` reads that sidecar and
generates N more questions only from documents that are new or whose content hash changed.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.config import MmragConfig
from mmrag.eval.derive import image_label_path, unique_suffix
from mmrag.eval.evalset import EvalEntry, dump_evalset, load_evalset
from mmrag.eval.labels import build_corpus, find_spans, match_image_label, match_text_label, normalise_text
from mmrag.pipelines.generate import load_image_blobs
from mmrag.pipelines.llm.base import ChatBackend, ChatMessage, GenerationOptions, ImageInput, LlmError, collect
from mmrag.pipelines.store import DOCUMENTS, IndexStore, chunks_table_name, images_table_name
from mmrag.records import sha256_hex

META_FORMAT = "mmrag-generated-evalset/1"
TEXT_KIND = "gen-text"
FIGURE_KIND = "gen-figure"
MAX_TOKENS = 160

SYSTEM_PROMPT = "You write exam questions about technical articles. Follow the output format exactly."
TEXT_PROMPT = """Article: {title}
Section: {section}

Passage:
{chunk}

Key sentence: "{span}"

Write one question that the key sentence answers. A reader who has not seen the passage must understand it. \
Use your own words: do not copy phrases from the key sentence. Then answer it in one or two sentences from the passage.

Question: <the question>
Answer: <the answer>"""
FIGURE_PROMPT = """Article: {title}
Section: {section}
A figure in this section.
Caption: {caption}
Text printed in the figure: {ocr}
Alt text: {alt}

Write one question that this figure answers, about what it shows (not about its caption wording). \
Then answer it in one sentence.

Question: <the question>
Answer: <the answer>"""
REWRITE_PROMPT = """This question copies too many words from its source sentence.
Source sentence: "{span}"
Question: {question}

Rewrite the question with the same meaning in different words (synonyms, another sentence structure). \
Reply with the rewritten question only.

Question: <the rewritten question>"""
ANSWERABLE_PROMPT = """Evidence:
{evidence}

Question: {question}

Does the evidence alone answer the question? Reply with one word: yes or no."""
PROMPTS = {"system": SYSTEM_PROMPT, "text": TEXT_PROMPT, "figure": FIGURE_PROMPT, "rewrite": REWRITE_PROMPT,
           "answerable": ANSWERABLE_PROMPT}

#: A question naming its own prompt ("the passage", "the key sentence") cannot be asked of a search engine.
_SELF_REFERENCE = re.compile(r"\b(the|this|that|above|given) (passage|key sentence|sentence|excerpt|text above|snippet)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(\[A-Z0-9])")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
STOPWORDS = frozenset("""a an the and or but if then than of to in on at by for from with without into onto over under
about as is are was were be been being it its this that these those there here which who whom whose what when where why
how do does did done can could should would may might must will shall not no nor so such too very just also only own
same other any each few more most some all both either neither one two we you they he she i me my our your their his
her them us has have had having per via vs use used uses using""".split())


class GenerateError(ValueError):
    """The set cannot be generated as asked (missing tables, nothing to sample, a broken sidecar)."""


# --------------------------------------------------------------------------- pure helpers


def content_words(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` without stop words and one-letter tokens."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def lexical_overlap(question: str, span: str) -> float:
    """Share of the question's distinct content words that occur in ``span`` (0 when it has none)."""
    words = set(content_words(question))
    if not words:
        return 0.0
    return len(words & set(content_words(span))) / len(words)


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (a terminal ``.!?`` followed by space and a capital, digit or quote)."""
    out = []
    for block in re.split(r"\n\s*\n|\n(?=[-*•] )", text or ""):
        out += [" ".join(s.split()) for s in _SENTENCE_END.split(block) if s.strip()]
    return out


def evidence_sentences(chunk_text: str, doc_text: str | None, *, min_words: int = 6, max_words: int = 60) -> list[str]:
    """Sentences of a chunk fit to be a question's evidence: 6-60 words, ending a sentence, found in the document text."""
    out = []
    for s in sentences(chunk_text):
        n = len(s.split())
        if min_words <= n <= max_words and s[-1] in ".!?" and (not doc_text or find_spans(doc_text, s)):
            out.append(s)
    return out


def parse_question(text: str) -> tuple[str | None, str | None]:
    """``(question, answer)`` from an LLM reply in the ``Question:`` / ``Answer:`` format (either may be None).

    Without a ``Question:`` label the first line ending in ``?`` is the question. Markdown emphasis and
    quotes around the values are removed.
    """
    def clean(value: str) -> str:
        return " ".join(value.replace("**", "").strip().strip("\"'“”").split())

    question = answer = None
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        bare = line.replace("**", "").lstrip("#-* ").strip()
        low = bare.lower()
        if question is None and low.startswith(("question:", "q:")):
            question = clean(bare.split(":", 1)[1]) or None
            if question is None and i + 1 < len(lines):
                question = clean(lines[i + 1])
        elif answer is None and low.startswith(("answer:", "a:")):
            rest = clean(bare.split(":", 1)[1])
            answer = rest or (clean(lines[i + 1]) if i + 1 < len(lines) else None)
    if question is None:
        question = next((clean(line) for line in lines if line.rstrip().endswith("?")), None)
    if question and "<" in question and ">" in question:  # the template's placeholder echoed
        question = None
    return question, answer or None


def round_robin_sample(groups: Mapping[str, Mapping[str, Sequence[Any]]], n: int, rng: random.Random) -> list[Any]:
    """Up to ``n`` items from ``{document: {section: [items]}}``, spread evenly: documents in shuffled order take turns,
    each taking from its sections in shuffled turn, each section giving a random unused item."""
    docs = sorted(groups)
    rng.shuffle(docs)
    pools = {}
    for d in docs:
        sections = sorted(groups[d])
        rng.shuffle(sections)
        pools[d] = [[*rng.sample(list(groups[d][s]), len(groups[d][s]))] for s in sections]
    turn = dict.fromkeys(docs, 0)
    out: list[Any] = []
    while len(out) < n and any(any(p) for p in pools.values()):
        for d in docs:
            if len(out) >= n:
                break
            sections = [p for p in pools[d] if p]
            if not sections:
                continue
            pool = sections[turn[d] % len(sections)]
            turn[d] += 1
            out.append(pool.pop())
    return out


def near_duplicates(vectors: np.ndarray, *, threshold: float, existing: np.ndarray | None = None) -> list[bool]:
    """Per row of ``vectors`` (unit-normalised): whether its cosine with an earlier kept row, or any ``existing`` row,
    exceeds ``threshold`` (greedy, input order)."""
    kept: list[np.ndarray] = list(existing) if existing is not None and len(existing) else []
    out = []
    for v in vectors:
        dup = bool(kept) and float(np.max(np.stack(kept) @ v)) > threshold
        out.append(dup)
        if not dup:
            kept.append(v)
    return out


def _unit(vectors: Any) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms == 0, 1, norms)


def prompt_key(model: str, messages: Sequence[ChatMessage], images: Sequence[ImageInput], options: GenerationOptions) -> str:
    """Cache key of one LLM call: model, messages, image hashes and sampling options."""
    return sha256_hex(json.dumps({"model": model, "messages": [[m.role, m.content] for m in messages],
                                  "images": [i.sha256 or sha256_hex(i.data.hex()) for i in images],
                                  "options": asdict(options)}, sort_keys=True, ensure_ascii=False))


# --------------------------------------------------------------------------- the LLM, cached


class CachedLlm:
    """A chat backend whose completions are cached in a JSON file by :func:`prompt_key` (written after every new call)."""

    def __init__(self, backend: ChatBackend, spec: str, cache_path: str | Path | None, *, seed: int, max_tokens: int = MAX_TOKENS,
                 temperature: float = 0.2, share: CachedLlm | None = None):
        self.backend = backend
        self.spec = spec
        self.path = Path(cache_path) if cache_path else None
        self.options = GenerationOptions(max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.cache: dict[str, str] = {}
        if share is not None:  # one cache file, one dict: two writers would overwrite each other's outputs
            self.path, self.cache = share.path, share.cache
        elif self.path is not None and self.path.is_file():
            try:
                self.cache = dict(json.loads(self.path.read_text(encoding="utf-8")).get("outputs", {}))
            except (ValueError, AttributeError) as exc:
                raise GenerateError(f"{self.path}: not a generate cache file ({exc})") from None
        self.calls = self.cached = 0
        self.seconds = 0.0

    def ask(self, prompt: str, images: Sequence[ImageInput] = (), *, max_tokens: int | None = None) -> tuple[str, str]:
        """``(reply, prompt sha256)``: the backend's reply to ``prompt`` (with ``images`` when it accepts them), or the cached one."""
        messages = [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", prompt)]
        options = self.options if max_tokens is None else GenerationOptions(max_tokens=max_tokens, temperature=self.options.temperature,
                                                                            seed=self.options.seed)
        images = list(images) if self.backend.supports_images else []
        key = prompt_key(self.spec, messages, images, options)
        if key in self.cache:
            self.cached += 1
            return self.cache[key], sha256_hex(prompt)
        started = time.perf_counter()
        text = collect(self.backend.generate(messages, images, stream=False, options=options)).text.strip()
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.cache[key] = text
        self.save()
        return text, sha256_hex(prompt)

    def save(self) -> None:
        """Write the cache file (atomically: a temporary file, then renamed)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"format": "mmrag-llm-cache/1", "outputs": self.cache}, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.path)


# --------------------------------------------------------------------------- reading the index


@dataclass
class IndexRows:
    """What generation reads from one index: documents (``url`` -> row), chunk and image rows, tables and versions."""

    documents: dict[str, dict[str, Any]]
    chunks: list[dict[str, Any]]
    images: list[dict[str, Any]]
    tables: dict[str, str]
    versions: dict[str, int]


def read_index(store: IndexStore, cfg: MmragConfig) -> IndexRows:
    """Documents, chunks and images of the index the config names (embedder label and chunking)."""
    label = cfg.search.table_embedder or cfg.embed.name
    chunk_table, image_table = chunks_table_name(label, cfg.chunking.key()), images_table_name(label)
    if not store.has_table(chunk_table):
        raise GenerateError(f"no table {chunk_table} in {store.db_uri} (index with --embedder {label} --chunking {cfg.chunking.strategy})")
    docs = {r["url"]: r for r in store.read_table(DOCUMENTS, ["url", "title", "status", "content_hash", "text"]).to_pylist()
            if r.get("status") in ("ok", "not_modified", None)} if store.has_table(DOCUMENTS) else {}
    chunks = store.read_table(chunk_table, ["id", "doc_url", "article_title", "section_path", "section", "position",
                                            "char_start", "char_end", "text"]).to_pylist()
    tables = {"documents": DOCUMENTS, "text": chunk_table}
    images: list[dict[str, Any]] = []
    if store.has_table(image_table):
        images = store.read_table(image_table, ["id", "doc_url", "article_title", "src_url", "image_sha256", "position", "section",
                                                "caption", "alt", "ocr_text", "surrogate_text", "vector_source", "status"]).to_pylist()
        tables["image"] = image_table
    versions = store.current_versions([t for t in tables.values() if store.has_table(t)])
    return IndexRows(documents=docs, chunks=chunks, images=images, tables=tables, versions=versions)


# --------------------------------------------------------------------------- generation


@dataclass
class GenerateSummary:
    """Counts of one generation: candidates asked, kept, and dropped per filter; LLM calls and time."""

    requested: int = 0
    candidates: int = 0
    kept: int = 0
    text: int = 0
    figure: int = 0
    unparsed: int = 0
    vague: int = 0
    rewritten: int = 0
    overlap: int = 0
    duplicate: int = 0
    unanswerable: int = 0
    unresolved: int = 0
    surplus: int = 0
    llm_errors: int = 0
    leakage: int = 0
    llm_calls: int = 0
    llm_cached: int = 0
    llm_s: float = 0.0
    seconds: float = 0.0
    vision: bool = False
    documents_considered: int = 0
    existing: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def s_per_question(self) -> float | None:
        """Wall seconds per kept question."""
        return round(self.seconds / self.kept, 2) if self.kept else None

    @property
    def survival(self) -> float | None:
        """Share of candidates that survived every filter (the kept ones and the surplus over n: kept alone could never
        exceed n / candidates, which the oversampling keeps near 2/3)."""
        return round((self.kept + self.surplus) / self.candidates, 3) if self.candidates else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (derived figures included)."""
        return {**asdict(self), "s_per_question": self.s_per_question, "survival": self.survival}

    def lines(self) -> list[str]:
        """The printed summary."""
        return [
            f"generated {self.kept} of {self.requested} requested questions ({self.text} text, {self.figure} figure) "
            f"from {self.candidates} candidates over {self.documents_considered} documents"
            + (f"; {self.existing} kept from the existing set" if self.existing else ""),
            f"  dropped: {self.unparsed} unparsed, {self.vague} naming the passage, {self.overlap} copying their evidence ({self.rewritten} rewritten), "
            f"{self.duplicate} near-duplicates, {self.unanswerable} unanswerable by the judge, {self.unresolved} unresolved labels, "
            f"{self.llm_errors} LLM errors; {self.surplus} more than needed",
            f"  leakage: {self.leakage} of {self.kept} questions appear verbatim in indexed text",
            f"  LLM: {self.llm_calls} calls ({self.llm_s:.1f} s), {self.llm_cached} cached; {self.seconds:.1f} s in all, "
            f"{self.s_per_question if self.s_per_question is not None else '-'} s per kept question, survival {self.survival}"
            + (" (figures asked with their pixels)" if self.vision else ""),
        ]


@dataclass
class Candidate:
    """One question before the filters: its entry fields and provenance."""

    kind: str
    doc_url: str
    source_id: str
    evidence: str
    question: str
    answer: str | None
    prompt_sha256: str
    label: dict[str, Any]
    overlap: float = 0.0


def _text_candidate_sources(rows: IndexRows, docs: set[str], n: int, rng: random.Random) -> list[tuple[dict[str, Any], str]]:
    groups: dict[str, dict[str, list[tuple[dict[str, Any], str]]]] = {}
    for chunk in sorted(rows.chunks, key=lambda c: c["id"]):
        if chunk["doc_url"] not in docs:
            continue
        spans = evidence_sentences(chunk.get("text") or "", (rows.documents.get(chunk["doc_url"]) or {}).get("text"))
        if not spans:
            continue
        section = " > ".join(chunk.get("section_path") or []) or (chunk.get("section") or "")
        groups.setdefault(chunk["doc_url"], {}).setdefault(section, []).append((chunk, rng.choice(spans)))
    return round_robin_sample(groups, n, rng)


def _figure_sources(rows: IndexRows, docs: set[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
    seen: set[str] = set()
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for image in sorted(rows.images, key=lambda r: r["id"]):
        if image["doc_url"] not in docs or image.get("status") not in (None, "ok") or not image.get("src_url"):
            continue
        if not ((image.get("caption") or "").strip() or (image.get("ocr_text") or "").strip()):
            continue
        if image.get("image_sha256") in seen:  # one question per picture, however many pages show it
            continue
        seen.add(image.get("image_sha256") or image["id"])
        groups.setdefault(image["doc_url"], {}).setdefault(image.get("section") or "", []).append(image)
    return round_robin_sample(groups, n, rng)


def generate_entries(
    rows: IndexRows,
    llm: CachedLlm,
    *,
    n: int,
    seed: int,
    embed: Callable[[list[str]], Any],
    store: IndexStore | None = None,
    judge: CachedLlm | None = None,
    docs: Iterable[str] | None = None,
    existing: Sequence[EvalEntry] = (),
    figure_share: float = 0.3,
    max_overlap: float = 0.6,
    dedupe_cosine: float = 0.9,
    log: Callable[[str], None] | None = None,
) -> tuple[list[EvalEntry], GenerateSummary, dict[str, dict[str, Any]]]:
    """Up to ``n`` new entries from ``docs`` (default all documents) of ``rows``; returns them, the summary and per-entry provenance.

    A figure share of ``n`` goes to images with a caption or OCR text (fewer when there are fewer); the rest,
    and whatever figures cannot fill, to text. ``existing`` entries (``--add``) keep their ids and count for
    near-duplicates; new ids continue ``gen-NNN`` after the highest one.
    """
    log = log or (lambda _m: None)
    started = time.perf_counter()
    rng = random.Random(seed)
    all_urls = sorted(set(rows.documents) | {c["doc_url"] for c in rows.chunks} | {i["doc_url"] for i in rows.images})
    docs = set(docs) if docs is not None else set(all_urls)
    summary = GenerateSummary(requested=n, existing=len(existing), documents_considered=len(docs),
                              vision=bool(llm.backend.supports_images))
    # Ask for more than n: filters drop some. The oversampling is part of the seeded plan, so reruns ask the same.
    asked = max(n + 2, int(n * 1.5 + 0.5))
    n_fig = min(int(round(asked * figure_share)), len(_figure_sources(rows, docs, asked, random.Random(seed))))
    figures = _figure_sources(rows, docs, n_fig, rng)
    texts = _text_candidate_sources(rows, docs, asked - len(figures), rng)
    blobs = load_image_blobs(store, [f.get("image_sha256") or "" for f in figures]) if store is not None and figures and llm.backend.supports_images else {}
    candidates: list[Candidate] = []
    plan: list[tuple[str, Any]] = [("text", t) for t in texts] + [("figure", f) for f in figures]
    rng.shuffle(plan)
    for number, (kind, source) in enumerate(plan, 1):
        try:
            cand = (_ask_text(llm, rows, source, all_urls, max_overlap, summary) if kind == "text"
                    else _ask_figure(llm, rows, source, all_urls, blobs))
        except LlmError as exc:
            summary.llm_errors += 1
            summary.errors.append(f"{exc.kind}: {exc}"[:300])
            if exc.kind in ("unreachable", "model_not_found", "runtime_missing", "model_parts_missing", "bad_spec"):
                raise
            continue
        summary.candidates += 1
        log(f"candidate {number}/{len(plan)} {kind}: {cand.question if cand else '(no question)'}")
        if cand is None:
            summary.unparsed += 1
            continue
        if _SELF_REFERENCE.search(cand.question):
            summary.vague += 1
            continue
        if kind == "text" and cand.overlap > max_overlap:
            summary.overlap += 1
            continue
        candidates.append(cand)
    # near-duplicates, against each other and the existing set
    if candidates:
        vectors = _unit(embed([c.question for c in candidates]))
        old = _unit(embed([e.query for e in existing])) if existing else None
        dup = near_duplicates(vectors, threshold=dedupe_cosine, existing=old)
        summary.duplicate = sum(dup)
        candidates = [c for c, d in zip(candidates, dup) if not d]
    if judge is not None:
        kept = []
        for c in candidates:
            reply, _ = judge.ask(ANSWERABLE_PROMPT.format(evidence=c.evidence, question=c.question), max_tokens=4)
            if reply.strip().lower().lstrip("*\"' ").startswith("no"):
                summary.unanswerable += 1
            else:
                kept.append(c)
        candidates = kept
    corpus = build_corpus(rows.chunks, rows.images, {u: d.get("text") for u, d in rows.documents.items()})
    next_id = 1 + max([int(m.group(1)) for e in existing if (m := re.fullmatch(r"gen-(\d+)", e.id))] or [0])
    entries: list[EvalEntry] = []
    provenance: dict[str, dict[str, Any]] = {}
    chunk_texts = [normalise_text(c.get("text") or "") for c in rows.chunks]
    surrogates = [normalise_text(r.get("surrogate_text") or "") for r in rows.images]
    for c in candidates:
        entry_id = f"gen-{next_id:03d}"
        fields: dict[str, Any] = {"relevant": [c.label]} if c.kind == TEXT_KIND else {"relevant_images": [c.label]}
        entry = EvalEntry(id=entry_id, query=c.question, kind=c.kind, reference_answer=c.answer, generated=c.kind,
                          span_overlap=round(c.overlap, 3), **fields)
        match = (match_text_label(entry.relevant[0], corpus) if c.kind == TEXT_KIND else match_image_label(entry.relevant_images[0], corpus))
        if not match.ok:
            summary.unresolved += 1
            continue
        if len(entries) >= n:  # passed every filter, but more than n were asked for against the filters: not needed
            summary.surplus += 1
            continue
        needle = normalise_text(c.question)
        leaked = any(needle in t for t in chunk_texts) or any(needle in s for s in surrogates)
        setattr(entry, "leakage", leaked)
        summary.leakage += leaked
        next_id += 1
        entries.append(entry)
        provenance[entry_id] = {"kind": c.kind, "doc_url": c.doc_url, "source_ids": [c.source_id], "prompt_sha256": c.prompt_sha256,
                                "content_hash": (rows.documents.get(c.doc_url) or {}).get("content_hash")}
    summary.kept = len(entries)
    summary.text = sum(e.kind == TEXT_KIND for e in entries)
    summary.figure = sum(e.kind == FIGURE_KIND for e in entries)
    summary.llm_calls = llm.calls + (judge.calls if judge is not None and judge is not llm else 0)
    summary.llm_cached = llm.cached + (judge.cached if judge is not None and judge is not llm else 0)
    summary.llm_s = round(llm.seconds + (judge.seconds if judge is not None and judge is not llm else 0.0), 2)
    summary.seconds = round(time.perf_counter() - started, 2)
    return entries, summary, provenance


def _title(rows: IndexRows, doc_url: str, fallback: str | None) -> str:
    return (rows.documents.get(doc_url) or {}).get("title") or fallback or doc_url


def _ask_text(llm: CachedLlm, rows: IndexRows, source: tuple[dict[str, Any], str], all_urls: Sequence[str], max_overlap: float,
              summary: GenerateSummary) -> Candidate | None:
    chunk, span = source
    section = " > ".join(chunk.get("section_path") or []) or (chunk.get("section") or "")
    prompt = TEXT_PROMPT.format(title=_title(rows, chunk["doc_url"], chunk.get("article_title")), section=section or "-",
                                chunk=" ".join((chunk.get("text") or "").split()), span=span)
    reply, digest = llm.ask(prompt)
    question, answer = parse_question(reply)
    if not question:
        return None
    overlap = lexical_overlap(question, span)
    if overlap > max_overlap:
        summary.rewritten += 1
        rewritten, _ = parse_question((llm.ask(REWRITE_PROMPT.format(span=span, question=question)))[0])
        if rewritten:
            question, overlap = rewritten, lexical_overlap(rewritten, span)
    return Candidate(kind=TEXT_KIND, doc_url=chunk["doc_url"], source_id=chunk["id"], evidence=span, question=question,
                     answer=answer, prompt_sha256=digest, overlap=overlap,
                     label={"url": unique_suffix(chunk["doc_url"], all_urls), "contains": span})


def _ask_figure(llm: CachedLlm, rows: IndexRows, image: dict[str, Any], all_urls: Sequence[str],
                blobs: Mapping[str, tuple[bytes, str]]) -> Candidate | None:
    caption = " ".join((image.get("caption") or "").split())
    ocr = " ".join((image.get("ocr_text") or "").split())
    prompt = FIGURE_PROMPT.format(title=_title(rows, image["doc_url"], image.get("article_title")), section=image.get("section") or "-",
                                  caption=caption or "(none)", ocr=ocr or "(none)", alt=" ".join((image.get("alt") or "").split()) or "(none)")
    sha = image.get("image_sha256") or ""
    pictures = [ImageInput(data=blobs[sha][0], mime_type=blobs[sha][1], label=image["src_url"], caption=caption, ocr_text=ocr,
                           sha256=sha)] if sha in blobs else []
    reply, digest = llm.ask(prompt, pictures)
    question, answer = parse_question(reply)
    if not question:
        return None
    evidence = "; ".join(p for p in (f"Figure caption: {caption}" if caption else "", f"Text in the figure: {ocr}" if ocr else "") if p)
    return Candidate(kind=FIGURE_KIND, doc_url=image["doc_url"], source_id=image["id"], evidence=evidence, question=question,
                     answer=answer, prompt_sha256=digest, overlap=lexical_overlap(question, caption),
                     label={"image_url": image_label_path(image["src_url"], image["doc_url"]),
                            "url": unique_suffix(image["doc_url"], all_urls)})


# --------------------------------------------------------------------------- files


def meta_path(out: str | Path) -> Path:
    """The provenance sidecar of an eval set file: ``<FILE>.meta.json``."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def cache_path(out: str | Path) -> Path:
    """The LLM output cache beside an eval set file: ``<FILE>.llm-cache.json``."""
    out = Path(out)
    return out.with_name(out.name + ".llm-cache.json")


def read_meta(out: str | Path) -> dict[str, Any]:
    """The sidecar of a generated set (raises :class:`GenerateError` when missing or foreign)."""
    path = meta_path(out)
    if not path.is_file():
        raise GenerateError(f"{path} not found: --add extends a set written by `mmrag eval generate`")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != META_FORMAT:
        raise GenerateError(f"{path} is not a generated set's sidecar (format {META_FORMAT})")
    return data


def changed_documents(rows: IndexRows, meta: Mapping[str, Any]) -> list[str]:
    """Documents of the index that are new or whose content hash differs from the sidecar's."""
    before = meta.get("documents") or {}
    return sorted(u for u, d in rows.documents.items() if u not in before or before[u] != d.get("content_hash"))


def generate_set(
    store: IndexStore,
    cfg: MmragConfig,
    out: str | Path,
    *,
    llm: CachedLlm,
    llm_spec: str,
    n: int = 20,
    add: int | None = None,
    seed: int = 0,
    embed: Callable[[list[str]], Any],
    judge: CachedLlm | None = None,
    judge_spec: str | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[EvalEntry], GenerateSummary]:
    """Generate ``n`` questions (or, with ``add``, ``add`` more from new or changed documents) into ``out`` and its sidecar."""
    rows = read_index(store, cfg)
    existing: list[EvalEntry] = []
    meta_before: dict[str, Any] = {}
    docs = None
    if add is not None:
        meta_before = read_meta(out)
        existing = load_evalset(out)
        docs = changed_documents(rows, meta_before)
        n = add
    entries, summary, provenance = generate_entries(
        rows, llm, n=n, seed=seed, embed=embed, store=store, judge=judge, docs=docs, existing=existing,
        max_overlap=cfg.eval.generate_max_overlap, dedupe_cosine=cfg.eval.generate_dedupe_cosine, log=log)
    all_entries = [*existing, *entries]
    if not all_entries:
        raise GenerateError("no question survived: nothing written (see the counts)")
    dump_evalset(all_entries, out)
    runs = list(meta_before.get("runs") or [])
    runs.append({"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "seed": seed, "n": n,
                 "add": add is not None, "documents": len(docs) if docs is not None else len(rows.documents),
                 "summary": summary.to_dict()})
    meta = {
        "format": META_FORMAT,
        "llm": llm_spec,
        "model": getattr(llm.backend, "model", ""),
        "vision": bool(llm.backend.supports_images),
        "judge": judge_spec,
        "options": asdict(llm.options),
        "prompts": {name: {"text": text, "sha256": sha256_hex(text)} for name, text in PROMPTS.items()},
        "seed": seed,
        "db_uri": store.db_uri,
        "tables": rows.tables,
        "table_versions": rows.versions,
        "documents": {**(meta_before.get("documents") or {}), **{u: d.get("content_hash") for u, d in rows.documents.items()}},
        "entries": {**(meta_before.get("entries") or {}), **provenance},
        "cache": cache_path(out).name,
        "runs": runs,
    }
    meta_path(out).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return entries, summary
