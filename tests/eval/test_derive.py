"""Derived caption→image and heading→section sets, with leakage measured on what the embedder embedded."""

from __future__ import annotations

from mmrag.eval.derive import derive_entries, image_label_path, unique_suffix
from mmrag.eval.labels import build_corpus, label_entry

A = "file:///clone/data/sample/a.html"
B = "file:///clone/data/sample/b.html"
CHUNKS = [
    {"id": "a0", "doc_url": A, "section_path": ["Title A"], "position": 0, "char_start": 0, "text": "Intro text."},
    {"id": "a1", "doc_url": A, "section_path": ["Title A", "Setup"], "position": 1, "char_start": 12, "text": "How to set up."},
    {"id": "a2", "doc_url": A, "section_path": ["Title A", "Setup", "Details"], "position": 2, "char_start": 30, "text": "Details text."},
    {"id": "a3", "doc_url": A, "section_path": ["Title A", "Usage", "Details"], "position": 3, "char_start": 50, "text": "More details."},
    {"id": "b0", "doc_url": B, "section_path": ["Title B", "Results"], "position": 0, "char_start": 0, "text": "Results are good."},
]
IMAGES = [
    {"id": "i0", "doc_url": A, "src_url": "file:///clone/data/sample/images/chart.png", "position": 0,
     "caption": "A chart of recall", "surrogate_text": "A chart of recall. Section: Setup", "vector_source": "text_surrogate"},
    {"id": "i1", "doc_url": B, "src_url": "file:///clone/data/sample/images/chart.png", "position": 0,
     "caption": "A  chart of RECALL", "surrogate_text": "A chart of recall. Section: Results", "vector_source": "text_surrogate"},
    {"id": "i2", "doc_url": B, "src_url": "file:///clone/data/sample/images/divider.png", "position": 1,
     "caption": "", "surrogate_text": "Section: Results", "vector_source": "text_surrogate"},
]


def test_labels_are_short_machine_independent_suffixes():
    assert unique_suffix(A, [A, B]) == "a.html"
    assert unique_suffix("https://h/x/post/", ["https://h/x/post/", "https://h/y/post/"]) == "x/post/"
    assert image_label_path("file:///clone/data/sample/images/chart.png", A) == "images/chart.png"
    assert image_label_path("https://cdn.example/img/c.png", "https://h/posts/p/") == "img/c.png"


def test_derived_entries_match_their_sources_and_report_leakage():
    entries, report = derive_entries(CHUNKS, IMAGES, embedder="minilm")
    captions = [e for e in entries if e.kind == "caption"]
    headings = [e for e in entries if e.kind == "heading"]
    assert len(captions) == 1, "same caption (case/whitespace) is one query with both occurrences"
    assert captions[0].relevant_images[0].image_url == "images/chart.png"
    assert [e.query for e in headings] == ["Setup", "Details", "Usage", "Details", "Results"]
    assert headings[1].relevant[0].section == "Setup > Details", "a heading repeated in one page names its parent"
    corpus = build_corpus(CHUNKS, IMAGES)
    assert label_entry(captions[0], corpus).relevant["image"] == {"i0", "i1"}
    assert label_entry(headings[0], corpus).relevant["text"] == {"a1", "a2"}
    assert label_entry(headings[1], corpus).relevant["text"] == {"a2"}
    assert report["caption"] == {"queries": 1, "image_surrogates": 1, "chunk_text": 0}
    assert report["heading"]["image_surrogates"] == 2  # "Section: Setup", "Section: Results"
    assert any("caption queries appear verbatim" in w for w in report["warnings"])
    assert captions[0].to_json()["leakage"] is True and captions[0].to_json()["derived"] == "caption"


def test_images_embedded_from_pixels_do_not_leak_captions():
    pixels = [{**r, "vector_source": "image"} for r in IMAGES]
    entries, report = derive_entries(CHUNKS, pixels, kinds=["caption"])
    assert report["caption"]["image_surrogates"] == 0 and not report["warnings"]
