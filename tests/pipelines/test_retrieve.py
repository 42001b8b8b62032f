"""Search core: the design's scoring as pure functions, the candidate pool, filters, directions, the warm Searcher."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import MmragConfig, SearchConfig
from mmrag.pipelines.import_vectors import import_vectors
from mmrag.pipelines.retrieve import (
    Filters,
    SearchError,
    Searcher,
    compile_where,
    cosine_similarities,
    similarity_search,
    softmax_scores,
    top_k_above,
)
from mmrag.pipelines.retrieve.filters import published_where
from mmrag.pipelines import store as store_module
from mmrag.pipelines.store import IndexStore
from tests.helpers import SAMPLE_DIR


def design_similarity_search(query_embed, target_embeddings, content_list, k=5, threshold=0.05, temperature=0.5):
    """The original design's function, verbatim apart from names."""
    import torch

    similarities = torch.nn.functional.cosine_similarity(query_embed, target_embeddings)
    scores = torch.nn.functional.softmax(similarities / temperature, dim=0)
    sorted_indices = scores.argsort(descending=True)
    sorted_scores = scores[sorted_indices]
    filtered = [idx.item() for idx, score in zip(sorted_indices, sorted_scores) if score.item() >= threshold][:k]
    return [content_list[i] for i in filtered], [scores[i].item() for i in filtered]


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_import(tmp_path: Path, store: IndexStore, vectors: np.ndarray, records: list[dict], *, target: str,
                 label: str, name: str = "x") -> None:
    """Write vectors + JSONL content and import them."""
    np.save(tmp_path / f"{name}.npy", vectors)
    (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    import_vectors(store, tmp_path / f"{name}.npy", tmp_path / f"{name}.jsonl", embedder=label, target=target)


def text_records(n: int) -> list[dict]:
    titles = ["Alpha", "O'Brien's notes", "Gamma"]
    sections = ["Intro", "Intro > Details", "Method"]
    return [
        {
            "text": f"passage {i} about topic {i % 7}",
            "article_title": titles[i % 3],
            "section": sections[i % 3],
            "doc_url": f"https://site{i % 2}.example/{titles[i % 3].replace(' ', '-')}",
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- pure scoring


def test_softmax_and_selection_match_the_design_function_on_random_vectors():
    torch = pytest.importorskip("torch")
    vectors = unit_rows(200, 32, seed=1)
    content = list(range(200))
    for q in range(5):
        query = vectors[q] + 0.3 * unit_rows(1, 32, seed=10 + q)[0]
        for k, threshold, temperature in [(15, 0.01, 0.25), (5, 0.0, 0.5), (50, 0.004, 0.1)]:
            expected_items, expected_scores = design_similarity_search(
                torch.from_numpy(query[None]), torch.from_numpy(vectors), content, k, threshold, temperature
            )
            indices, scores = similarity_search(query, vectors, k=k, threshold=threshold, temperature=temperature)
            assert list(indices) == expected_items
            np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_cosine_similarities_are_scale_free_and_zero_safe():
    v = unit_rows(4, 8)
    sims = cosine_similarities(v[0] * 3.0, np.vstack([v * 2.0, np.zeros((1, 8), np.float32)]))
    assert sims[0] == pytest.approx(1.0)
    assert sims[-1] == 0.0
    np.testing.assert_allclose(sims[:4], v @ v[0], atol=1e-6)


def test_top_k_above_thresholds_first_then_keeps_k_in_score_order():
    scores = np.array([0.1, 0.5, 0.05, 0.3, 0.3])
    assert list(top_k_above(scores, k=3, threshold=0.1)) == [1, 3, 4]
    assert list(top_k_above(scores, k=10, threshold=0.31)) == [1]
    assert list(top_k_above(scores, k=2, threshold=0.0)) == [1, 3]  # ties keep input order


def test_softmax_scores_shrink_as_the_corpus_grows_but_the_ranking_does_not_change():
    rng = np.random.default_rng(0)
    sims = rng.uniform(0.5, 1.0, size=86)
    small = softmax_scores(sims, temperature=0.25)
    grown = softmax_scores(np.concatenate([sims, rng.uniform(0.5, 1.0, size=900)]), temperature=0.25)[:86]
    assert np.all(grown < small)
    assert list(np.argsort(-grown)) == list(np.argsort(-small))
    assert (small >= 0.01).sum() > (grown >= 0.01).sum() == 0  # the design's text threshold keeps nothing at ~1k rows
    assert softmax_scores(sims, temperature=0.25).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        softmax_scores(sims, temperature=0)


def test_compile_where_quotes_values_and_scopes_image_status():
    filters = Filters(url_prefix="https://a.example/it's", title="O'Brien", section="Intro", image_status="ok",
                      where="position < 3")
    text = compile_where(filters, target="text")
    assert "starts_with(doc_url, 'https://a.example/it''s')" in text
    assert "article_title = 'O''Brien'" in text
    assert "(section = 'Intro' OR starts_with(section, 'Intro > '))" in text
    assert "status" not in text and text.endswith("AND (position < 3)")
    assert "status = 'ok'" in compile_where(filters, target="images")
    assert compile_where(Filters(), target="text") is None
    assert compile_where(Filters(), target="text", doc_urls=[]) == "false"
    assert compile_where(Filters(), target="text", doc_urls=["u'1"]) == "doc_url IN ('u''1')"


def test_publication_date_filters_compile_to_bounds_on_the_published_column():
    both = Filters(published_since="2024-03-01", published_until="2024-04-15", url_prefix="https://a.example/")
    expected = "published >= date '2024-03-01' AND published <= date '2024-04-15'"
    for target in ("text", "images"):  # the column is on both tables: no join through documents
        assert compile_where(both, target=target) == f"starts_with(doc_url, 'https://a.example/') AND {expected}"
    assert published_where(Filters(published_until=" 2024-01-31 ")) == "published <= date '2024-01-31'"
    assert published_where(Filters(fetched_since="2024-01-01")) is None
    assert compile_where(Filters(published_since="2024-03-01", where="position < 2"), target="text",
                         doc_urls=["u"]) == "published >= date '2024-03-01' AND doc_url IN ('u') AND (position < 2)"
    for bad in ("March 2024", "2024-13-01", "2024-03-01'; drop", "2024-03-01T10:00:00"):
        with pytest.raises(SearchError, match="invalid publication date"):
            compile_where(Filters(published_since=bad), target="text")


# --------------------------------------------------------------------------- against LanceDB tables


@pytest.fixture
def synthetic(tmp_path):
    """A 60-row chunk table and a 12-row image table of random unit vectors (label ``synth``)."""
    store = IndexStore(str(tmp_path / "db"))
    vectors = unit_rows(60, 16, seed=3)
    write_import(tmp_path, store, vectors, text_records(60), target="text", label="synth", name="t")
    images = [{"image_path": f"img/{i}.png", "caption": f"figure {i}", "article_title": "Alpha", "section": "Intro"}
              for i in range(12)]
    write_import(tmp_path, store, unit_rows(12, 16, seed=4), images, target="images", label="synth", name="i")
    return store, vectors


#: these tests check the original design's search semantics: the seed preset (softmax, plain paragraph chunks)
SEED = {"preset": "seed"}


def searcher_for(store: IndexStore, **search) -> Searcher:
    cfg = MmragConfig(store={"db_uri": store.db_uri}, embed={"name": "minilm"},
                      search={**SEED, "table_embedder": "synth", **search})
    return Searcher(cfg, store=store)


def test_table_search_reproduces_the_design_and_pool_covering_the_table_is_exact(synthetic):
    torch = pytest.importorskip("torch")
    store, vectors = synthetic
    texts = [r["text"] for r in text_records(60)]
    query = vectors[7] * 0.6 + vectors[8] * 0.4
    expected, expected_scores = design_similarity_search(
        torch.from_numpy(query[None]), torch.from_numpy(vectors), texts, 15, 0.01, 0.25
    )
    exact = searcher_for(store, softmax_pool=None).search_vector(query, target="text")
    covering = searcher_for(store, softmax_pool=60).search_vector(query, target="text")
    for result in (exact, covering):
        assert [h.text for h in result.hits] == expected
        np.testing.assert_allclose([h.score for h in result.hits], expected_scores, atol=1e-6)
        assert result.softmax_exact == {"text": True} and result.candidates == {"text": 60}
        assert [h.rank for h in result.hits] == list(range(1, len(expected) + 1))
    assert [h.to_dict() for h in exact.hits] == [h.to_dict() for h in covering.hits]


def test_a_smaller_pool_keeps_the_ranking_and_overestimates_scores(synthetic):
    store, vectors = synthetic
    exact = searcher_for(store, softmax_pool=None).search_vector(vectors[3], target="text", threshold=0.0, k=10)
    pooled = searcher_for(store, softmax_pool=20).search_vector(vectors[3], target="text", threshold=0.0, k=10)
    assert pooled.softmax_exact == {"text": False} and pooled.candidates == {"text": 20}
    assert [h.id for h in pooled.hits] == [h.id for h in exact.hits]
    assert all(p.score > e.score for p, e in zip(pooled.hits, exact.hits))
    assert [h.similarity for h in pooled.hits] == pytest.approx([h.similarity for h in exact.hits])


def test_cosine_mode_thresholds_raw_similarity(synthetic):
    store, vectors = synthetic
    result = searcher_for(store, mode="cosine").search_vector(vectors[5], target="text", k=60, threshold=0.2)
    sims = vectors @ vectors[5]
    assert len(result.hits) == int((sims >= 0.2).sum())
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert all(h.score == h.similarity >= 0.2 for h in result.hits)
    assert result.softmax_exact == {}


def test_filters_restrict_candidates_and_the_softmax_runs_over_what_passes(synthetic):
    store, vectors = synthetic
    searcher = searcher_for(store, mode="softmax", softmax_pool=None)
    result = searcher.search_vector(vectors[0], target="text", threshold=0.0, k=60,
                                    filters=Filters(title="O'Brien's notes"))
    assert result.candidates["text"] == 20 and len(result.hits) == 20
    assert {h.article_title for h in result.hits} == {"O'Brien's notes"}
    assert sum(h.score for h in result.hits) == pytest.approx(1.0)
    section = searcher.search_vector(vectors[0], target="text", threshold=0.0, k=60, filters=Filters(section="Intro"))
    assert {h.section for h in section.hits} == {"Intro", "Intro > Details"}
    prefix = searcher.search_vector(vectors[0], target="text", threshold=0.0, k=60,
                                    filters=Filters(url_prefix="https://site1.", where="text LIKE '%topic 3'"))
    assert prefix.hits and all(h.doc_url.startswith("https://site1.") and h.text.endswith("topic 3") for h in prefix.hits)
    images = searcher.search_vector(vectors[0], target="images", threshold=0.0, filters=Filters(image_status="ok"))
    assert images.hits == [] and images.candidates == {"images": 0}
    with pytest.raises(SearchError, match="image-status"):
        searcher.search_vector(vectors[0], target="text", filters=Filters(image_status="ok"))
    with pytest.raises(SearchError, match="invalid filter"):
        searcher.search_vector(vectors[0], target="text", filters=Filters(where="no_such_column = 1"))


def test_both_targets_use_their_own_settings_and_rank_separately(synthetic):
    store, vectors = synthetic
    result = searcher_for(store, target="both", image_threshold=0.0, text_threshold=0.0).search_vector(vectors[1])
    assert [h.target for h in result.hits] == ["text"] * 15 + ["image"] * 5
    images = result.hits_for("images")
    assert [h.rank for h in images] == [1, 2, 3, 4, 5]
    assert images[0].image_status == "not_fetched" and images[0].src_url.startswith("img/")
    assert "src_url" not in result.hits[0].to_dict() and "src_url" in images[0].to_dict()
    assert set(result.tables) == {"text", "images"}


def test_wrong_dimension_missing_table_and_image_query_errors(synthetic, tmp_path):
    store, vectors = synthetic
    searcher = searcher_for(store)
    with pytest.raises(SearchError, match="16"):
        searcher.search_vector(np.ones(8, np.float32), target="text")
    other = Searcher(MmragConfig(store={"db_uri": store.db_uri}, search={**SEED, "table_embedder": "nope"}), store=store)
    with pytest.raises(SearchError, match="chunks__synth__paragraph"):
        other.search_vector(vectors[0], target="text")
    # minilm is text-only: the error names the registered embedders that embed images, before loading anything
    with pytest.raises(SearchError, match=r"cannot embed image queries; use one that can: .*clip"):
        searcher.search(image=tmp_path / "query.png")
    assert searcher._embedder is None
    with pytest.raises(SearchError, match="no database"):
        Searcher(MmragConfig(search=SEED, store={"db_uri": str(tmp_path / "absent")})).search_vector(vectors[0])


# --------------------------------------------------------------------------- the indexed sample corpus


@pytest.fixture(scope="module")
def sample_db(prefect_harness, tmp_path_factory):
    """The sample corpus indexed once with MiniLM (chunks, images with caption surrogates, documents)."""
    from mmrag.flows.index import run_index

    db = tmp_path_factory.mktemp("retrieve") / "db"
    cfg = MmragConfig(search=SEED, store={"db_uri": str(db), "raw_dir": str(db.parent / "raw")}, progress=False)
    summary = run_index([str(SAMPLE_DIR)], cfg)
    assert summary.exit_code(strict=False) == 0
    return db


@pytest.fixture(scope="module")
def sample_searcher(sample_db, minilm):
    return Searcher(MmragConfig(search=SEED, store={"db_uri": str(sample_db)}), embedder=minilm)


@pytest.mark.slow
def test_text_to_text_and_text_to_images_on_the_sample_corpus(sample_searcher):
    result = sample_searcher.search("how does reciprocal rank fusion combine rankings", mode="cosine", k=3)
    assert result.hits[0].article_title.startswith("Reranking")
    assert result.tables == {"text": "chunks__minilm__paragraph"}
    assert set(result.timings_ms) >= {"embed", "search", "total"} and "load_model" not in result.timings_ms
    images = sample_searcher.search("a diagram of a vector index", target="images", mode="cosine", k=3)
    assert len(images.hits) == 3 and all(h.target == "image" and h.src_url for h in images.hits)
    # the design's settings over 135 chunks: softmax scores are small, the ranking is the cosine ranking
    softmax = sample_searcher.search("how does reciprocal rank fusion combine rankings")
    cosine = sample_searcher.search("how does reciprocal rank fusion combine rankings", mode="cosine", k=len(softmax.hits))
    assert [h.id for h in softmax.hits] == [h.id for h in cosine.hits]
    assert softmax.softmax_exact == {"text": True} and all(h.score >= 0.01 for h in softmax.hits)


@pytest.mark.slow
def test_metadata_filters_on_the_sample_corpus(sample_searcher):
    title = "Vector indexes: IVF-PQ versus HNSW"
    hits = sample_searcher.search("recall", mode="cosine", k=50, filters=Filters(title=title)).hits
    assert hits and {h.article_title for h in hits} == {title}
    by_url = sample_searcher.search("recall", mode="cosine", k=50,
                                    filters=Filters(url_prefix=hits[0].doc_url)).hits
    assert {h.doc_url for h in by_url} == {hits[0].doc_url}
    status = sample_searcher.search("figure", target="images", mode="cosine", k=50,
                                    filters=Filters(image_status="not_found")).hits
    assert len(status) == 1 and status[0].image_status == "not_found"
    today = datetime.now(timezone.utc).date()
    recent = sample_searcher.search("recall", mode="cosine", k=5, filters=Filters(fetched_since=str(today))).hits
    assert len(recent) == 5
    future = str(today + timedelta(days=2))
    assert sample_searcher.search("recall", mode="cosine", filters=Filters(fetched_since=future)).hits == []
    with pytest.raises(SearchError, match="invalid date"):
        sample_searcher.search("recall", filters=Filters(fetched_until="yesterday"))


SAMPLE_PUBLISHED = {  # the article:published_time of each sample page
    "contrastive-image-text-embeddings": "2024-02-05", "chunking-strategies-for-rag": "2024-02-19",
    "evaluating-retrieval-metrics": "2024-03-04", "vector-indexes-ivf-pq-vs-hnsw": "2024-03-18",
    "image-captioning-and-ocr-for-retrieval": "2024-04-01", "softmax-temperature-and-similarity-thresholds": "2024-04-15",
    "reranking-cross-encoders-and-rrf": "2024-04-29",
}


def _slug(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".html")


@pytest.mark.slow
def test_publication_dates_are_stored_and_filter_the_sample_corpus(sample_db, sample_searcher):
    store = IndexStore(str(sample_db))
    documents = store.open_table("documents").to_arrow().to_pylist()
    assert {_slug(d["url"]): str(d["published"]) for d in documents} == SAMPLE_PUBLISHED
    published_of = {d["url"]: d["published"] for d in documents}
    for name in ("chunks__minilm__paragraph", "images__minilm"):  # denormalised like article_title
        rows_ = store.open_table(name).to_arrow().select(["doc_url", "published"]).to_pylist()
        assert rows_ and all(r["published"] == published_of[r["doc_url"]] for r in rows_)

    april = Filters(published_since="2024-04-01")
    for target in ("text", "images"):
        every = sample_searcher.search("retrieval", target=target, mode="cosine", k=500).hits
        kept = sample_searcher.search("retrieval", target=target, mode="cosine", k=500, filters=april).hits
        expected = [h.id for h in every if SAMPLE_PUBLISHED[_slug(h.doc_url)] >= "2024-04-01"]
        assert kept and [h.id for h in kept] == expected
    february = sample_searcher.search("retrieval", mode="cosine", k=500,
                                      filters=Filters(published_since="2024-02-06", published_until="2024-02-19")).hits
    assert {_slug(h.doc_url) for h in february} == {"chunking-strategies-for-rag"}
    assert sample_searcher.search("retrieval", mode="cosine", filters=Filters(published_until="2023-12-31")).hits == []
    with pytest.raises(SearchError, match="invalid publication date"):
        sample_searcher.search("retrieval", filters=Filters(published_since="last spring"))


DATED_PAGE = """<html><head><title>Dated</title>
<meta property="article:published_time" content="2023-05-06T08:00:00Z"></head>
<body><article><h1>Dated page</h1><p>Lighthouses guide ships along the rocky northern coast at night.</p>
<figure><img src="missing.png" alt="a lighthouse"><figcaption>A lighthouse at dusk</figcaption></figure>
</article></body></html>"""
UNDATED_PAGE = """<html><head><title>Undated</title></head>
<body><article><h1>Undated page</h1><p>Lighthouse keepers once trimmed the lamp wicks every evening.</p>
</article></body></html>"""


@pytest.mark.slow
def test_an_undated_page_is_excluded_and_an_old_database_gets_dates_on_reparse(prefect_harness, tmp_path, minilm):
    from mmrag.flows.index import run_index

    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "dated.html").write_text(DATED_PAGE, encoding="utf-8")
    (pages / "undated.html").write_text(UNDATED_PAGE, encoding="utf-8")
    db = tmp_path / "db"
    cfg = MmragConfig(search=SEED, store={"db_uri": str(db), "raw_dir": str(tmp_path / "raw")}, progress=False)
    assert run_index([str(pages)], cfg).exit_code(strict=False) == 0

    def search(since: str | None, target: str = "text", searcher: Searcher | None = None):
        searcher = searcher or Searcher(MmragConfig(search=SEED, store={"db_uri": str(db)}), embedder=minilm)
        return searcher.search("lighthouse", target=target, mode="cosine", k=20,
                               filters=Filters(published_since=since))

    assert {_slug(h.doc_url) for h in search(None).hits} == {"dated", "undated"}
    assert {_slug(h.doc_url) for h in search("2023-01-01").hits} == {"dated"}  # null dates never pass a bound
    assert [_slug(h.doc_url) for h in search("2023-01-01", "images").hits] == ["dated"]

    # Make it a database written before publication dates existed.
    store = IndexStore(str(db))
    content = ["chunks__minilm__paragraph", "images__minilm"]
    before = {name: store.open_table(name).to_arrow().drop_columns(["published"]) for name in content}
    for name in [*content, "documents"]:
        store.open_table(name).drop_columns(["published"])
    long_lived = Searcher(MmragConfig(search=SEED, store={"db_uri": str(db)}), embedder=minilm)
    for searcher in (None, long_lived):
        with pytest.raises(SearchError, match="no publication dates.*--reparse"):
            search("2023-01-01", searcher=searcher)

    # An incremental run skips the unchanged pages but adds the column (null: dates unknown) ...
    assert run_index([str(pages)], cfg).to_dict()["documents_unchanged"] == 2
    assert search("2023-01-01").hits == []
    long_lived.refresh()  # forgets the tables and the schemas it cached
    assert search("2023-01-01", searcher=long_lived).hits == []
    # ... and a re-parse fills the dates of rows it keeps, without rewriting them.
    reparse = cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"reparse_from_raw": True})})
    summary = run_index([str(pages)], reparse).to_dict()
    assert summary["chunks_embedded"] == 0
    assert {_slug(h.doc_url) for h in search("2023-01-01").hits} == {"dated"}
    assert [_slug(h.doc_url) for h in search("2023-01-01", "images").hits] == ["dated"]
    for name in content:  # nothing else changed
        after = store.open_table(name).to_arrow()
        assert after.drop_columns(["published"]).sort_by("id").equals(before[name].sort_by("id"))
    dates = {_slug(r["url"]): r["published"] for r in store.open_table("documents").to_arrow().to_pylist()}
    assert {k: str(v) if v else None for k, v in dates.items()} == {"dated": "2023-05-06", "undated": None}


