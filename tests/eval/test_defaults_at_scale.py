"""With no flags and no config, search, eval and the sweep's reference setting return hits on a 12,000-row table.

The original design's softmax (``--preset seed``) is kept exactly, with its corpus-size caveat: at
this size no text score reaches its threshold, which is why it is not the default.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.config import MmragConfig
from mmrag.eval.evalset import load_evalset
from mmrag.eval.sweep import run_sweep
from mmrag.pipelines.import_vectors import import_vectors
from mmrag.pipelines.retrieve import Searcher
from mmrag.pipelines.rows import document_id
from mmrag.pipelines.store import DOCUMENTS, IndexStore, documents_schema

pytestmark = pytest.mark.slow
ROWS = 12_000
TOPICS = ["gradient descent", "convolution kernels", "recurrent networks", "attention heads", "word embeddings",
          "variational autoencoders", "generative adversarial training", "dimensionality reduction"]


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    """12,000 chunk rows under the default table name: random 384-d vectors (MiniLM's size), topical texts."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(ROWS, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [{"text": f"Note {i} on {TOPICS[i % len(TOPICS)]}: paragraph {i} of a long technical blog.",
                "article_title": f"Post {i // 100}", "section": TOPICS[i % len(TOPICS)].title(),
                "url": f"https://blog.example/post-{i // 100}"} for i in range(ROWS)]
    np.save(root / "v.npy", vectors)
    (root / "c.json").write_text(json.dumps(records), encoding="utf-8")
    store = IndexStore(str(root / "db"))
    import_vectors(store, root / "v.npy", root / "c.json", embedder="minilm", target="text",
                   chunking_key=MmragConfig().chunking.key())
    # the documents rows an index run writes (eval reads their text and content hashes)
    urls = sorted({r["url"] for r in records})
    store.upsert(DOCUMENTS, pa.Table.from_pylist(
        [{"id": document_id(u), "url": u, "status": "ok", "content_hash": u, "title": u,
          "text": "\n\n".join(r["text"] for r in records if r["url"] == u)} for u in urls], schema=documents_schema()))
    queries = root / "q.jsonl"
    queries.write_text("\n".join(json.dumps({"id": f"q{t}", "query": f"how does {topic} work",
                                             "relevant": [{"url": "post-3", "section": topic.title()}]})
                                 for t, topic in enumerate(TOPICS[:4])) + "\n", encoding="utf-8")
    return root / "db", queries


def test_the_default_search_returns_k_hits_where_the_seed_preset_finds_nothing(big_db, minilm):
    db, _ = big_db
    cfg = MmragConfig(store={"db_uri": str(db)})
    result = Searcher(cfg, embedder=minilm).search("how are recurrent networks trained")
    assert len(result.hits) == cfg.search.text_k
    # the seed preset over the same table (its own default would be plain paragraph chunks)
    seed = MmragConfig(store={"db_uri": str(db)}, search={"preset": "seed"}, chunking=cfg.chunking.model_dump())
    assert seed.search.mode == "softmax"
    assert Searcher(seed, embedder=minilm).search("how are recurrent networks trained").hits == []


def test_cli_search_and_eval_run_with_no_flags_return_hits(big_db, tmp_path):
    db, queries = big_db
    runner = CliRunner()
    searched = runner.invoke(app, ["search", "attention heads in transformers", "--db", str(db), "--json"])
    assert searched.exit_code == 0, searched.output
    assert len(json.loads(searched.stdout)["hits"]) == MmragConfig().search.text_k
    # the table holds text only (no image table): evaluate the text target
    ran = runner.invoke(app, ["eval", "run", "--db", str(db), "--queries", str(queries), "--out", str(tmp_path / "runs"),
                              "--target", "text", "--json"])
    assert ran.exit_code == 0, ran.output
    run_dir = json.loads(ran.stdout)["run_dir"]
    per_query = Counter(hit["query_id"] for hit in pq.read_table(f"{run_dir}/hits.parquet").to_pylist())
    assert per_query and all(n == MmragConfig().search.text_k for n in per_query.values())


def test_the_sweeps_reference_setting_returns_hits(big_db, minilm):
    db, queries = big_db
    cfg = MmragConfig(store={"db_uri": str(db)}, eval={"target": "text"})
    sweep = run_sweep(load_evalset(queries), cfg, {}, queries_path=queries)
    (result,) = sweep.results
    assert result.hits and len(result.hits) == 4 * cfg.search.text_k
