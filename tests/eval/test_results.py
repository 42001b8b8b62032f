"""Run directories, fingerprints and the eval_history table."""

from __future__ import annotations

import re

import json

import pyarrow.parquet as pq

from mmrag.eval.results import corpus_fingerprint, git_commit, load_ranx, load_run, read_history, write_run
from tests.eval.fakes import fake_result


def test_corpus_fingerprint_uses_content_hashes_only():
    here = [{"url": "file:///home/a/clone/data/sample/x.html", "content_hash": "h1", "status": "ok"},
            {"url": "file:///home/a/clone/data/sample/y.html", "content_hash": "h2", "status": "ok"}]
    elsewhere = [{"url": "file:///ci/build/data/sample/y.html", "content_hash": "h2", "status": "ok"},
                 {"url": "file:///ci/build/data/sample/x.html", "content_hash": "h1", "status": "ok"}]
    assert corpus_fingerprint(here) == corpus_fingerprint(elsewhere)
    gone = here + [{"url": "z", "content_hash": "h3", "status": "gone"}]
    assert corpus_fingerprint(gone) == corpus_fingerprint(here)
    assert corpus_fingerprint(here[:1]) != corpus_fingerprint(here)


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    assert re.fullmatch(r"[0-9a-f]{40}", git_commit())  # the tests run from a git checkout of mmrag


def test_write_run_layout_round_trip_and_history(tmp_path):
    history = str(tmp_path / "history")
    result = fake_result([1.0, 0.5, 0.0], run_id="20240501T000000Z-aaaaaa")
    run_dir = write_run(result, tmp_path / "runs", db_uri="db", history_uri=history)
    assert run_dir == tmp_path / "runs" / result.run_id
    assert {p.name for p in run_dir.iterdir()} == {
        "run.json", "metrics.json", "aggregates.parquet", "per_query.parquet", "per_query.json", "hits.parquet",
        "qrels.json", "queries.jsonl"}
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["format"] == "mmrag-eval-run/1" and manifest["targets"] == ["text"]
    assert manifest["cutoffs"] == [1, 5, 10] and manifest["version_tag"] is None
    assert manifest["table_versions"] == {"chunks__minilm__paragraph": 3, "documents": 3}
    per_query = pq.read_table(run_dir / "per_query.parquet")
    assert {"query_id", "kind", "target", "recall@10", "ndcg@5", "mrr"} <= set(per_query.column_names)
    hits = pq.read_table(run_dir / "hits.parquet").to_pylist()
    assert {"query_id", "target", "rank", "score", "doc_url", "section", "text", "src_url", "image_sha256",
            "relevant"} <= set(hits[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["overall"]["text"]["recall@10"] == 0.5 and metrics["aggregates"][0]["kind"] == "all"
    record = load_run(run_dir)
    assert record.run_id == result.run_id and len(record.per_query) == 3
    qrels, run = load_ranx(run_dir, "text")
    assert set(qrels.keys()) == {"q-000", "q-001", "q-002"} and set(run.keys()) == set(qrels.keys())

    write_run(fake_result([0.0, 0.0, 0.5], run_id="20240502T000000Z-bbbbbb"), tmp_path / "runs", history_uri=history)
    frame = read_history(history)
    assert list(frame["run_id"]) == [result.run_id, "20240502T000000Z-bbbbbb"]
    assert list(frame["text_recall@10"]) == [0.5, 0.5 / 3]
    assert {"commit", "corpus_fingerprint", "evalset_fingerprint", "embedder", "chunking", "text_k", "n_text_queries"} <= set(frame.columns)
