"""HyDE query rewriting through a real OpenAI-compatible HTTP endpoint (the fake LLM server speaks the wire protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from mmrag.config import MmragConfig
from mmrag.pipelines.retrieve import SearchError, Searcher
from mmrag.pipelines.retrieve.rewrite import hyde_messages, hyde_query
from tests.fake_llm_server import FakeModel, serve_fake_llm, unused_port


class Recorder:
    """A stand-in embedder that remembers what it was asked to embed."""

    name = "minilm"
    dimension = 4
    modalities = frozenset({"text"})
    max_input_tokens = 256

    def __init__(self):
        self.seen: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed_texts(self, texts):
        self.seen.extend(texts)
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_hyde_prompt_and_query_text():
    messages = hyde_messages("why do LSTMs have gates?")
    assert messages[0].role == "system" and "passage" in messages[0].content
    assert messages[-1].content.startswith("Question: why do LSTMs have gates?")
    assert hyde_query("q?", "  an   answer\n") == "q?\nan answer" and hyde_query("q?", "") == "q?"


def test_the_hypothetical_answer_is_embedded_with_the_question_once_per_question():
    reply = "Gates let the cell state carry information across many steps."
    with serve_fake_llm({"writer": FakeModel(reply=reply)}) as server:
        cfg = MmragConfig(search={"query_rewrite": "hyde", "rewrite_llm": "openai:writer"},
                          llm={"openai_base_url": server.url + "/v1"})
        recorder = Recorder()
        searcher = Searcher(cfg, embedder=recorder)
        vector = searcher.embed_query("why do LSTMs have gates?")
        searcher.embed_query("why do LSTMs have gates?")
        sent = server.chat_requests("/v1/chat/completions")
    assert vector.shape == (4,)
    assert recorder.seen == [f"why do LSTMs have gates?\n{reply}"] * 2
    assert len(sent) == 1  # cached per question
    assert sent[0].body["temperature"] == 0.0


def test_an_unreachable_rewrite_model_is_a_one_line_search_error():
    cfg = MmragConfig(search={"query_rewrite": "hyde", "rewrite_llm": "openai:writer"},
                      llm={"openai_base_url": f"http://127.0.0.1:{unused_port()}/v1", "timeout_s": 5, "max_retries": 0})
    with pytest.raises(SearchError, match="query rewrite"):
        Searcher(cfg, embedder=Recorder()).embed_query("anything")


def test_no_rewrite_embeds_the_question_itself():
    recorder = Recorder()
    Searcher(MmragConfig(), embedder=recorder).embed_query("plain question")
    assert recorder.seen == ["plain question"]
