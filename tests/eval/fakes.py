"""Synthetic eval results for tests that need run directories but no index."""

from __future__ import annotations

from datetime import datetime, timezone

from mmrag.eval.evalset import EvalEntry, evalset_fingerprint
from mmrag.eval.metrics import aggregate_rows, metric_names
from mmrag.eval.run import EvalResult

METRICS = metric_names([1, 5, 10])


def fake_result(recall10: list[float], *, run_id: str = "r1", corpus: str = "c" * 64, kinds=None) -> EvalResult:
    """An :class:`EvalResult` whose text queries have the given recall@10 (other metrics derived from it)."""
    n = len(recall10)
    kinds = kinds or ["text"] * n
    entries = [EvalEntry(id=f"q-{i:03d}", query=f"question {i}", kind=kinds[i], relevant=[{"url": "a.html"}],
                         reference_answer="answer") for i in range(n)]
    per_query = []
    for i, value in enumerate(recall10):
        row = {"query_id": entries[i].id, "kind": kinds[i], "target": "text", "query": entries[i].query,
               "n_relevant": 2, "n_retrieved": 10, "n_relevant_retrieved": round(2 * value),
               "first_relevant_rank": 1 if value else None}
        row.update({m: value for m in METRICS})
        per_query.append(row)
    hits = [{"run_id": run_id, "query_id": e.id, "kind": e.kind, "target": "text", "rank": 1, "id": f"c{i}",
             "score": 0.5, "similarity": 0.5, "retrieval_score": 0.5, "doc_url": "file:///x/a.html",
             "article_title": "A", "section": "A > S", "text": "chunk", "src_url": None, "image_sha256": None,
             "image_status": None, "relevant": bool(recall10[i]), "labelled": True} for i, e in enumerate(entries)]
    return EvalResult(
        run_id=run_id, created_at=datetime(2024, 5, 1, tzinfo=timezone.utc),
        setting={"embedder": "minilm", "table_embedder": None, "chunking": "paragraph", "target": "text",
                 "mode": "softmax", "reranker": "none", "rerank_candidates": None, "softmax_pool": 10000,
                 "text_k": 10, "text_threshold": 0.01, "text_temperature": 0.25, "image_k": 5,
                 "image_threshold": 0.25, "image_temperature": 0.5, "tables": {"text": "chunks__minilm__paragraph"}},
        config={}, queries_path="set.jsonl", entries=entries, metrics=METRICS, per_query=per_query,
        aggregates=aggregate_rows(per_query, METRICS), hits=hits,
        relevant={"text": {e.id: [f"c{i}", f"d{i}"] for i, e in enumerate(entries)}},
        table_versions={"chunks__minilm__paragraph": 3, "documents": 3}, corpus_fingerprint=corpus,
        evalset_fingerprint=evalset_fingerprint(entries),
    )
