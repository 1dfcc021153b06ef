"""openrft.stats: every helper against hand-computed values, NaN handling included."""

from __future__ import annotations

import doctest
import math

import pytest

from openrft import stats

NAN = float("nan")


def test_docstring_examples() -> None:
    result = doctest.testmod(stats)
    assert result.attempted >= 11 and result.failed == 0


def test_present_and_finite_leave_out_missing_values() -> None:
    assert stats.present([1.0, None, NAN, 2.0, math.inf]) == [1.0, 2.0, math.inf]
    assert stats.finite([1.0, NAN, -math.inf, 2.0]) == [1.0, 2.0]


def test_mean_skips_missing_values_and_is_nan_without_any() -> None:
    assert stats.mean([1.0, None, 4.0, NAN]) == 2.5
    assert math.isnan(stats.mean([NAN, None]))
    assert stats.mean_or_none([1.0, 2.0, 6.0]) == 3.0
    assert stats.mean_or_none([]) is None


def test_mean_std_is_the_population_std_of_finite_values() -> None:
    # 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, 32 / 8 = 4
    assert stats.mean_std([2, 4, 4, 4, 5, 5, 7, 9, NAN]) == (5.0, 2.0)
    assert stats.mean_std([3.0]) == (3.0, 0.0)
    assert all(math.isnan(x) for x in stats.mean_std([NAN]))


def test_sample_std_divides_by_n_minus_one_and_is_zero_below_two_values() -> None:
    # 2, 4, 4, 4, 5, 5, 7, 9: 32 / 7
    assert stats.sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))
    assert stats.sample_std([1.0, NAN, 3.0]) == pytest.approx(math.sqrt(2))
    assert stats.sample_std([5.0, NAN]) == 0.0
    assert stats.sample_std([]) == 0.0


def test_weighted_total_skips_nan_and_is_nan_only_when_all_are() -> None:
    assert stats.weighted_total([1.0, NAN, 0.5], [2.0, 1.0, -1.0]) == 1.5
    assert stats.weighted_total([0.0, NAN], [1.0, 1.0]) == 0.0
    assert math.isnan(stats.weighted_total([NAN, NAN], [1.0, 1.0]))
    with pytest.raises(ValueError):
        stats.weighted_total([1.0], [1.0, 2.0])


def test_ranks_average_ties() -> None:
    assert stats.ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    assert stats.ranks([1.0, 1.0, 1.0]) == [2.0, 2.0, 2.0]
    assert stats.ranks([]) == []


def test_spearman_hand_values() -> None:
    # ranks (1,2,3,4) vs (2,1,4,3): Pearson on ranks = 0.6
    assert stats.spearman([1, 2, 3, 4], [5, 1, 9, 7]) == pytest.approx(0.6)
    # ties: x ranks (1.5,1.5,3), y ranks (1,2,3) -> r = 1.5 / sqrt(1.5 * 2)
    assert stats.spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(1.5 / (1.5 * 2) ** 0.5)
    assert stats.spearman([1, 1], [1, 2]) is None
    assert stats.spearman([1], [1]) is None


def test_pearson_hand_values() -> None:
    # deviations (-1.5, -.5, .5, 1.5) and (-.5, -1.5, 1.5, .5): sxy = 3, sxx = syy = 5
    assert stats.pearson([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert stats.pearson([1, 2, 3, NAN], [1, 2, 3, 100]) == pytest.approx(1.0)  # NaN pair left out
    assert stats.pearson([1, 2], [1, 2]) is None
    assert stats.pearson([1, 2, 3], [1, 1, 1 + 1e-9]) is None  # constant within tol
    assert stats.pearson([1, 2, 3], [1, 1, 1 + 1e-9], tol=1e-12) == pytest.approx(math.sqrt(3) / 2)


def test_pass_at_k_hand_values() -> None:
    assert stats.pass_at_k(4, 1, 1) == 0.25
    assert stats.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2) / C(4,2)
    assert stats.pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        stats.pass_at_k(2, 1, 3)


def test_bootstrap_ci_brackets_the_mean_and_handles_edge_cases() -> None:
    lo, hi = stats.bootstrap_ci([0.0, 1.0] * 10, seed=1)
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert stats.bootstrap_ci([0.25, NAN, None]) == (0.25, 0.25)
    assert all(math.isnan(x) for x in stats.bootstrap_ci([NAN]))
    assert stats.bootstrap_ci([0.0, 1.0, 1.0], seed=3) == stats.bootstrap_ci([0.0, 1.0, 1.0], seed=3)
