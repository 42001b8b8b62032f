"""Rerankers: RRF hybrid over LanceDB full-text search, an OpenAI-compatible LLM judge, a cross-encoder, the
image-text model's own score; and each one's clear failure when something it needs is missing."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mmrag.config import EmbedConfig, MmragConfig, SearchConfig
from pipelines.import_vectors import import_vectors
from pipelines.rerank import (
    CrossEncoderScorer,
    ModelScoreReranker,
    OpenAIChatRelevanceScorer,
    RelevanceScorer,
    RerankContext,
    RerankError,
    RerankerUnavailable,
    create_reranker,
    reciprocal_rank_fusion,
    yes_probability,
)
from pipelines.retrieve import Filters, Hit, Searcher
from pipelines.store import IndexStore

WORDS = ["lantern", "harbour", "violin", "glacier", "pepper", "orbit", "meadow", "copper", "falcon", "tunnel"]


# --------------------------------------------------------------------------- pure parts


def test_reciprocal_rank_fusion_scores_and_order():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d", "a", "a"]], k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)
    assert [item for item, _ in fused] == ["a", "c", "b", "d"]  # a and c tie: first appearance first
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], k=0)


def test_reciprocal_rank_fusion_agrees_with_lancedbs_rrf_reranker():
    from lancedb.rerankers import RRFReranker

    vector_ids, fts_ids = [5, 3, 9, 1, 7], [9, 2, 5, 8]
    vector = pa.table({"_rowid": pa.array(vector_ids, pa.uint64()), "text": [str(i) for i in vector_ids],
                       "_distance": pa.array(np.linspace(0, 1, 5), pa.float32())})
    fts = pa.table({"_rowid": pa.array(fts_ids, pa.uint64()), "text": [str(i) for i in fts_ids],
                    "_score": pa.array(np.linspace(5, 1, 4), pa.float32())})
    theirs = RRFReranker(K=60).rerank_hybrid("q", vector, fts)
    ours = reciprocal_rank_fusion([[str(i) for i in vector_ids], [str(i) for i in fts_ids]], k=60)
    their_scores = dict(zip(theirs.column("text").to_pylist(), theirs.column("_relevance_score").to_pylist()))
    assert {item: pytest.approx(score, rel=1e-6) for item, score in ours} == their_scores
    assert [item for item, _ in ours][:3] == theirs.column("text").to_pylist()[:3]


def test_yes_probability_from_top_logprobs():
    top = [{"token": "Yes", "logprob": math.log(0.6)}, {"token": " yes", "logprob": math.log(0.1)},
           {"token": "No", "logprob": math.log(0.2)}, {"token": "Maybe", "logprob": math.log(0.1)}]
    assert yes_probability(top) == pytest.approx(0.7 / 0.9)
    assert yes_probability([{"token": "Perhaps", "logprob": 0.0}]) is None


# --------------------------------------------------------------------------- a small real table


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def word_table(tmp_path):
    """30 chunks whose texts carry one distinctive word each and a 'relevance' the fake LLM reads."""
    store = IndexStore(str(tmp_path / "db"))
    vectors = unit_rows(30, 16, seed=7)
    records = [
        {"text": f"note {i}: the {WORDS[i % 10]} story, relevance {((i * 37) % 100) / 100:.2f}",
         "article_title": f"Article {i % 3}", "section": "Body", "url": f"https://ex.example/{i % 3}"}
        for i in range(30)
    ]
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "c.json").write_text(json.dumps(records), encoding="utf-8")
    import_vectors(store, tmp_path / "v.npy", tmp_path / "c.json", embedder="synth", target="text")
    return store, vectors, records


def searcher_for(store: IndexStore, **search) -> Searcher:
    cfg = MmragConfig(store={"db_uri": store.db_uri}, search={"table_embedder": "synth", "mode": "cosine", **search})
    return Searcher(cfg, store=store)


def test_hybrid_fuses_full_text_matches_and_keeps_its_index_fresh(word_table, tmp_path):
    store, vectors, records = word_table
    searcher = searcher_for(store)
    top5 = set(np.argsort(-(vectors @ vectors[0]))[:5] % 10)
    word = next(w for i, w in enumerate(WORDS) if i not in top5)  # a word no vector candidate contains
    plain = searcher.search_vector(vectors[0], query_text=word, k=5)
    assert not any(word in h.text for h in plain.hits)
    hybrid = searcher.search_vector(vectors[0], query_text=word, k=3, reranker="hybrid", rerank_candidates=5)
    table = store.open_table("chunks__synth__paragraph")
    fts = [i for i in table.list_indices() if i.index_type == "FTS"]
    assert [list(i.columns) for i in fts] == [["text"]]
    word_ids = {r["id"] for r in table.to_arrow().to_pylist() if word in r["text"]}
    assert len(word_ids) == 3
    vector_ids = [h.id for h in searcher.search_vector(vectors[0], k=5).hits]
    fts_ids = table.search(word, query_type="fts").select(["id", "_score"]).limit(5).to_arrow().column("id").to_pylist()
    expected = reciprocal_rank_fusion([vector_ids, fts_ids], k=60)[:3]
    assert [(h.id, pytest.approx(h.score)) for h in hybrid.hits] == expected
    assert {h.id for h in hybrid.hits} & word_ids
    full_text_only = [h for h in hybrid.hits if h.id not in vector_ids]
    assert full_text_only and all(h.retrieval_score is None and -1 <= h.similarity <= 1 for h in full_text_only)
    assert hybrid.reranker == "hybrid" and "rerank" in hybrid.timings_ms

    # rows added later are brought into the index on the next hybrid query
    more = [{"text": f"a brand new {word} {word} {word} report", "article_title": "New", "section": "Body",
             "url": "https://ex.example/new"}]
    np.save(tmp_path / "v2.npy", unit_rows(1, 16, seed=99))
    (tmp_path / "c2.json").write_text(json.dumps(more), encoding="utf-8")
    import_vectors(store, tmp_path / "v2.npy", tmp_path / "c2.json", embedder="synth", target="text")
    searcher.refresh()
    again = searcher.search_vector(vectors[0], query_text=word, k=3, reranker="hybrid", rerank_candidates=5)
    table = store.open_table("chunks__synth__paragraph")
    assert table.index_stats(fts[0].name).num_unindexed_rows == 0
    assert any(h.doc_url == "https://ex.example/new" for h in again.hits)


def test_hybrid_respects_filters_and_needs_a_text_query(word_table):
    store, vectors, _ = word_table
    with pytest.raises(RerankerUnavailable, match="no full-text index"):
        searcher_for(store, fts_auto_index=False).search_vector(vectors[0], query_text="glacier", reranker="hybrid")
    searcher = searcher_for(store)
    hits = searcher.search_vector(vectors[0], query_text="glacier", k=5, reranker="hybrid",
                                  filters=Filters(title="Article 1")).hits
    assert hits and {h.article_title for h in hits} == {"Article 1"}
    with pytest.raises(RerankerUnavailable, match="needs a text query"):
        searcher.search_vector(vectors[0], k=3, reranker="hybrid")


# --------------------------------------------------------------------------- llm: a real OpenAI wire-protocol server


class FakeChatCompletions(BaseHTTPRequestHandler):
    """``POST /v1/chat/completions`` answering one token with logprobs; P(yes) is the passage's 'relevance x.xx'."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if self.server.mode == "fail":
            return self._send(500, {"error": {"message": "model crashed"}})
        user = body["messages"][-1]["content"]
        found = re.search(r"relevance (\d\.\d+)", user)
        p = float(found.group(1)) if found else 0.5
        p = min(max(p, 1e-6), 1 - 1e-6)
        top = [
            {"token": "Yes", "logprob": math.log(p * 0.8), "bytes": list(b"Yes")},
            {"token": "No", "logprob": math.log(1 - p), "bytes": list(b"No")},
            {"token": " yes", "logprob": math.log(p * 0.2), "bytes": list(b" yes")},
        ][: body.get("top_logprobs", 3)]
        first = max(top, key=lambda t: t["logprob"])
        choice = {"index": 0, "message": {"role": "assistant", "content": first["token"]}, "finish_reason": "length",
                  "logprobs": {"content": [{**first, "top_logprobs": top}]}}
        if self.server.mode == "no-logprobs":
            choice["logprobs"] = None
        self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatCompletions)
    server.requests, server.mode = [], "ok"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_llm_reranker_orders_by_probability_of_yes(word_table, chat_server):
    store, vectors, records = word_table
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1"
    searcher = searcher_for(store, llm_base_url=url, llm_model="tiny-judge", rerank_candidates=12)
    result = searcher.search_vector(vectors[0], query_text="which story is relevant?", k=4, reranker="llm")
    candidates = searcher.search_vector(vectors[0], k=12).hits
    relevance = {h.id: float(re.search(r"relevance (\d\.\d+)", h.text).group(1)) for h in candidates}
    expected = sorted(candidates, key=lambda h: -relevance[h.id])[:4]
    assert [h.id for h in result.hits] == [h.id for h in expected]
    assert [h.score for h in result.hits] == pytest.approx([relevance[h.id] for h in expected], abs=1e-6)
    assert len(chat_server.requests) == 12
    request = chat_server.requests[0]
    assert request["model"] == "tiny-judge" and request["logprobs"] is True and request["max_tokens"] == 1
    assert request["top_logprobs"] >= 2 and "which story is relevant?" in request["messages"][-1]["content"]


