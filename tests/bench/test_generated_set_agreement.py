"""The pure helpers of bench/generated_set_agreement.py: rank agreement of sweep settings between two eval sets."""

from __future__ import annotations

import math

import pytest

from bench.generated_set_agreement import agreement_table, grid_points, rank_agreement


def test_rank_agreement_same_and_reversed_order():
    same = rank_agreement([0.1, 0.5, 0.3, 0.9], [0.2, 0.6, 0.4, 1.0])
    assert same["n"] == 4 and same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["kendall_p"] < 0.1
    reversed_ = rank_agreement([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["kendall"] == pytest.approx(-1.0)


def test_rank_agreement_undefined_cases_are_none_not_nan():
    constant = rank_agreement([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    assert constant["n"] == 3 and constant["spearman"] is None and constant["kendall_p"] is None
    missing = rank_agreement([0.1, None, float("nan"), 0.4], [0.2, 0.3, 0.5, 0.1])
    assert missing["n"] == 2 and missing["spearman"] is None


def test_agreement_table_best_setting_ranks_and_ties():
    hand = {"a": {"m": 0.9}, "b": {"m": 0.5}, "c": {"m": 0.7}, "only-hand": {"m": 1.0}}
    generated = {"a": {"m": 0.4}, "b": {"m": 0.8}, "c": {"m": 0.8}}
    (row,) = agreement_table(hand, generated, ["m"])
    assert row["n"] == 3  # settings on one side only are left out
    assert row["best_hand"] == "a" and row["best_hand_rank_in_other"] == 3
    assert row["best_generated"] == "b" and row["best_generated_rank_in_other"] == 3
    assert row["distinct_hand"] == 3 and row["distinct_generated"] == 2
    assert not math.isnan(row["spearman"])
    (tied,) = agreement_table(hand, {k: {"m": 1.0} for k in generated}, ["m"])
    assert "best_generated" not in tied and tied["spearman"] is None


def test_grid_has_at_least_eight_distinct_settings():
    from mmrag.eval.sweep import setting_id

    points = grid_points()
    assert len({setting_id(p) for p in points.values()}) == len(points) >= 8
