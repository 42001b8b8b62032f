"""Import of precomputed vectors, and parity with the original design on its real CLIP index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrag.config import MmragConfig
from mmrag.pipelines.import_vectors import VectorImportError, import_vectors, load_content, load_vectors
from mmrag.pipelines.retrieve import Searcher
from mmrag.pipelines.store import IMAGE_BLOBS, IndexStore
from tests.helpers import shared_corpus

LABEL = "clip-vit-b16-precomputed"


def design_similarity_search(query_embed, target_embeddings, content_list, k=5, threshold=0.05, temperature=0.5):
    """The original design's ``similarity_search``, as it was."""
    import torch

    similarities = torch.nn.functional.cosine_similarity(query_embed, target_embeddings)
    scores = torch.nn.functional.softmax(similarities / temperature, dim=0)
    sorted_indices = scores.argsort(descending=True)
    sorted_scores = scores[sorted_indices]
    filtered_indices = [idx.item() for idx, score in zip(sorted_indices, sorted_scores) if score.item() >= threshold][:k]
    top_results = [content_list[i] for i in filtered_indices]
    result_scores = [scores[i].item() for i in filtered_indices]
    return top_results, result_scores


def tie_groups(items: list, scores: list[float], tol: float = 1e-7) -> list[tuple[float, list]]:
    """Consecutive runs of equal scores with their items sorted: torch's argsort does not order ties stably."""
    groups: list[tuple[float, list]] = []
    for item, score in zip(items, scores):
        if groups and abs(groups[-1][0] - score) <= tol:
            groups[-1][1].append(item)
        else:
            groups.append((score, [item]))
    return [(s, sorted(g, key=json.dumps)) for s, g in groups]


@pytest.fixture(scope="module")
def seed_index(tmp_path_factory):
    """The design's seed index imported into a fresh database."""
    seed = shared_corpus("medium-seed", "seed-index")
    store = IndexStore(str(tmp_path_factory.mktemp("seed") / "db"))
    text = import_vectors(store, seed / "text_embeddings.pt", seed / "text_content.json", embedder=LABEL, target="text")
    images = import_vectors(store, seed / "image_embeddings.pt", seed / "image_content.json", embedder=LABEL,
                            target="images", images_root=seed.parent)
    return seed, store, text, images


@pytest.mark.shared
def test_seed_index_imports_into_our_schemas(seed_index):
    seed, store, text, images = seed_index
    assert (text.table, text.rows, text.dimension, text.documents) == (f"chunks__{LABEL}__paragraph", 86, 512, 2)
    assert (images.table, images.rows, images.dimension) == (f"images__{LABEL}", 17, 512)
    rows = store.open_table(text.table).to_arrow()
    assert rows.schema.field("vector").type.list_size == 512
    assert len(set(rows.column("id").to_pylist())) == 86
    first = rows.to_pylist()[0]
    assert first["embedder"] == LABEL and first["doc_url"].startswith("imported:") and first["section_path"]
    image_rows = store.open_table(images.table).to_arrow().to_pylist()
    assert {r["status"] for r in image_rows} <= {"ok", "not_fetched"} and all(r["caption"] is not None for r in image_rows)
    assert store.last_run()["kind"] == "import"


@pytest.mark.slow
@pytest.mark.shared
def test_every_seed_text_vector_as_query_returns_the_designs_items_order_and_scores(seed_index):
    torch = pytest.importorskip("torch")
    seed, store, _, _ = seed_index
    text_vectors = torch.load(seed / "text_embeddings.pt", weights_only=True).detach()
    image_vectors = torch.load(seed / "image_embeddings.pt", weights_only=True).detach()
    text_content = json.loads((seed / "text_content.json").read_text(encoding="utf-8"))
    image_content = json.loads((seed / "image_content.json").read_text(encoding="utf-8"))
    searcher = Searcher(
        MmragConfig(store={"db_uri": store.db_uri}, embed={"name": "clip"}, search={"preset": "seed", "table_embedder": LABEL}),
        store=store,
    )
    settings = {
        "text": (text_vectors, text_content, dict(k=15, threshold=0.01, temperature=0.25)),
        "images": (image_vectors, image_content, dict(k=5, threshold=0.25, temperature=0.5)),
        # the design's image threshold keeps nothing for text queries over 17 images; check the ordering too
        "images-low": (image_vectors, image_content, dict(k=5, threshold=0.05, temperature=0.5)),
    }
    compared = {name: 0 for name in settings}
    for i in range(text_vectors.shape[0]):
        query = text_vectors[i : i + 1]
        for name, (targets, content, kwargs) in settings.items():
            expected, expected_scores = design_similarity_search(query, targets, content, **kwargs)
            result = searcher.search_vector(query[0].numpy(), target=name.split("-")[0], mode="softmax", **kwargs)
            assert result.softmax_exact == {name.split("-")[0]: True}
            got = [
                {"article_title": h.article_title, "section": h.section, "text": h.text}
                if h.target == "text"
                else {"article_title": h.article_title, "section": h.section, "image_path": h.src_url, "caption": h.text}
                for h in result.hits
            ]
            got_scores = [h.score for h in result.hits]
            assert len(got) == len(expected), (i, name)
            np.testing.assert_allclose(got_scores, expected_scores, atol=1e-5, rtol=0)
            assert [g for _, g in tie_groups(got, got_scores)] == [g for _, g in tie_groups(expected, expected_scores)]
            if len(set(np.round(expected_scores, 7))) == len(expected_scores):
                assert got == expected, (i, name)  # no ties: exactly the same order
            compared[name] += len(expected)
    assert compared["text"] >= 86 and compared["images-low"] >= 86