def test_llm_reranker_fails_clearly(word_table, chat_server):
    store, vectors, _ = word_table
    with pytest.raises(RerankerUnavailable, match="llm_base_url"):
        searcher_for(store).search_vector(vectors[0], query_text="q", reranker="llm")
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1"
    chat_server.mode = "no-logprobs"
    with pytest.raises(RerankError, match="no logprobs"):
        searcher_for(store, llm_base_url=url).search_vector(vectors[0], query_text="q", reranker="llm")
    chat_server.mode = "fail"
    with pytest.raises(RerankError, match="HTTP 500"):
        OpenAIChatRelevanceScorer(url).score("q", ["p"])
    with pytest.raises(RerankError, match="failed"):
        OpenAIChatRelevanceScorer("http://127.0.0.1:9/v1", timeout_s=2).score("q", ["p"])


def test_any_relevance_scorer_plugs_in(word_table):
    store, vectors, _ = word_table

    class LengthScorer:
        def score(self, query, passages):
            return [float(len(p)) for p in passages]

    assert isinstance(LengthScorer(), RelevanceScorer)
    reranker = create_reranker("llm", SearchConfig(), scorer=LengthScorer())
    candidates = searcher_for(store).search_vector(vectors[0], k=10).hits
    context = RerankContext(query="q", query_vector=vectors[0], target="text", table=None)
    reranked = reranker.rerank(candidates, context, k=3)
    assert [h.score for h in reranked] == sorted((float(len(h.text)) for h in candidates), reverse=True)[:3]


