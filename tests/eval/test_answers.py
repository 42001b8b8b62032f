"""Answer quality: non-LLM scores, failures kept as rows, answers.parquet in the run directory (fake backend)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from eval.answers import answer_run_dir, answer_summary, context_scores, semantic_similarities, text_scores
from eval.results import write_run
from pipelines.llm.base import LlmError, Usage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakes import fake_result  # noqa: E402


def test_text_scores_are_bounded_and_perfect_on_identity():
    same = text_scores("The RRF constant is 60.", "The RRF constant is 60.")
    assert same["rouge_l"] == pytest.approx(1.0) and same["chrf"] == pytest.approx(1.0)
    assert same["string_similarity"] == 1.0 and same["bleu"] == pytest.approx(1.0)
    other = text_scores("bananas are yellow", "The RRF constant is 60.")
    assert all(0 <= v < 0.5 for v in other.values())
    assert text_scores("x", None) == {"rouge_l": None, "bleu": None, "chrf": None, "string_similarity": None}


def test_context_scores_average_precision_and_recall():
    assert context_scores([True, False, True], 4) == {"context_precision": pytest.approx((1 + 2 / 3) / 2), "context_recall": 0.5}
    assert context_scores([False, False], 2) == {"context_precision": 0.0, "context_recall": 0.0}
    assert context_scores([], None) == {"context_precision": None, "context_recall": None}


def test_semantic_similarity_uses_the_given_embedder():
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 0.0]}
    embed = lambda texts: np.array([vecs[t] for t in texts])  # noqa: E731
    assert semantic_similarities(embed, ["a", "a", None], ["c", "b", "c"]) == [pytest.approx(1.0), pytest.approx(0.0), None]


class FakeBackend:
    """Answers with the question; fails on one query id's question."""

    supports_images = False

    def __init__(self, fail_on: str):
        self.fail_on = fail_on

    def generate(self, messages, images=(), *, stream=True, options=None):
        prompt = messages[-1].content
        if self.fail_on in prompt:
            raise LlmError("timeout", "fake: timed out")
        yield "answer"
        yield Usage(prompt_tokens=len(prompt.split()), completion_tokens=1, total_s=0.01, model="fake")


def test_answers_are_scored_and_failures_are_kept(tmp_path, monkeypatch):
    result = fake_result([1.0, 0.0, 1.0])
    run_dir = write_run(result, tmp_path, tag_versions=False)
    monkeypatch.setattr("pipelines.llm.make_backend", lambda cfg, spec: FakeBackend(fail_on="question 1"))
    from mmrag.config import MmragConfig

    rows = answer_run_dir(run_dir, result.entries, MmragConfig(), ["fake:m"], embed=lambda t: np.ones((len(t), 3)))
    table = pq.read_table(run_dir / "answers.parquet").to_pylist()
    assert [r["query_id"] for r in table] == ["q-000", "q-001", "q-002"]
    failed = table[1]
    assert failed["error"] == "LlmError: fake: timed out" and failed["rouge_l"] is None and failed["latency_s"] is not None
    ok = table[0]
    assert ok["answer"] == "answer" and ok["tokens_out"] == 1 and ok["tokens_in"] > 0
    assert ok["semantic_similarity"] == pytest.approx(1.0) and ok["context_precision"] == 1.0 and ok["context_recall"] == 0.5
    summary = answer_summary(rows)["fake:m"]
    assert summary["n"] == 3 and summary["failures"] == 1


def test_an_unavailable_backend_records_one_failed_row_per_query(tmp_path, monkeypatch):
    result = fake_result([1.0, 0.0])
    run_dir = write_run(result, tmp_path, tag_versions=False)

    def boom(cfg, spec):
        raise LlmError("unreachable", "ollama: connection refused")

    monkeypatch.setattr("pipelines.llm.make_backend", boom)
    from mmrag.config import MmragConfig

    rows = answer_run_dir(run_dir, result.entries, MmragConfig(), ["ollama:llama3.2-vision"], limit=1)
    assert len(rows) == 1 and rows[0]["error"].endswith("connection refused")