def test_reimport_is_idempotent_and_drops_stale_rows(tmp_path):
    store = IndexStore(str(tmp_path / "db"))
    vectors = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    records = [{"text": f"t{i}", "article_title": "A" if i < 3 else "B", "section": "S", "url": "https://x/a" if i < 3 else None}
               for i in range(4)]
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    first = import_vectors(store, tmp_path / "v.npy", tmp_path / "c.jsonl", embedder="lab", target="text", chunking_key="k")
    ids = sorted(store.open_table(first.table).to_arrow().column("id").to_pylist())
    again = import_vectors(store, tmp_path / "v.npy", tmp_path / "c.jsonl", embedder="lab", target="text", chunking_key="k")
    assert again.deleted == 0 and sorted(store.open_table(first.table).to_arrow().column("id").to_pylist()) == ids
    docs = sorted(store.open_table(first.table).to_arrow().column("doc_url").to_pylist())
    assert docs == ["https://x/a"] * 3 + ["imported:B"]
    records[1]["text"] = "changed"
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    changed = import_vectors(store, tmp_path / "v.npy", tmp_path / "c.jsonl", embedder="lab", target="text", chunking_key="k")
    table = store.open_table(first.table).to_arrow()
    assert changed.deleted == 1 and table.num_rows == 4 and "changed" in table.column("text").to_pylist()
    stored = dict(zip(table.column("text").to_pylist(), table.column("vector").to_pylist()))
    np.testing.assert_array_equal(stored["t0"], vectors[0])


def test_image_files_found_are_verified_and_stored(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(tmp_path / "imgs" / "red.png")
    records = [{"image_path": "imgs/red.png", "caption": "a red box", "article_title": "A", "section": "S"},
               {"image_path": "imgs/missing.png", "caption": "", "article_title": "A", "section": "S"}]
    (tmp_path / "c.json").write_text(json.dumps(records), encoding="utf-8")
    np.save(tmp_path / "v.npy", np.eye(2, 4, dtype=np.float32))
    store = IndexStore(str(tmp_path / "db"))
    summary = import_vectors(store, tmp_path / "v.npy", tmp_path / "c.json", embedder="lab", target="images")
    assert summary.images_found == 1
    rows = {r["src_url"]: r for r in store.open_table("images__lab").to_arrow().to_pylist()}
    assert rows["imgs/red.png"]["status"] == "ok" and rows["imgs/red.png"]["width"] == 20
    assert rows["imgs/missing.png"]["status"] == "not_fetched" and rows["imgs/missing.png"]["caption_missing"]
    assert store.open_table(IMAGE_BLOBS).count_rows() == 1
    assert rows["imgs/red.png"]["vector_source"] == "imported"


def test_bad_inputs_fail_with_one_line_messages(tmp_path):
    store = IndexStore(str(tmp_path / "db"))
    np.save(tmp_path / "v.npy", np.ones((2, 4), np.float32))
    np.save(tmp_path / "flat.npy", np.ones(4, np.float32))
    (tmp_path / "c.json").write_text(json.dumps([{"text": "only one"}]), encoding="utf-8")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(VectorImportError, match="1 records but .* 2 vectors"):
        import_vectors(store, tmp_path / "v.npy", tmp_path / "c.json", embedder="lab", target="text")
    with pytest.raises(VectorImportError, match="2-D"):
        load_vectors(tmp_path / "flat.npy")
    with pytest.raises(VectorImportError, match="not JSON"):
        load_content(tmp_path / "bad.json")
    with pytest.raises(VectorImportError, match=".pt or .npy"):
        load_vectors(tmp_path / "c.json")
    with pytest.raises(VectorImportError, match="without '__'"):
        import_vectors(store, tmp_path / "v.npy", tmp_path / "c.json", embedder="a__b", target="text")
    (tmp_path / "c2.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    import_vectors(store, tmp_path / "v.npy", tmp_path / "c2.json", embedder="lab", target="text")
    np.save(tmp_path / "wide.npy", np.ones((2, 6), np.float32))
    with pytest.raises(VectorImportError, match="4-d vectors"):
        import_vectors(store, tmp_path / "wide.npy", tmp_path / "c2.json", embedder="lab", target="text")
    (tmp_path / "dated.json").write_text(json.dumps([{"text": "a", "published": "2024-05-06"},
                                                     {"text": "b", "published": "May 2024"}]), encoding="utf-8")
    with pytest.raises(VectorImportError, match="text record 1: 'published' must be a date as YYYY-MM-DD"):
        import_vectors(store, tmp_path / "v.npy", tmp_path / "dated.json", embedder="lab", target="text")


def test_pt_files_load_like_npy(tmp_path):
    torch = pytest.importorskip("torch")
    tensor = torch.randn(3, 5, requires_grad=True)
    torch.save(tensor, tmp_path / "v.pt")
    np.testing.assert_array_equal(load_vectors(tmp_path / "v.pt"), tensor.detach().numpy())