# --------------------------------------------------------------------------- cross-encoder: a tiny random BERT


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.tiny_checkpoints import SENTENCES, bert_tokenizer

    out = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = bert_tokenizer(SENTENCES + [f"note the {w} story relevance" for w in WORDS], model_max_length=128)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_cross_encoder_reranker_scores_pairs_with_the_model(word_table, tiny_cross_encoder):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    store, vectors, _ = word_table
    searcher = searcher_for(store, cross_encoder_model=str(tiny_cross_encoder), rerank_candidates=10)
    query = "the violin story"
    result = searcher.search_vector(vectors[0], query_text=query, k=5, reranker="cross-encoder")
    candidates = searcher.search_vector(vectors[0], k=10).hits
    tokenizer = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    model = BertForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    with torch.no_grad():
        batch = tokenizer([query] * 10, [h.text for h in candidates], padding=True, truncation=True, return_tensors="pt")
        expected = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
    order = np.argsort(-expected, kind="stable")[:5]
    assert [h.id for h in result.hits] == [candidates[i].id for i in order]
    np.testing.assert_allclose([h.score for h in result.hits], expected[order], atol=1e-5)
    with pytest.raises(RerankerUnavailable, match="cannot load"):
        CrossEncoderScorer(str(tiny_cross_encoder.parent / "nowhere"))


def test_cross_encoder_needs_a_model():
    with pytest.raises(RerankerUnavailable, match="cross_encoder_model"):
        create_reranker("cross-encoder", SearchConfig())
    with pytest.raises(RerankerUnavailable, match="unknown reranker"):
        create_reranker("magic", SearchConfig())


# --------------------------------------------------------------------------- model-score: the image-text model's own score


def image_db(tmp_path: Path, embedder, label: str) -> IndexStore:
    """An image table of textured PNGs embedded with ``embedder``, with their bytes in image_blobs."""
    from tests.tiny_checkpoints import textured_images

    images = textured_images(6)
    (tmp_path / "imgs").mkdir()
    for i, image in enumerate(images):
        image.save(tmp_path / "imgs" / f"{i}.png")
    records = [{"image_path": f"imgs/{i}.png", "caption": f"figure {i}", "article_title": "A", "section": "S"}
               for i in range(6)]
    records.append({"image_path": "imgs/gone.png", "caption": "lost", "article_title": "A", "section": "S"})
    vectors = np.vstack([embedder.embed_images(images), embedder.embed_texts(["lost"])])
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "c.json").write_text(json.dumps(records), encoding="utf-8")
    store = IndexStore(str(tmp_path / "db"))
    import_vectors(store, tmp_path / "v.npy", tmp_path / "c.json", embedder=label, target="images")
    return store


