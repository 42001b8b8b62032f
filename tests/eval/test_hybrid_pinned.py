"""Hybrid retrieval on pinned table versions: eval, then more rows written, then eval again (nothing modified by queries)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.config import load_config
from mmrag.eval.evalset import load_evalset
from mmrag.eval.run import run_evaluation
from mmrag.flows.index import run_index
from mmrag.pipelines.retrieve import Searcher
from mmrag.pipelines.store import IndexStore
from tests.helpers import REPO_ROOT, SAMPLE_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
SAMPLE_SET = REPO_ROOT / "data" / "eval" / "sample.jsonl"
FIRST = ["chunking-strategies-for-rag.html", "reranking-cross-encoders-and-rrf.html", "evaluating-retrieval-metrics.html"]
LATER = ["softmax-temperature-and-similarity-thresholds.html", "vector-indexes-ivf-pq-vs-hnsw.html"]


def _copy(pages: list[str], folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for page in pages:
        shutil.copy(SAMPLE_DIR / page, folder / page)
    if not (folder / "images").exists():
        shutil.copytree(SAMPLE_DIR / "images", folder / "images")


def _versions(store: IndexStore) -> dict[str, int]:
    return store.current_versions()


def test_hybrid_eval_on_pinned_versions_before_and_after_more_rows(tmp_path, minilm):
    site = tmp_path / "site"
    _copy(FIRST, site)
    base = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False,
            "images.ocr": False}
    run_index([str(site)], load_config(None, base))
    store = IndexStore(str(tmp_path / "db"))
    entries = [e for e in load_evalset(SAMPLE_SET) if all(label.url in FIRST + LATER for label in e.relevant)]
    settings = [{"search.mode": "hybrid"}, {"search.mode": "cosine", "search.reranker": "hybrid"}]

    def evaluate_all() -> list[dict]:
        out = []
        for setting in settings:
            cfg = load_config(None, {**base, **setting, "eval.target": "both"})
            before = _versions(store)
            result = run_evaluation(entries, cfg, searcher=Searcher(cfg, embedder=minilm), queries_path=SAMPLE_SET)
            assert _versions(store) == before, "a query modified a table"
            assert result.table_versions and all(result.table_versions[t] == before[t] for t in result.table_versions)
            out.append(result.summary["overall"]["text"])
        return out

    first = evaluate_all()
    assert all(o["n_queries"] > 0 and o["recall@10"] > 0 for o in first)

    _copy(LATER, site)  # more pages: more rows in the same tables
    run_index([str(site)], load_config(None, base))
    second = evaluate_all()
    assert all(o["n_queries"] >= f["n_queries"] for o, f in zip(second, first))
    assert all(o["recall@10"] > 0 for o in second)

    # the CLI, as a user runs it after a search has already happened
    runner = CliRunner()
    searched = runner.invoke(app, ["search", "how does reciprocal rank fusion combine rankings", "--db", str(tmp_path / "db"),
                                   "--mode", "hybrid", "--json"])
    assert searched.exit_code == 0, searched.output
    assert json.loads(searched.stdout)["hits"]
    ran = runner.invoke(app, ["eval", "run", "--db", str(tmp_path / "db"), "--queries", str(SAMPLE_SET), "--mode", "cosine",
                              "--reranker", "hybrid", "--out", str(tmp_path / "runs"), "--json"])
    assert ran.exit_code == 0, ran.output
