"""The OCR truth of the benches: the hand transcriptions of colah figures and how words found are counted."""

from __future__ import annotations

import hashlib
import json

import pytest

from bench.first_index import FIGURE_TEXT, figure_text_truth, truth_recall, words, words_found
from bench.retrieval_quality import CORPUS

COLAH = CORPUS  # ../shared/corpora/colah beside the repository


def test_words_fold_subscripts_and_case_and_skip_single_characters():
    assert words("x₁ X1 a ∂b Chunk size") == {"x1": 2, "chunk": 1, "size": 1}


def test_truth_recall_counts_transcribed_words_read_and_an_unread_figure_as_none():
    truth = {"a": "source symbols\nx1 x2", "b": "tanh tanh"}
    recall, total = truth_recall(truth, {"a": "sourcesymbols | x₁ x₂"})
    assert total == 6 and recall == pytest.approx(2 / 6)  # x1 x2 found; glued words and figure b are not
    assert words_found(truth, {"a": "source symbols x1 x2", "b": "tanh"}) == (5, 6)


def test_figure_text_file_names_each_figure_once_with_its_sha256():
    truth = figure_text_truth()
    assert len(truth) == 60 and sum(sum(words(text).values()) for text in truth.values()) == 736
    rows = FIGURE_TEXT.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 60 and all('"image_url": "posts/' in row for row in rows)


def test_figure_text_hashes_match_the_corpus_images():
    if not (COLAH / "posts").is_dir():
        pytest.skip(f"the colah corpus is not at {COLAH}")
    for row in map(json.loads, FIGURE_TEXT.read_text(encoding="utf-8").splitlines()):
        image = COLAH / row["image_url"]
        assert hashlib.sha256(image.read_bytes()).hexdigest() == row["sha256"], row["id"]
