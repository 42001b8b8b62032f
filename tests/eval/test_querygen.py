"""Generated query sets: pure helpers, and `mmrag eval generate` on the sample index against the loopback fake LLM server
(the real OpenAI wire protocol, a vision model so figures go as pixels, a second model as the answerability judge)."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.eval.evalset import load_evalset
from mmrag.eval.querygen import (
    content_words,
    evidence_sentences,
    lexical_overlap,
    near_duplicates,
    parse_question,
    round_robin_sample,
)
from tests.eval.sample_runs import sample_runs
from tests.fake_llm_server import FakeModel, serve_fake_llm

runner = CliRunner()


def test_parse_question_and_overlap():
    assert parse_question("Question: What is RRF?\nAnswer: A fusion rule.") == ("What is RRF?", "A fusion rule.")
    assert parse_question("**Question:** \"Why chunk?\"\n\n**Answer:** Because.") == ("Why chunk?", "Because.")
    assert parse_question("Sure! Here it is.\nHow does BM25 weigh terms?") == ("How does BM25 weigh terms?", None)
    assert parse_question("Question: <the question>\nAnswer: <the answer>")[0] is None
    assert parse_question("I cannot do that.") == (None, None)
    assert content_words("What is the k of the RRF formula?") == ["rrf", "formula"]
    assert lexical_overlap("What constant does RRF apply?", "RRF uses the constant k = 60.") == pytest.approx(2 / 3)
    assert lexical_overlap("Why?", "anything") == 0.0


def test_evidence_sentences_and_even_sampling():
    doc = "Intro. Chunking splits long articles into passages of a few hundred tokens. Short. Embedders truncate long inputs at 256 word pieces!"
    assert evidence_sentences(doc, doc) == ["Chunking splits long articles into passages of a few hundred tokens.",
                                            "Embedders truncate long inputs at 256 word pieces!"]
    assert evidence_sentences(doc, "other text entirely") == []  # labels must resolve in the document text
    groups = {"a": {"s1": [1, 2, 3], "s2": [4]}, "b": {"t": [5, 6]}, "c": {"u": [7]}}
    picked = round_robin_sample(groups, 4, random.Random(1))
    doc_of = {1: "a", 2: "a", 3: "a", 4: "a", 5: "b", 6: "b", 7: "c"}
    assert len(picked) == 4 and sorted(doc_of[p] for p in picked[:3]) == ["a", "b", "c"]  # every document before any twice
    seven = round_robin_sample(groups, 5, random.Random(1))
    assert {p for p in seven if doc_of[p] == "a"} & {4} and len({p for p in seven if doc_of[p] == "a"}) == 2  # both sections of a
    assert sorted(round_robin_sample(groups, 99, random.Random(1))) == list(range(1, 8))
    assert round_robin_sample(groups, 4, random.Random(1)) == picked  # seeded
    v = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert near_duplicates(v, threshold=0.9) == [False, True, False]
    assert near_duplicates(v[2:], threshold=0.9, existing=v[:1]) == [False]


def _words_not_in(passage: str, span: str, n: int = 4) -> list[str]:
    span_words = set(content_words(span))
    return [w for w in dict.fromkeys(content_words(passage)) if w not in span_words and not w.isdigit()][:n]


class Script:
    """The fake writer and judge: questions built from passage words outside the key sentence (low overlap), with
    scripted misbehaviour keyed on the order of the writer's calls (not on the spans, whose ids hold the test
    server's port): a repeat, a copy rewritten once, no question, a question the judge refuses; every second
    rewrite copies again."""

    TEXT_PLAN = ("ok", "repeat", "copy", "unparsed", "ok", "refused", "ok")

    def __init__(self, judge: FakeModel):
        self.judge = judge
        self.first: str | None = None
        self.no_for: set[str] = set()
        self.text_calls = 0
        self.rewrite_calls = 0

    def __call__(self, model, messages) -> str:
        text = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else " ".join(
            p.get("text", "") for p in messages[-1]["content"] if p.get("type") == "text")
        if model is self.judge:
            question = text.split("Question: ", 1)[1].split("\n", 1)[0]
            return "No." if question in self.no_for else "Yes"
        if text.startswith("This question copies"):
            span = re.search(r'Source sentence: "(.*)"', text).group(1)
            self.rewrite_calls += 1
            if self.rewrite_calls % 2 == 0:
                return f"Question: {span}?"  # copies again: dropped
            return "Question: Which figure does the tutorial report for " + " ".join(content_words(span)[-1:]) + " in practice?"
        if text.startswith("Article:") and "Key sentence" in text:
            span = re.search(r'Key sentence: "(.*)"', text).group(1)
            passage = text.split("Passage:\n", 1)[1].split("\n\nKey sentence", 1)[0]
            step = self.TEXT_PLAN[self.text_calls % len(self.TEXT_PLAN)]
            self.text_calls += 1
            if step == "repeat" and self.first:
                return f"Question: {self.first}\nAnswer: again"
            if step == "copy":
                return f"Question: {span.rstrip('.!?')}?\nAnswer: {span}"
            if step == "unparsed":
                return "I am sorry, I cannot write questions."
            question = f"How does the text relate {' and '.join(_words_not_in(passage, span))}?"
            self.first = self.first or question
            if step == "refused":
                self.no_for.add(question)
            return f"Question: {question}\nAnswer: {span}"
        section = re.search(r"Section: (.*)", text).group(1)
        caption = re.search(r"Caption: (.*)", text).group(1)
        return f"Question: What does the picture under {section} show about {' '.join(content_words(caption)[:3])}?\nAnswer: {caption}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness, minilm):
    return sample_runs(tmp_path_factory, embedder=minilm)


@pytest.mark.slow
def test_generate_writes_a_checked_set_with_provenance_counts_and_a_cache(runs, tmp_path, monkeypatch):
    out = tmp_path / "gen.jsonl"
    judge_model = FakeModel()
    with serve_fake_llm({"writer-vl": FakeModel(vision=True), "judge": judge_model}) as fake:
        fake.reply_for = Script(judge_model)
        monkeypatch.setenv("MMRAG_LLM__OPENAI_BASE_URL", fake.url + "/v1")
        args = ["eval", "generate", "--db", str(runs.db), "--out", str(out), "--n", "12", "--seed", "7",
                "--llm", "openai:writer-vl", "--judge", "openai:judge", "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        requests = fake.chat_requests("/v1/chat/completions")
        first_set = out.read_text()

        again = runner.invoke(app, args)  # same seed, same index: the same set, every output from the cache
        assert again.exit_code == 0, again.output
        assert len(fake.chat_requests("/v1/chat/completions")) == len(requests) and json.loads(again.stdout)["llm_calls"] == 0
        assert out.read_text() == first_set

        entries = load_evalset(out)
        assert len(entries) == summary["kept"] and 6 <= summary["kept"] <= 12  # the script drops ~half: fewer than n can survive
        assert summary["figure"] >= 1 and summary["text"] >= 1 and summary["vision"] is True
        dropped = ("unparsed", "vague", "overlap", "duplicate", "unanswerable", "unresolved", "surplus")
        assert summary["candidates"] == summary["kept"] + sum(summary[k] for k in dropped)
        assert summary["unparsed"] >= 1 and summary["rewritten"] >= 1 and summary["duplicate"] >= 1 and summary["unanswerable"] >= 1
        assert summary["llm_calls"] == len(requests) and summary["s_per_question"] > 0
        assert 0 < summary["survival"] <= 1
        # survival counts every candidate that passed the filters, also the surplus over n (kept alone is capped at n)
        assert summary["survival"] == round((summary["kept"] + summary["surplus"]) / summary["candidates"], 3)
        # figures went with their pixels; the judge saw only evidence and question
        figure_bodies = [r.body for r in requests if "A figure in this section" in json.dumps(r.body)]
        assert figure_bodies and all(any(p.get("type") == "image_url" for p in b["messages"][-1]["content"]) for b in figure_bodies)
        for e in entries:
            assert e.id.startswith("gen-") and e.reference_answer and e.kind in ("gen-text", "gen-figure")
            if e.kind == "gen-text":
                assert e.relevant[0].contains and lexical_overlap(e.query, e.relevant[0].contains) <= 0.6
            else:
                assert e.relevant_images[0].image_url.startswith("images/") and e.relevant_images[0].url.endswith(".html")
        assert len({e.query for e in entries}) == len(entries)

        check = runner.invoke(app, ["eval", "check", str(out), "--db", str(runs.db)])
        assert check.exit_code == 0 and "every label matches" in check.output, check.output

        meta = json.loads(out.with_name("gen.jsonl.meta.json").read_text())
        assert meta["llm"] == "openai:writer-vl" and meta["judge"] == "openai:judge" and meta["seed"] == 7
        assert set(meta["prompts"]) >= {"text", "figure", "rewrite", "answerable"}
        assert all(len(p["sha256"]) == 64 for p in meta["prompts"].values())
        assert set(meta["entries"]) == {e.id for e in entries} and all(v["source_ids"] for v in meta["entries"].values())
        assert meta["table_versions"] and len(meta["documents"]) == 7

        # --add: only documents new or changed since the meta (one made stale here) give questions
        stale = sorted(meta["documents"])[0]
        meta["documents"][stale] = "changed"
        out.with_name("gen.jsonl.meta.json").write_text(json.dumps(meta))
        added = runner.invoke(app, [*args[:6], "--add", "2", *args[8:]])
        assert added.exit_code == 0, added.output
        grown = load_evalset(out)
        new = grown[len(entries):]
        assert grown[: len(entries)] == entries and 1 <= len(new) <= 2 and json.loads(added.stdout)["documents_considered"] == 1
        new_meta = json.loads(out.with_name("gen.jsonl.meta.json").read_text())
        assert all(new_meta["entries"][e.id]["doc_url"] == stale for e in new) and len(new_meta["runs"]) == 2  # a fresh generate starts the history anew
        assert new_meta["documents"][stale] != "changed"
    print("\n" + json.dumps({k: summary[k] for k in ("candidates", "kept", *dropped, "rewritten", "leakage", "llm_calls")}))
