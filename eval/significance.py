"""Significance of the difference between two eval runs: ranx's paired tests over per-query metric values.

Two tests, as in ``ranx.compare(..., stat_test=...)``:

* ``student``: two-sided paired Student's t-test (``ranx.statistical_tests.paired_student_t_test``).
* ``fisher``: Fisher's randomization test, ``n_permutations`` random swaps of the paired values
  (``ranx.statistical_tests.fisher_randomization_test``). Its p-value is a Monte Carlo estimate,
  and ranx's numba-parallel sampler does not honour the seed across threads, so repeated calls
  differ by about ±0.02 at 1,000 permutations: the gate defaults to the deterministic t-test; use
  ``n_permutations`` ≥ 10,000 when gating with ``fisher``.

Pairing is by query id (and target). :func:`compare_ranked` runs ``ranx.compare`` itself when both
runs share one qrels (same index and chunking); :func:`compare_per_query` applies the same tests to
stored per-query values, which also works across chunkings (different chunk ids, same queries)
and against a baseline file that keeps only per-query values. A p-value that is undefined (all
differences zero, or fewer than two queries) is reported as 1.0: no evidence of a difference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from mmrag.eval.metrics import build_qrels, build_run

STAT_TESTS = ("student", "fisher")


def paired_p_value(
    control: Sequence[float],
    treatment: Sequence[float],
    *,
    stat_test: str = "student",
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> float:
    """Two-sided p-value of ranx's paired test between two equally long, paired value lists."""
    if stat_test not in STAT_TESTS:
        raise ValueError(f"unknown stat_test {stat_test!r}: use {' or '.join(STAT_TESTS)}")
    a = np.asarray(control, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size < 2 or np.array_equal(a, b):
        return 1.0
    if stat_test == "student":
        from ranx.statistical_tests import paired_student_t_test

        with warnings.catch_warnings():
            # constant differences (every query moved by the same amount) make scipy warn; p is still 0
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value, _ = paired_student_t_test(a, b, max_p=0.05)
    else:
        from ranx.statistical_tests import fisher_randomization_test

        p_value, _ = fisher_randomization_test(a, b, n_permutations, 0.05, random_seed)
    p_value = float(p_value)
    return 1.0 if math.isnan(p_value) else p_value


def compare_per_query(
    control: Iterable[Mapping[str, Any]],
    treatment: Iterable[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    targets: Sequence[str] | None = None,
    stat_test: str = "student",
    max_p: float = 0.05,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> list[dict[str, Any]]:
    """Compare two runs' per-query rows (``query_id``, ``target`` and metric columns), paired by query.

    One row per (target, metric): ``target, metric, n_queries, control, treatment, delta``
    (treatment − control), ``p_value, significant`` (p < ``max_p``), ``wins, ties, losses`` of the
    treatment, and ``missing`` (queries scored in only one run; left out of the test).
    """
    def index(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
        return {(r["target"], r["query_id"]): r for r in rows}

    a, b = index(control), index(treatment)
    wanted = list(targets) if targets else sorted({t for t, _ in a} | {t for t, _ in b})
    out: list[dict[str, Any]] = []
    for target in wanted:
        keys = sorted(k for k in a.keys() & b.keys() if k[0] == target)
        missing = sum(1 for k in a.keys() ^ b.keys() if k[0] == target)
        if not keys:
            continue
        for metric in metrics:
            if metric not in a[keys[0]] or metric not in b[keys[0]]:
                raise KeyError(f"metric {metric!r} is not in both runs' per-query values")
            x = np.array([float(a[k][metric]) for k in keys])
            y = np.array([float(b[k][metric]) for k in keys])
            p = paired_p_value(x, y, stat_test=stat_test, n_permutations=n_permutations, random_seed=random_seed)
            out.append(
                {
                    "target": target,
                    "metric": metric,
                    "n_queries": len(keys),
                    "control": float(x.mean()),
                    "treatment": float(y.mean()),
                    "delta": float(y.mean() - x.mean()),
                    "p_value": p,
                    "significant": p < max_p,
                    "stat_test": stat_test,
                    "wins": int((y > x).sum()),
                    "ties": int((y == x).sum()),
                    "losses": int((y < x).sum()),
                    "missing": missing,
                }
            )
    return out


def compare_ranked(
    relevant: Mapping[str, Iterable[str]],
    runs: Mapping[str, Mapping[str, Sequence[str]]],
    metrics: Sequence[str],
    *,
    stat_test: str = "student",
    max_p: float = 0.05,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> list[dict[str, Any]]:
    """``ranx.compare`` of several runs over one qrels: one row per (control, treatment, metric) with p-values.

    ``relevant``: ``{query id: relevant ids}`` shared by all runs; ``runs``: ``{name: {query id:
    hit ids best first}}``. Rows: ``control, treatment, metric, control_score, treatment_score,
    delta, p_value, significant``, for every ordered pair of run names.
    """
    from ranx import compare

    if stat_test not in STAT_TESTS:
        raise ValueError(f"unknown stat_test {stat_test!r}: use {' or '.join(STAT_TESTS)}")
    qrels = build_qrels(relevant)
    ranx_runs = [build_run(ranked, name=name).make_comparable(qrels) for name, ranked in runs.items()]
    report = compare(
        qrels, ranx_runs, metrics=list(metrics), stat_test=stat_test, max_p=max_p,
        n_permutations=n_permutations, random_seed=random_seed, make_comparable=True,
    ).to_dict()
    out = []
    names = list(runs)
    for control in names:
        for treatment in names:
            if control == treatment:
                continue
            for metric in metrics:
                p = float(report[control]["comparisons"][treatment][metric])
                p = 1.0 if math.isnan(p) else p
                c_score = float(report[control]["scores"][metric])
                t_score = float(report[treatment]["scores"][metric])
                out.append(
                    {
                        "control": control, "treatment": treatment, "metric": metric,
                        "control_score": c_score, "treatment_score": t_score, "delta": t_score - c_score,
                        "p_value": p, "significant": p < max_p, "stat_test": stat_test,
                    }
                )
    return out
