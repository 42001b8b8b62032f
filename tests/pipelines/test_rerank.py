"""Rerankers: RRF hybrid over LanceDB full-text search, an LLM judge through the LLM backends, a cross-encoder, the
image-text model's own score; and each one's clear failure when something it needs is missing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mmrag.config import EmbedConfig, LlmConfig, MmragConfig, SearchConfig
from mmrag.pipelines.import_vectors import import_vectors
from mmrag.pipelines.retrieve.rerank import (
    CrossEncoderScorer,
    LlmRelevanceScorer,
    ModelScoreReranker,
    RelevanceScorer,
    RerankContext,
    RerankError,
    RerankerUnavailable,
    create_reranker,
    yes_probability,
)
from mmrag.pipelines.retrieve.scoring import reciprocal_rank_fusion
from mmrag.pipelines.retrieve import Filters, Hit, SearchError, Searcher
from mmrag.pipelines.store import IndexStore
from tests.fake_llm_server import FakeModel, serve_fake_llm, unused_port
from tests.helpers import embedded_llm_cache

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


def searcher_for(store: IndexStore, llm: dict | None = None, **search) -> Searcher:
    cfg = MmragConfig(store={"db_uri": store.db_uri}, search={"table_embedder": "synth", "mode": "cosine", **search},
                      chunking={"context": "none", "merge_min_tokens": 0}, llm=llm or {})  # the imported "paragraph" table
    return Searcher(cfg, store=store)


def test_hybrid_fuses_full_text_matches_and_its_index_is_kept_fresh_by_writers(word_table, tmp_path):
    store, vectors, records = word_table
    searcher = searcher_for(store)
    top5 = set(np.argsort(-(vectors @ vectors[0]))[:5] % 10)
    word = next(w for i, w in enumerate(WORDS) if i not in top5)  # a word no vector candidate contains
    plain = searcher.search_vector(vectors[0], query_text=word, k=5)
    assert not any(word in h.text for h in plain.hits)
    hybrid = searcher.search_vector(vectors[0], query_text=word, k=3, reranker="hybrid", rerank_candidates=5)
    table = store.open_table("chunks__synth__paragraph")
    fts = [i for i in table.list_indices() if i.index_type == "FTS"]
    assert [list(i.columns) for i in fts] == [["search_text"]]
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

    # rows written later are brought into the index by the writer (here import_vectors), not by the query
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
    searcher = searcher_for(store)
    hits = searcher.search_vector(vectors[0], query_text="glacier", k=5, reranker="hybrid",
                                  filters=Filters(title="Article 1")).hits
    assert hits and {h.article_title for h in hits} == {"Article 1"}
    with pytest.raises(RerankerUnavailable, match="needs a text query"):
        searcher.search_vector(vectors[0], k=3, reranker="hybrid")


def test_hybrid_never_builds_an_index_at_query_time(word_table):
    store, vectors, _ = word_table
    table = store.open_table("chunks__synth__paragraph")
    for index in table.list_indices():
        if index.index_type == "FTS":
            table.drop_index(index.name)
    version = store.open_table("chunks__synth__paragraph").version
    with pytest.raises(RerankerUnavailable, match="no full-text index.*mmrag maintain"):
        searcher_for(store).search_vector(vectors[0], query_text="glacier", reranker="hybrid")
    with pytest.raises(SearchError, match="no full-text index.*mmrag maintain"):
        searcher_for(store, mode="hybrid").search_vector(vectors[0], query_text="glacier")
    assert store.open_table("chunks__synth__paragraph").version == version


# --------------------------------------------------------------------------- llm: through the LLM backends


def relevance_in(text: str) -> float:
    """The judge of the fake server: P(yes) is the passage's 'relevance x.xx'."""
    found = re.search(r"relevance (\d\.\d+)", text)
    return float(found.group(1)) if found else 0.5


def test_llm_reranker_over_an_openai_endpoint_orders_by_probability_of_yes(word_table):
    store, vectors, _ = word_table
    with serve_fake_llm({"tiny-judge": FakeModel(judge=relevance_in)}) as server:
        searcher = searcher_for(store, rerank_llm="openai:tiny-judge", rerank_candidates=12,
                                llm={"openai_base_url": server.url + "/v1"})
        result = searcher.search_vector(vectors[0], query_text="which story is relevant?", k=4, reranker="llm")
        sent = server.chat_requests("/v1/chat/completions")
    candidates = searcher.search_vector(vectors[0], k=12).hits
    relevance = {h.id: relevance_in(h.text) for h in candidates}
    expected = sorted(candidates, key=lambda h: -relevance[h.id])[:4]
    assert [h.id for h in result.hits] == [h.id for h in expected]
    # the fake answers P(yes) = 0.8p + 0.2p over P(no) = 0.9(1-p) + 0.1(1-p): exactly p
    assert [h.score for h in result.hits] == pytest.approx([relevance[h.id] for h in expected], abs=1e-6)
    assert len(sent) == 12
    body = sent[0].body
    assert body["model"] == "tiny-judge" and body["logprobs"] is True and body["max_tokens"] == 1
    assert body["temperature"] == 0 and body["top_logprobs"] >= 2 and not body.get("stream")
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "which story is relevant?" in body["messages"][-1]["content"]
    assert {relevance_in(r.body["messages"][-1]["content"]) for r in sent} == set(relevance.values())


