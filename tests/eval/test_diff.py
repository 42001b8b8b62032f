"""Per-query run diffs: ordering and pairing (pure), the CLI, the gate's worst regressions, and a real k=10 vs k=1 diff."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.eval.diff import aggregate_diff, diff_runs, format_diff, query_diff, worst_regressions
from mmrag.eval.gate import make_baseline, write_baseline
from mmrag.eval.results import load_run, write_run
from tests.eval.fakes import fake_result
from tests.eval.sample_runs import sample_runs

runner = CliRunner()


def rows(values: dict[str, float], metric: str = "recall@5", target: str = "text") -> list[dict]:
    """Per-query rows with one metric: ``{query id: value}`` -> rows as a run directory stores them."""
    return [{"query_id": q, "target": target, "kind": "text", "query": f"text of {q}", metric: v} for q, v in values.items()]


# --------------------------------------------------------------------------- pure


def test_query_diff_lists_changed_queries_worst_regression_first():
    a = rows({"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 1.0, "q5": 0.2, "q6": 0.5})
    b = rows({"q1": 0.0, "q2": 0.5, "q3": 1.0, "q4": 0.5, "q5": 0.4}) + rows({"q1": 0.0}, target="image")
    hits_b = [{"target": "text", "query_id": "q1", "rank": r, "id": f"c{r}", "relevant": r == 2, "text": "x" * 300}
              for r in (3, 1, 2)]
    table = query_diff(a, b, metric="recall@5", target="text", hits_b=hits_b, n_hits=2)
    assert list(table["query_id"]) == ["q1", "q4", "q3", "q5"]  # -1.0, -0.5, then +1.0, +0.2
    assert list(table["change"]) == ["regressed", "regressed", "improved", "improved"]
    assert {"recall@5_a", "recall@5_b", "delta"} <= set(table.columns)
    first = table.iloc[0]
    assert first["query"] == "text of q1" and first["hits_a"] == []
    assert [h["rank"] for h in first["hits_b"]] == [1, 2] and [h["relevant"] for h in first["hits_b"]] == [False, True]
    assert first["hits_b"][0]["snippet"].endswith("…") and len(first["hits_b"][0]["snippet"]) == 100
    assert len(query_diff(a, b, metric="recall@5", target=None)) == 4  # the image row has no partner
    assert len(query_diff(a, b, metric="recall@5", include_unchanged=True)) == 5

    agg = aggregate_diff(a, b, metric="recall@5", target="text")
    assert agg["n_queries"] == 5 and agg["worse"] == 2 and agg["better"] == 2 and agg["same"] == 1 and agg["missing"] == 1
    assert agg["delta"] == pytest.approx((0.0 + 0.5 + 1.0 + 0.5 + 0.4 - 1.0 - 0.5 - 0.0 - 1.0 - 0.2) / 5)
    assert 0 < agg["p_value"] <= 1

    worst = worst_regressions({"per_query": a}, b, "text:recall@5", n=1)
    assert worst == [{"target": "text", "query_id": "q1", "query": "text of q1", "a": 1.0, "b": 0.0, "delta": -1.0}]
    assert [w["query_id"] for w in worst_regressions({"per_query": a}, b, "recall@5")] == ["q1", "q4"]


def test_diff_of_synthetic_runs_and_cli_errors(tmp_path):
    before = write_run(fake_result([1.0, 1.0, 0.0, 0.5], run_id="before"), tmp_path / "runs")
    after = write_run(fake_result([0.0, 1.0, 0.5, 0.5], run_id="after"), tmp_path / "runs")
    diff = diff_runs(before, after, metric="recall@10")
    assert list(diff.queries["query_id"]) == ["q-000", "q-002"] and diff.warnings == [] and diff.setting_changes == {}
    text = format_diff(diff)
    assert "text recall@10 0.6250 -> 0.5000" in text and "1 worse, 1 better, 2 unchanged" in text
    assert "q-000  1.000 -> 0.000  (-1.000, regressed)  question 0" in text
    assert "    A   1. * chunk" in text and "    B   1.   chunk" in text

    other = write_run(fake_result([1.0, 1.0, 0.0, 0.5], run_id="other", corpus="d" * 64), tmp_path / "runs")
    result = runner.invoke(app, ["eval", "diff", str(before), str(other), "--metric", "mrr"])
    assert result.exit_code == 0, result.output
    assert "corpus differs" in result.output and "no query's mrr changed" in result.output

    cases = [
        ([str(before), str(tmp_path / "nowhere")], "is not an eval run directory"),
        ([str(before), str(after), "--metric", "recall@7"], "metric 'recall@7' is not in run A"),
        ([str(before), str(after), "--target", "image"], "run A scored no query on target 'image'"),
        ([str(before), str(after), "--target", "images"], "unknown target 'images'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", "diff", *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mmrag: error: ") and message in lines[0], (args, result.output)


# --------------------------------------------------------------------------- real runs over the sample corpus


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness, minilm):
    """The sample index with its k=10 and k=1 runs (shared with test_export through the session temp folder)."""
    return sample_runs(tmp_path_factory, embedder=minilm)


@pytest.mark.slow
def test_k10_to_k1_diff_lists_regressed_queries_with_both_sides_hits(runs):
    result = runner.invoke(app, ["eval", "diff", str(runs.k10), str(runs.k1), "--metric", "recall@5", "--hits", "5", "--json"])
    assert result.exit_code == 0, result.output
    diff = json.loads(result.stdout)
    agg = diff["aggregate"]
    assert diff["target"] == "text" and diff["setting_changes"]["text_k"] == [10, 1]
    assert agg["delta"] < 0 and agg["p_value"] < 0.05 and agg["significant"] and agg["better"] == 0
    queries = diff["queries"]
    assert len(queries) == agg["worse"] >= 5
    deltas = [q["delta"] for q in queries]
    assert deltas == sorted(deltas) and all(q["change"] == "regressed" for q in queries)
    entries = {e["id"]: e["query"] for e in map(json.loads, (runs.k10 / "queries.jsonl").read_text().splitlines())}
    for q in queries:
        assert q["query"] == entries[q["query_id"]]
        assert len(q["hits_a"]) == 5 and len(q["hits_b"]) == 1
        assert q["hits_b"][0]["id"] == q["hits_a"][0]["id"]  # k=1 keeps the k=10 run's first hit
        assert sum(h["relevant"] for h in q["hits_a"]) > sum(h["relevant"] for h in q["hits_b"])  # the top 5 of each
        assert all(h["snippet"] and h["doc_url"].endswith(".html") for h in q["hits_a"])

    result = runner.invoke(app, ["eval", "diff", str(runs.k10), str(runs.k1), "--limit", "2"])
    assert result.exit_code == 0, result.output
    first = queries[0]
    assert f"  {first['query_id']}  {first['recall@5_a']:.3f} -> {first['recall@5_b']:.3f}" in result.output and first["query"] in result.output
    assert f"{agg['worse']} queries changed, worst regressions first (first 2; --limit 0 shows all)" in result.output
    assert "setting: image_k 10 -> 1, text_k 10 -> 1" in result.output


@pytest.mark.slow
def test_failed_gate_prints_the_worst_regressed_queries(runs, tmp_path):
    expected = worst_regressions(make_baseline(load_run(runs.k10)), load_run(runs.k1), "text:recall@10", n=5)
    assert len(expected) == 5 and all(r["delta"] < 0 and r["query"] for r in expected)
    baseline = write_baseline(runs.k10, tmp_path / "k10.json")
    result = runner.invoke(app, ["eval", "gate", "--run", str(runs.k1), "--baseline", str(baseline),
                                 "--metric", "text:recall@10"])
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.output and "worst regressed queries on text:recall@10:" in result.output
    for row in expected:
        assert f"  {row['query_id']}  text  {row['a']:.3f} -> {row['b']:.3f}  {row['query']}" in result.output