@pytest.mark.slow
def test_searcher_loads_the_embedder_once(sample_db, monkeypatch, minilm):
    from mmrag.pipelines.retrieve import searcher as searcher_module

    calls = []

    def counting_factory(cfg):
        calls.append(cfg.name)
        return minilm

    monkeypatch.setattr(searcher_module, "create_embedder", counting_factory)
    searcher = Searcher(MmragConfig(search=SEED, store={"db_uri": str(sample_db)}))
    first = searcher.search("chunk overlap", mode="cosine", k=2)
    second = searcher.search("softmax temperature", mode="cosine", k=2)
    assert calls == ["minilm"]
    assert "load_model" in first.timings_ms and "load_model" not in second.timings_ms
    assert second.hits[0].article_title.startswith("Softmax temperature")


# --------------------------------------------------------------------------- cross-modal directions


@pytest.mark.slow
def test_image_queries_search_images_and_text_with_a_cross_modal_embedder(tmp_path):
    pytest.importorskip("mmrag.pipelines.clip_embedder", reason="the clip embedder module is not present")
    from mmrag.config import EmbedConfig
    from mmrag.pipelines.embed import create_embedder
    from tests.tiny_checkpoints import SENTENCES, png_bytes, save_random_clip, textured_images

    embed_cfg = {"name": "clip", "model_path": str(save_random_clip(tmp_path / "clip")), "device": "cpu"}
    clip = create_embedder(EmbedConfig(**embed_cfg))
    store = IndexStore(str(tmp_path / "db"))
    images = textured_images(5)
    records = [{"image_path": f"{i}.png", "caption": f"figure {i}", "article_title": "A"} for i in range(5)]
    write_import(tmp_path, store, clip.embed_images(images), records, target="images", label="clip", name="i")
    texts = [{"text": s, "article_title": "A"} for s in SENTENCES]
    write_import(tmp_path, store, clip.embed_texts(SENTENCES), texts, target="text", label="clip", name="t")
    searcher = Searcher(MmragConfig(store={"db_uri": store.db_uri}, embed=embed_cfg, search={**SEED, "mode": "cosine"}),
                        embedder=clip)
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(images[3]))
    image_to_image = searcher.search(image=query, target="images", k=2)
    assert image_to_image.hits[0].src_url == "3.png" and image_to_image.hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert image_to_image.image == str(query)
    image_to_text = searcher.search(image=images[3], target="text", k=3)
    expected = np.argsort(-(clip.embed_texts(SENTENCES) @ clip.embed_images([images[3]])[0]))[:3]
    assert [h.text for h in image_to_text.hits] == [SENTENCES[i] for i in expected]
    text_to_image = searcher.search(SENTENCES[0], target="images", k=5)
    assert len(text_to_image.hits) == 5 and {h.target for h in text_to_image.hits} == {"image"}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not an image")
    with pytest.raises(SearchError, match="cannot be decoded"):
        searcher.search(image=broken, target="images")


