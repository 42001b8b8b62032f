"""Label matching: URL suffixes, sections, spans located in the document text and split across chunks, images."""

from __future__ import annotations

from mmrag.eval.evalset import EvalEntry, ImageLabel, TextLabel
from mmrag.eval.labels import (
    build_corpus,
    find_spans,
    holds_half,
    label_entry,
    match_image_label,
    match_text_label,
    normalise_url,
    section_matches,
    url_matches,
)

DOC = "file:///home/someone/clone/data/sample/chunking.html"


def test_normalise_url_drops_scheme_host_query_fragment_and_index_html():
    assert normalise_url("https://mmrag.example:8443/articles/x/index.html?utm=1#top") == "/articles/x"
    assert normalise_url("file:///w/data/sample/a.html") == "/w/data/sample/a.html"
    assert normalise_url("posts/some-post/") == "posts/some-post"
    assert normalise_url("https://h/a%20b/") == "/a b"


def test_url_label_is_a_path_suffix_on_segment_boundaries():
    assert url_matches(DOC, "chunking.html")
    assert url_matches(DOC, "sample/chunking.html")
    assert not url_matches(DOC, "unking.html")
    assert url_matches("https://blog.example/posts/p/index.html", "posts/p/")
    assert url_matches("https://blog.example/posts/p/", "https://other.example/posts/p")
    assert not url_matches("https://blog.example/posts/p2/", "posts/p/")


def test_find_spans_is_case_and_whitespace_insensitive_and_maps_back_to_original_offsets():
    text = "Intro.\n\nThe  Stride is\nC − O tokens. the stride IS c − o."
    spans = find_spans(text, "the stride is C − O")
    assert len(spans) == 2
    assert text[spans[0][0] : spans[0][1]] == "The  Stride is\nC − O"
    assert text[spans[1][0] : spans[1][1]] == "the stride IS c − o"
    assert find_spans(text, "absent words") == []
    assert find_spans(text, "   ") == []


def test_section_matches_elements_subsections_and_paths():
    path = ["Chunking strategies", "Fixed-size windows", "Choosing size and overlap"]
    assert section_matches(path, "fixed-size  WINDOWS")
    assert section_matches(path, "Choosing size and overlap")
    assert section_matches(path, "Fixed-size windows > Choosing size and overlap")
    assert not section_matches(path, "Choosing size and overlap > Fixed-size windows")
    assert not section_matches(path, "Fixed-size")
    assert not section_matches([], "Anything")


def window_chunks(text: str, size: int, step: int, doc_url: str = DOC) -> list[dict]:
    chunks = []
    for i, start in enumerate(range(0, len(text), step)):
        end = min(start + size, len(text))
        chunks.append({"id": f"w{i}", "doc_url": doc_url, "section_path": ["Title", "Body"], "char_start": start,
                       "char_end": end, "text": text[start:end]})
        if end == len(text):
            break
    return chunks


def test_span_split_across_window_chunks_counts_every_chunk_holding_half_of_it():
    filler = "x" * 90 + " "
    span = "The stride is C minus O, and overlap is stored twice."
    text = filler + span + " " + "y" * 100
    start = text.index(span)
    chunks = window_chunks(text, size=100, step=100)  # no overlap: the span is cut at offset 100
    corpus = build_corpus(chunks, doc_texts={DOC: text})
    label = TextLabel(url="chunking.html", contains="the STRIDE is c minus o,  and overlap is stored twice.")
    match = match_text_label(label, corpus)
    # w0 holds 100 - start = 9 of 53 characters (< half), w1 holds the other 44 (>= half).
    assert 100 - start < len(span) / 2
    assert match.ids == {"w1"}
    # With overlapping windows every chunk holding at least half the span counts.
    overlapping = window_chunks(text, size=100, step=30)
    expected = {c["id"] for c in overlapping if holds_half(c["char_start"], c["char_end"], (start, start + len(span)))}
    match = match_text_label(label, build_corpus(overlapping, doc_texts={DOC: text}))
    assert match.ids == expected and len(expected) >= 2
    assert any(span not in overlapping[int(i[1:])]["text"] for i in expected), "some counted chunk holds only part of it"


