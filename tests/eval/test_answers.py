"""Answer quality: ragas' non-LLM scores (checked against the libraries they wrap), failures kept as rows, answers.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrag.eval.answer_metrics import context_scores, reference_scores, semantic_similarities
from mmrag.eval.answers import ANSWER_COLUMNS, answer_run_dir, answer_summary
from mmrag.eval.results import write_run
from mmrag.config import MmragConfig
from mmrag.pipelines.llm.base import LlmError, Usage

from tests.fake_llm_server import FakeModel, serve_fake_llm

from tests.eval.fakes import fake_result

ANSWER = "Reciprocal rank fusion uses the constant k = 60."
REFERENCE = "RRF adds 1/(k + rank) for every list. It uses the constant k = 60 and ignores raw scores."


def test_reference_scores_are_what_rouge_sacrebleu_and_rapidfuzz_compute():
    import sacrebleu
    from rapidfuzz.distance import Levenshtein
    from rouge_score import rouge_scorer

    scores = reference_scores(ANSWER, REFERENCE)
    assert scores["rouge_l"] == pytest.approx(
        rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(REFERENCE, ANSWER)["rougeL"].fmeasure)
    # ragas' BLEU: corpus BLEU of the ". "-split sentences; chrF: answer as hypothesis, reference as reference.
    assert scores["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(ANSWER.split(". "), [[s] for s in REFERENCE.split(". ")]).score / 100)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf([ANSWER], [[REFERENCE]]).score / 100)
    assert scores["chrf"] != pytest.approx(sacrebleu.corpus_chrf([REFERENCE], [[ANSWER]]).score / 100)  # order matters
    assert scores["string_similarity"] == pytest.approx(Levenshtein.normalized_similarity(REFERENCE, ANSWER))
    assert 0 < scores["rouge_l"] < 1 and 0 < scores["chrf"] < 1 and scores["score_error"] is None
    same = reference_scores(REFERENCE, REFERENCE)
    assert all(same[c] == pytest.approx(1.0) for c in ("rouge_l", "bleu", "chrf", "string_similarity"))
    assert reference_scores(ANSWER, None) == {"rouge_l": None, "bleu": None, "chrf": None, "string_similarity": None,
                                              "score_error": None}


def test_context_scores_against_the_labelled_chunk_ids():
    # given a, x, b in rank order; a, b, c, d labelled: AP = (1/1 + 2/3) / 2, recall 2 of 4
    assert context_scores(["a", "x", "b"], ["a", "b", "c", "d"]) == {"context_precision": pytest.approx((1 + 2 / 3) / 2),
                                                                     "context_recall": 0.5}
    assert context_scores(["x", "a"], ["a"]) == {"context_precision": pytest.approx(0.5), "context_recall": 1.0}
    assert context_scores(["x", "y"], ["a", "b"]) == {"context_precision": 0.0, "context_recall": 0.0}
    assert context_scores([], ["a"]) == {"context_precision": None, "context_recall": 0.0}
    assert context_scores(["a"], []) == {"context_precision": None, "context_recall": None}


def test_semantic_similarity_is_the_cosine_of_the_given_embedder():
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [2.0, 0.0], "d": [1.0, 1.0]}
    embed = lambda texts: np.array([vecs[t] for t in texts])  # noqa: E731
    sims = semantic_similarities(embed, ["a", "a", None, "d"], ["c", "b", "c", "a"])
    assert sims == [pytest.approx(1.0), pytest.approx(0.0), None, pytest.approx(2 ** -0.5)]


def test_semantic_similarity_with_minilm_ranks_a_paraphrase_above_an_unrelated_answer(minilm):
    close, far = semantic_similarities(minilm.embed_texts, [ANSWER, "Bananas are yellow."], [REFERENCE, REFERENCE])
    assert 0.3 < close <= 1.0 and far < close


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
    monkeypatch.setattr("mmrag.eval.answers.make_backend", lambda cfg, spec: FakeBackend(fail_on="question 1"))

    rows = answer_run_dir(run_dir, result.entries, MmragConfig(), ["fake:m"], embed=lambda t: np.ones((len(t), 3)))
    table = pq.read_table(run_dir / "answers.parquet")
    assert table.column_names == list(ANSWER_COLUMNS)
    records = table.to_pylist()
    assert [r["query_id"] for r in records] == ["q-000", "q-001", "q-002"]
    failed = records[1]
    assert failed["error"] == "LlmError: fake: timed out" and failed["rouge_l"] is None and failed["latency_s"] is not None
    assert failed["context_recall"] == 0.5  # its prompt held c1 of the labelled c1, d1: scored though the answer failed
    ok = records[0]
    assert ok["answer"] == "answer" and ok["tokens_out"] == 1 and ok["tokens_in"] > 0
    assert ok["rouge_l"] == pytest.approx(1.0)  # the fake's reference answer is "answer"
    # c0 given, c0 and d0 labelled
    assert ok["semantic_similarity"] == pytest.approx(1.0) and ok["context_precision"] == 1.0 and ok["context_recall"] == 0.5
    assert ok["faithfulness"] is None and ok["judge"] is None  # no judge asked
    summary = answer_summary(rows)["fake:m"]
    assert summary["n"] == 3 and summary["failures"] == 1 and summary["judge_failures"] == 0


def test_an_unavailable_backend_records_one_failed_row_per_query(tmp_path, monkeypatch):
    result = fake_result([1.0, 0.0])
    run_dir = write_run(result, tmp_path, tag_versions=False)

    def boom(cfg, spec):
        raise LlmError("unreachable", "ollama: connection refused")

    monkeypatch.setattr("mmrag.eval.answers.make_backend", boom)
    rows = answer_run_dir(run_dir, result.entries, MmragConfig(), ["ollama:llama3.2-vision"], limit=1)
    assert len(rows) == 1 and rows[0]["error"].endswith("connection refused")
    assert rows[0]["context_recall"] is None  # nothing was given to a model: no context scores
    assert pq.read_table(run_dir / "answers.parquet").num_rows == 1


def test_judged_answers_get_the_contexts_their_model_was_given(tmp_path, monkeypatch, minilm):
    """End to end with a judge behind the loopback OpenAI-compatible fake: what the judge saw, and the columns written."""
    from mmrag.eval.judge import JudgeSpec

    result = fake_result([1.0, 0.0])
    result.hits[0]["text"] = "RRF uses the constant k = 60."
    run_dir = write_run(result, tmp_path, tag_versions=False)
    monkeypatch.setattr("mmrag.eval.answers.make_backend", lambda cfg, spec: FakeBackend(fail_on="question 1"))
    verdicts = {"statements": [{"statement": "k is 60.", "reason": "stated", "verdict": 1}]}
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = lambda model, messages: json.dumps(
            verdicts if "judge the faithfulness" in messages[-1]["content"] else
            {"statements": ["k is 60."]} if "analyze the complexity" in messages[-1]["content"] else
            {"question": "question 0", "noncommittal": 0})
        rows = answer_run_dir(run_dir, result.entries, MmragConfig(), ["fake:m"], embed=minilm.embed_texts,
                              judge=JudgeSpec("openai", "judge", fake.url + "/v1"))
        nli = [r for r in fake.chat_requests("/v1/chat/completions") if "judge the faithfulness" in r.body["messages"][-1]["content"]]
    assert len(nli) == 1 and "RRF uses the constant k = 60." in nli[0].body["messages"][-1]["content"]
    records = pq.read_table(run_dir / "answers.parquet").to_pylist()
    assert records[0]["faithfulness"] == 1.0 and records[0]["answer_relevancy"] == pytest.approx(1.0, abs=1e-5)
    assert records[0]["judge"] == f"openai:judge@{fake.url}/v1" and records[0]["judge_tokens_in"] > 0
    assert records[1]["error"] and records[1]["faithfulness"] is None and records[1]["judge"] is None  # failed answers are not judged
    assert answer_summary(rows)["fake:m"]["faithfulness"] == 1.0


def test_rejudging_the_same_answers_reads_the_cache_beside_the_runs(tmp_path, monkeypatch, minilm):
    """eval.judge_repeats: 2 writes mean and spread columns; the second run of the same answers makes no judge call."""
    from mmrag.eval.judge import CACHE_FILE, JudgeSpec

    result = fake_result([1.0, 0.0])
    result.hits[0]["text"] = "RRF uses the constant k = 60."
    run_dir = write_run(result, tmp_path / "runs", tag_versions=False)
    monkeypatch.setattr("mmrag.eval.answers.make_backend", lambda cfg, spec: FakeBackend(fail_on="question 1"))
    cfg = MmragConfig(eval={"judge_repeats": 2})
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = lambda model, messages: json.dumps(
            {"statements": [{"statement": "k is 60.", "reason": "stated", "verdict": 1}]}
            if "judge the faithfulness" in messages[-1]["content"] else
            {"statements": ["k is 60."]} if "analyze the complexity" in messages[-1]["content"] else
            {"question": "question 0", "noncommittal": 0})
        spec = JudgeSpec("openai", "judge", fake.url + "/v1")
        answer_run_dir(run_dir, result.entries, cfg, ["fake:m"], embed=minilm.embed_texts, judge=spec)
        first_calls = len(fake.chat_requests("/v1/chat/completions"))
        rows = answer_run_dir(run_dir, result.entries, cfg, ["fake:m"], embed=minilm.embed_texts, judge=spec)
        second_calls = len(fake.chat_requests("/v1/chat/completions")) - first_calls
    assert first_calls == 6 and second_calls == 0 and (tmp_path / "runs" / CACHE_FILE).is_file()
    records = pq.read_table(run_dir / "answers.parquet").to_pylist()
    assert records[0]["faithfulness"] == 1.0 and records[0]["faithfulness_std"] == 0.0
    assert records[0]["judge_repeats"] == 2 and records[0]["judge_cached"] == 4
    assert {"faithfulness_std", "answer_relevancy_std", "judge_repeats", "judge_cached"} <= set(ANSWER_COLUMNS)
    assert answer_summary(rows)["fake:m"]["faithfulness_std"] == 0.0
