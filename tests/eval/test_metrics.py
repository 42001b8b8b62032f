"""ranx metrics per query and aggregated; the worked example of the sample article as ground truth."""

from __future__ import annotations

import pytest

from mmrag.eval.metrics import aggregate_rows, metric_names, per_query_rows, score_queries, summary_view

pytestmark = pytest.mark.slow  # ranx compiles its numba kernels on first use


def test_metric_names_cover_every_cutoff_and_mrr():
    assert metric_names([5, 1]) == ["recall@1", "recall@5", "precision@1", "precision@5", "ndcg@1", "ndcg@5",
                                    "hit_rate@1", "hit_rate@5", "mrr"]
    with pytest.raises(ValueError):
        metric_names([0])


def test_worked_example_of_the_evaluating_retrieval_article():
    # q1: 4 relevant documents, retrieved at ranks 2, 3 and 7 of 10; the fourth is never retrieved.
    ranked = {"q1": ["n1", "d17", "d04", "n2", "n3", "n4", "d31", "n5", "n6", "n7"]}
    relevant = {"q1": {"d17", "d04", "d31", "d99"}}
    scores = score_queries(relevant, ranked, ["recall@5", "recall@10", "precision@5", "hit_rate@1", "mrr", "ndcg@10"])
    q1 = scores["q1"]
    assert q1["recall@5"] == pytest.approx(0.5)
    assert q1["recall@10"] == pytest.approx(0.75)
    assert q1["precision@5"] == pytest.approx(0.4)
    assert q1["hit_rate@1"] == 0
    assert q1["mrr"] == pytest.approx(0.5)
    assert q1["ndcg@10"] == pytest.approx(0.572, abs=5e-4)


def test_queries_without_hits_score_zero_and_unlabelled_queries_are_not_scored():
    relevant = {"a": {"x"}, "b": {"y"}, "c": set()}
    scores = score_queries(relevant, {"a": ["x"]}, ["recall@5", "mrr"])
    assert scores == {"a": {"recall@5": 1.0, "mrr": 1.0}, "b": {"recall@5": 0.0, "mrr": 0.0}}
    # Every query retrieved nothing (ranx cannot build such a run by itself).
    assert score_queries({"a": {"x"}}, {"a": []}, ["recall@5", "precision@5"]) == {"a": {"recall@5": 0.0, "precision@5": 0.0}}


def test_recall_denominator_counts_every_relevant_item_in_the_index():
    scores = score_queries({"q": {"c1", "c2", "c3", "c4"}}, {"q": ["c1", "z"]}, ["recall@5", "precision@1"])
    assert scores["q"] == {"recall@5": 0.25, "precision@1": 1.0}


def test_per_query_rows_and_aggregates_per_target_and_kind():
    queries = [{"id": "t1", "kind": "text", "query": "a"}, {"id": "d1", "kind": "detail", "query": "b"},
               {"id": "f1", "kind": "figure", "query": "c"}]
    relevant = {"text": {"t1": ["c1", "c2"], "d1": ["c3"]}, "image": {"f1": ["i1"]}}
    ranked = {"text": {"t1": ["c1", "x"], "d1": ["x", "c3"], "f1": ["c1"]}, "image": {"f1": ["i9", "i1"], "t1": []}}
    names = metric_names([1, 2])
    rows = per_query_rows(queries, relevant, ranked, names)
    by_key = {(r["target"], r["query_id"]): r for r in rows}
    assert set(by_key) == {("text", "t1"), ("text", "d1"), ("image", "f1")}
    t1 = by_key[("text", "t1")]
    assert (t1["n_relevant"], t1["n_retrieved"], t1["n_relevant_retrieved"], t1["first_relevant_rank"]) == (2, 2, 1, 1)
    assert t1["recall@2"] == 0.5 and by_key[("text", "d1")]["mrr"] == 0.5 and by_key[("image", "f1")]["hit_rate@1"] == 0
    aggregates = aggregate_rows(rows, names)
    assert [(a["target"], a["kind"], a["n_queries"]) for a in aggregates] == [
        ("text", "all", 2), ("text", "detail", 1), ("text", "text", 1), ("image", "all", 1), ("image", "figure", 1)]
    assert aggregates[0]["mrr"] == pytest.approx(0.75)
    view = summary_view(aggregates, names)
    assert view["overall"]["image"]["mrr"] == 0.5 and view["by_kind"]["detail"]["text"]["recall@1"] == 0.0