def test_exact_half_counts_and_less_does_not():
    assert holds_half(0, 10, (5, 15))
    assert not holds_half(0, 10, (6, 16))
    assert not holds_half(20, 30, (5, 15))


def test_text_label_without_span_matches_the_section_and_subsections():
    chunks = [
        {"id": "a", "doc_url": DOC, "section_path": ["T"], "char_start": 0, "char_end": 5, "text": "intro"},
        {"id": "b", "doc_url": DOC, "section_path": ["T", "Windows"], "char_start": 6, "char_end": 10, "text": "body"},
        {"id": "c", "doc_url": DOC, "section_path": ["T", "Windows", "Overlap"], "char_start": 11, "char_end": 15, "text": "more"},
        {"id": "d", "doc_url": "file:///x/other.html", "section_path": ["T", "Windows"], "char_start": 0, "char_end": 4, "text": "body"},
    ]
    corpus = build_corpus(chunks)
    assert match_text_label(TextLabel(url="chunking.html", section="windows"), corpus).ids == {"b", "c"}
    assert match_text_label(TextLabel(url="chunking.html"), corpus).ids == {"a", "b", "c"}
    # Without the document's text, a chunk containing the span still counts.
    assert match_text_label(TextLabel(url="chunking.html", contains="MORE"), corpus).ids == {"c"}


def test_unmatched_labels_say_which_condition_failed():
    text = "Alpha beta gamma."
    chunks = [{"id": "a", "doc_url": DOC, "section_path": ["T", "S"], "char_start": 0, "char_end": len(text), "text": text}]
    corpus = build_corpus(chunks, doc_texts={DOC: text})
    assert "no document URL ends with" in match_text_label(TextLabel(url="missing.html"), corpus).reason
    assert "section 'Nope'" in match_text_label(TextLabel(url="chunking.html", section="Nope"), corpus).reason
    assert "not found in the text" in match_text_label(TextLabel(url="chunking.html", contains="delta"), corpus).reason
    ok = match_text_label(TextLabel(url="chunking.html", section="S", contains="beta  GAMMA"), corpus)
    assert ok.ok and ok.reason is None


def test_image_labels_match_source_path_suffix_and_optional_page():
    images = [
        {"id": "i1", "doc_url": "file:///c/data/sample/a.html", "src_url": "file:///c/data/sample/images/scene.jpg"},
        {"id": "i2", "doc_url": "file:///c/data/sample/b.html", "src_url": "file:///c/data/sample/images/scene.jpg"},
        {"id": "i3", "doc_url": "file:///c/data/sample/b.html", "src_url": "https://cdn.example/img/chart.png?v=2"},
    ]
    corpus = build_corpus([], images)
    assert match_image_label(ImageLabel(image_url="images/scene.jpg"), corpus).ids == {"i1", "i2"}
    assert match_image_label(ImageLabel(image_url="images/scene.jpg", url="b.html"), corpus).ids == {"i2"}
    assert match_image_label(ImageLabel(image_url="img/chart.png"), corpus).ids == {"i3"}
    assert not match_image_label(ImageLabel(image_url="cene.jpg"), corpus).ok
    assert "does not appear" in match_image_label(ImageLabel(image_url="scene.jpg", url="c.html"), corpus).reason


def test_label_entry_unions_labels_per_target():
    text = "One. Two."
    chunks = [
        {"id": "a", "doc_url": DOC, "section_path": ["T"], "char_start": 0, "char_end": 4, "text": "One."},
        {"id": "b", "doc_url": DOC, "section_path": ["T"], "char_start": 5, "char_end": 9, "text": "Two."},
    ]
    images = [{"id": "i", "doc_url": DOC, "src_url": "file:///c/images/f.png"}]
    corpus = build_corpus(chunks, images, {DOC: text})
    entry = EvalEntry(id="q", query="?", relevant=[{"url": "chunking.html", "contains": "one"},
                                                   {"url": "chunking.html", "contains": "two"},
                                                   {"url": "chunking.html", "contains": "three"}],
                      relevant_images=[{"image_url": "images/f.png"}])
    labels = label_entry(entry, corpus)
    assert labels.relevant == {"text": {"a", "b"}, "image": {"i"}}
    assert [(m.target, m.index) for m in labels.unmatched] == [("text", 2)]