@pytest.mark.slow
def test_model_score_reranks_images_with_clips_own_score(tmp_path):
    pytest.importorskip("pipelines.clip_embedder", reason="the clip embedder module is not present")
    from pipelines.embed import create_embedder
    from tests.tiny_checkpoints import save_random_clip

    clip_dir = save_random_clip(tmp_path / "clip")
    embed_cfg = {"name": "clip", "model_path": str(clip_dir), "device": "cpu"}
    clip = create_embedder(EmbedConfig(**embed_cfg))
    store = image_db(tmp_path, clip, "clip")
    searcher = Searcher(MmragConfig(store={"db_uri": store.db_uri}, embed=embed_cfg,
                                    search={"mode": "cosine", "target": "images"}), embedder=clip)
    query = "a photo of a cat sitting on a red mat"
    result = searcher.search(query, k=7, reranker="model-score", rerank_candidates=7)
    assert len(result.hits) == 6 and all(h.image_status == "ok" for h in result.hits)  # the lost image has no bytes
    blobs = dict(zip(*store.read_where("image_blobs", ["sha256", "data"], "sha256",
                                       [h.image_sha256 for h in result.hits]).to_pydict().values()))
    expected = clip.score(clip.embed_texts([query])[0], clip.embed_image_bytes([blobs[h.image_sha256] for h in result.hits]))[0]
    np.testing.assert_allclose([h.score for h in result.hits], expected, rtol=1e-5)
    assert list(expected) == sorted(expected, reverse=True)
    np.testing.assert_allclose([h.score for h in result.hits], [clip.logit_scale * h.similarity for h in result.hits], rtol=1e-4)
    with pytest.raises(RerankerUnavailable, match="images only"):
        searcher.search(query, target="text", reranker="model-score")


@pytest.mark.slow
def test_model_score_uses_blip2s_max_over_query_vectors(tmp_path):
    pytest.importorskip("pipelines.blip2_embedder", reason="the blip2 embedder module is not present")
    from pipelines.blip2_embedder import max_query_cosine
    from pipelines.embed import create_embedder
    from tests.tiny_checkpoints import save_random_blip2

    blip_dir = save_random_blip2(tmp_path / "blip2")
    embed_cfg = {"name": "blip2", "model_path": str(blip_dir), "device": "cpu"}
    blip2 = create_embedder(EmbedConfig(**embed_cfg))
    store = image_db(tmp_path, blip2, "blip2")
    searcher = Searcher(MmragConfig(store={"db_uri": store.db_uri}, embed=embed_cfg,
                                    search={"mode": "cosine", "target": "images"}), embedder=blip2)
    query = "a diagram of a neural network with three layers"
    result = searcher.search(query, k=3, reranker="model-score", rerank_candidates=7)
    ranked_ok = searcher.search(query, k=7, mode="cosine", filters=None).hits
    blobs = dict(zip(*store.read_where("image_blobs", ["sha256", "data"], "sha256",
                                       [h.image_sha256 for h in ranked_ok if h.image_sha256]).to_pydict().values()))
    shas = list(blobs)
    multi = blip2.embed_image_bytes_multi([blobs[s] for s in shas])
    scores = max_query_cosine(blip2.embed_texts([query])[0], multi)[0]
    expected = sorted(zip(shas, scores), key=lambda kv: -kv[1])[:3]
    assert [(h.image_sha256, pytest.approx(h.score, abs=1e-5)) for h in result.hits] == [(s, float(v)) for s, v in expected]


def test_model_score_needs_an_image_text_embedder():
    class TextOnly:
        name = "minilm"

    hit = Hit(target="image", id="x", score=1.0, rank=1, similarity=1.0, retrieval_score=1.0, doc_url="u",
              article_title=None, section=None, text="c", image_sha256="s", image_status="ok")
    context = RerankContext(query="q", query_vector=np.ones(4, np.float32), target="images", table=None,
                            embedder=TextOnly())
    with pytest.raises(RerankerUnavailable, match=r"'minilm' has none .*clip"):
        ModelScoreReranker().rerank([hit], context, k=1)
    with pytest.raises(RerankerUnavailable, match="text query"):
        ModelScoreReranker().check(target="images", query_text=None, image_query=True)