@pytest.mark.parametrize("index_type", ["IVF_SQ", "IVF_PQ"])
def test_indexed_tables_use_nprobes_and_refine_and_match_exact_search(tmp_path, index_type):
    from mmrag.pipelines.maintenance import index_config
    from mmrag.pipelines.retrieve.scoring import AUTO_REFINE_DEFAULT, REFINE_BUDGET, auto_refine_factor, refine_factor_for

    assert refine_factor_for(10, 60) == 60 and refine_factor_for(10_000, 60) == REFINE_BUDGET // 10_000
    assert refine_factor_for(REFINE_BUDGET * 2, 5) == 1
    store = IndexStore(str(tmp_path / "db"))
    vectors = unit_rows(3000, 16, seed=5)
    write_import(tmp_path, store, vectors, text_records(3000), target="text", label="synth")
    table = store.open_table("chunks__synth__paragraph")
    config = index_config(3000, 16, index_type)  # what `mmrag maintain` builds
    # every partition probed: what is left to the test is the quantised scan and the exact refine step, with
    # the default refine_factor ("auto") resolved from the index the table has. On IVF_PQ (2 sub-vectors of
    # 8 dimensions here) refine 5 matched exact search on at most 2 of these 5 queries in 8 builds, 80 on all 5.
    searcher = searcher_for(store, mode="cosine", nprobes=config.num_partitions)
    assert SearchConfig().refine_factor == "auto"
    searcher.search_vector(vectors[0], target="text", k=10)
    assert searcher.index_type("text") is None and searcher.refine_factor("text") == AUTO_REFINE_DEFAULT
    table.create_index("vector", config=config)
    lance_type = {"IVF_SQ": "IvfSq", "IVF_PQ": "IvfPq"}[index_type]
    assert store_module.column_index(table, "vector").index_type == lance_type
    assert searcher.index_type("text") is None  # the table as opened before the index was built
    searcher.refresh()
    assert searcher.index_type("text") == lance_type
    assert searcher.refine_factor("text") == {"IVF_SQ": 5, "IVF_PQ": 80}[index_type] == auto_refine_factor(lance_type)
    assert searcher_for(store, refine_factor=7).refine_factor("text") == 7
    assert searcher_for(store, refine_factor=None).refine_factor("text") is None
    for q in vectors[:5]:
        expected = np.argsort(-(vectors @ q))[:10]
        hits = searcher.search_vector(q, target="text", k=10).hits
        assert [h.text for h in hits] == [f"passage {i} about topic {i % 7}" for i in expected]
    pooled = searcher_for(store, softmax_pool=500, nprobes=config.num_partitions).search_vector(
        vectors[0], target="text", threshold=0.0, k=5)
    exact = searcher_for(store, softmax_pool=None).search_vector(vectors[0], target="text", threshold=0.0, k=5)
    assert pooled.softmax_exact == {"text": False} and exact.softmax_exact == {"text": True}
    assert [h.id for h in pooled.hits] == [h.id for h in exact.hits]
    assert exact.candidates == {"text": 3000} and pooled.candidates["text"] <= 500
