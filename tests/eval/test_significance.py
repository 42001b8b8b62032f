"""Paired significance tests (ranx): identical runs, clear differences, ranx.compare over shared qrels."""

from __future__ import annotations

import pytest

from mmrag.eval.significance import compare_per_query, compare_ranked, paired_p_value

pytestmark = pytest.mark.slow  # ranx compiles its numba kernels on first use


def rows(values: list[float], metric: str = "recall@5", target: str = "text") -> list[dict]:
    return [{"query_id": f"q{i}", "target": target, metric: v} for i, v in enumerate(values)]


@pytest.mark.parametrize("stat_test", ["student", "fisher"])
def test_identical_values_are_not_significant_and_a_consistent_drop_is(stat_test):
    base = [1.0, 0.5, 1.0, 0.75, 1.0, 0.5, 1.0, 1.0, 0.25, 1.0, 0.5, 1.0]
    assert paired_p_value(base, base, stat_test=stat_test) == 1.0
    worse = [max(0.0, v - 0.5) for v in base]
    assert paired_p_value(base, worse, stat_test=stat_test) < 0.01
    one_change = base[:-1] + [0.0]
    assert paired_p_value(base, one_change, stat_test=stat_test) > 0.05


def test_fisher_p_values_are_monte_carlo_estimates_close_to_the_exact_one():
    # ranx's numba-parallel sampler does not honour the seed across threads, so repeated calls differ
    # slightly; with 8 pairs there are only 2^8 sign flips, so the exact p-value is known.
    import itertools

    a, b = [1, 0, 1, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 1, 0, 0]
    diffs = [x - y for x, y in zip(a, b)]
    observed = abs(sum(diffs))
    exact = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed
                for signs in itertools.product((1, -1), repeat=len(diffs))) / 2 ** len(diffs)
    estimates = [paired_p_value(a, b, stat_test="fisher", n_permutations=4000) for _ in range(3)]
    assert all(abs(p - exact) < 0.04 for p in estimates), (estimates, exact)


def test_compare_per_query_pairs_by_query_id_and_counts_wins():
    control = rows([1.0, 1.0, 0.0, 1.0])
    treatment = list(reversed(rows([1.0, 0.0, 0.0, 1.0]))) + [{"query_id": "extra", "target": "text", "recall@5": 1.0}]
    [row] = compare_per_query(control, treatment, ["recall@5"])
    assert (row["n_queries"], row["wins"], row["ties"], row["losses"], row["missing"]) == (4, 0, 3, 1, 1)
    assert row["delta"] == pytest.approx(-0.25) and 0 < row["p_value"] <= 1


def test_compare_ranked_runs_ranx_compare_over_shared_qrels():
    relevant = {f"q{i}": {f"rel{i}"} for i in range(12)}
    good = {q: [f"rel{q[1:]}", "x"] for q in relevant}
    bad = {q: ["x", "y", "z"] for q in relevant}
    out = compare_ranked(relevant, {"good": good, "bad": bad}, ["mrr"], stat_test="student")
    row = next(r for r in out if r["control"] == "good")
    assert row["control_score"] == 1.0 and row["treatment_score"] == 0.0 and row["significant"]