def test_llm_base_url_still_overrides_the_backend(word_table, monkeypatch):
    store, vectors, _ = word_table
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    with serve_fake_llm({"tiny-judge": FakeModel(judge=relevance_in)}) as server:
        searcher = searcher_for(store, llm_base_url=server.url + "/v1", llm_model="tiny-judge", llm_api_key_env="JUDGE_KEY")
        hits = searcher.search_vector(vectors[0], query_text="q", k=2, reranker="llm", rerank_candidates=3).hits
        sent = server.chat_requests("/v1/chat/completions")
    assert len(hits) == 2 and len(sent) == 3
    assert sent[0].body["model"] == "tiny-judge" and sent[0].headers["authorization"] == "Bearer sekret"


def test_llm_reranker_over_ollama_reads_its_native_logprobs(word_table):
    store, vectors, _ = word_table
    with serve_fake_llm({"judge": FakeModel(judge=relevance_in)}) as server:
        searcher = searcher_for(store, rerank_llm="ollama:judge", llm={"ollama_host": server.url})
        hits = searcher.search_vector(vectors[0], query_text="q", k=3, reranker="llm", rerank_candidates=6).hits
        sent = server.chat_requests("/api/chat")
    assert [h.score for h in hits] == pytest.approx(sorted((relevance_in(h.text) for h in hits), reverse=True), abs=1e-6)
    assert len(sent) == 6 and sent[0].body["logprobs"] is True and sent[0].body["options"]["num_predict"] == 1
    assert sent[0].body["stream"] is False and sent[0].body["top_logprobs"] >= 2


def test_llm_reranker_fails_clearly(word_table):
    store, vectors, _ = word_table
    with serve_fake_llm({"plain": FakeModel(), "judge": FakeModel(judge=relevance_in)}) as server:
        # a server that drops logprobs (Ollama's /v1 does): the message names backends that return them
        for spec, llm in (("openai:plain", {"openai_base_url": server.url + "/v1"}), ("ollama:plain", {"ollama_host": server.url})):
            with pytest.raises(RerankerUnavailable, match="no token log-probabilities.*use llamacpp"):
                searcher_for(store, rerank_llm=spec, llm=llm).search_vector(vectors[0], query_text="q", reranker="llm")
        with pytest.raises(RerankError, match="no model 'absent'"):
            searcher_for(store, rerank_llm="openai:absent", llm={"openai_base_url": server.url + "/v1", "max_retries": 0}
                         ).search_vector(vectors[0], query_text="q", reranker="llm")
    with pytest.raises(RerankError, match="cannot reach"):
        searcher_for(store, llm_base_url=f"http://127.0.0.1:{unused_port()}/v1", llm_timeout_s=2
                     ).search_vector(vectors[0], query_text="q", reranker="llm")
    with pytest.raises(RerankerUnavailable, match="unknown backend 'gpt'"):
        searcher_for(store, rerank_llm="gpt:4").search_vector(vectors[0], query_text="q", reranker="llm")
    with pytest.raises(RerankerUnavailable, match="needs a text query"):
        searcher_for(store).search_vector(vectors[0], reranker="llm")

    class GenerateOnly:  # a backend without the logprobs capability
        name, model, supports_images = "custom", "m", False

        def generate(self, messages, images=(), *, stream=True, options=None):
            yield "yes"

    with pytest.raises(RerankerUnavailable, match="custom backend cannot return token log-probabilities; use llamacpp"):
        LlmRelevanceScorer(GenerateOnly())


@pytest.fixture(scope="module")
def qwen_llm_config():
    """The llm settings of the embedded Qwen2.5-Coder-0.5B (skips when its runtime or part packages are missing)."""
    cache = embedded_llm_cache()
    # n_ctx/n_threads as in test_llm_backends, so one loaded model serves both in a session
    return LlmConfig(cache_dir=cache, n_ctx=1024, n_threads=1)


@pytest.mark.slow
def test_llm_reranker_with_the_embedded_llamacpp_model(qwen_llm_config):
    reranker = create_reranker("llm", SearchConfig(), llm=qwen_llm_config)  # no URL configured: the offline default
    assert reranker.scorer.backend.name == "llamacpp"
    query = "How do cats purr?"
    passages = [
        "The stock market closed higher on Tuesday after strong bank earnings.",
        "Cats purr by rapidly twitching the muscles of the larynx while they breathe in and out.",
        "Preheat the oven to 200 degrees and bake the bread for forty minutes.",
        "The bus timetable changes on public holidays.",
    ]
    scores = reranker.scorer.score(query, passages)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert max(range(4), key=scores.__getitem__) == 1, scores
    assert scores[1] > max(scores[0], scores[2], scores[3]) + 0.05, scores
    hits = [Hit(target="text", id=str(i), score=0.0, rank=i + 1, similarity=0.0, retrieval_score=0.0, doc_url="u",
                article_title=None, section=None, text=p) for i, p in enumerate(passages)]
    context = RerankContext(query=query, query_vector=np.zeros(4, np.float32), target="text", table=None)
    reranked = reranker.rerank(hits, context, k=2)
    assert reranked[0].id == "1" and reranked[0].score == pytest.approx(scores[1])


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
    pytest.importorskip("mmrag.pipelines.clip_embedder", reason="the clip embedder module is not present")
    from mmrag.pipelines.embed import create_embedder
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
    pytest.importorskip("mmrag.pipelines.blip2_embedder", reason="the blip2 embedder module is not present")
    from mmrag.pipelines.blip2_embedder import max_query_cosine
    from mmrag.pipelines.embed import create_embedder
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
