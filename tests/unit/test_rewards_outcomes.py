"""Outcome classification, weighted totals and per-function metrics (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openrft.rewards.outcomes import VALUE_CAP, classify, to_wire
from openrft.rewards.scoring import RewardScores, weighted_total


@pytest.mark.parametrize(
    ("raw", "number", "problem"),
    [
        (None, None, None),
        (1, 1.0, None),
        (True, 1.0, None),
        (0.25, 0.25, None),
        (np.float32(0.5), 0.5, None),
        (np.int64(3), 3.0, None),
        (float("nan"), math.nan, None),
    ],
)
def test_to_wire_accepts_numbers_and_none(raw: object, number: float | None, problem: str | None) -> None:
    got, err = to_wire(raw)
    assert err is problem
    if number is None:
        assert got is None
    elif math.isnan(number):
        assert got is not None and math.isnan(got)
    else:
        assert got == number


@pytest.mark.parametrize("raw", ["0.5", [0.5], {"r": 1}, b"1", np.array([1.0, 2.0]), object()])
def test_to_wire_refuses_non_numbers(raw: object) -> None:
    got, err = to_wire(raw)
    assert got is None
    assert err is not None and "a reward must return a float or None" in err


def test_to_wire_huge_int_is_an_error_not_a_crash() -> None:
    got, err = to_wire(10**400)
    assert got is None and err is not None and "not a finite float" in err


def test_classify_value_none_and_clip() -> None:
    assert classify(0.3, None).kind == "value" and classify(0.3, None).score == 0.3
    assert classify(None, (0.0, 1.0)).kind == "none" and math.isnan(classify(None, None).score)
    assert classify(-2.0, (0.0, 1.0)).score == 0.0
    assert classify(7.0, (0.0, 1.0)).score == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e30, -VALUE_CAP * 2])
def test_classify_non_finite_or_huge_is_user_error_scored_zero(bad: float) -> None:
    out = classify(bad, (0.0, 1.0))
    assert out.kind == "error" and out.score == 0.0
    assert "finite" in out.detail


def test_classify_respects_custom_cap() -> None:
    assert classify(5e6, None, cap=1e7).kind == "value"
    assert classify(5e6, None).kind == "error"


def test_weighted_total_skips_nan_and_is_nan_only_when_all_are() -> None:
    assert weighted_total([1.0, math.nan, 0.5], [2.0, 1.0, -1.0]) == 1.5
    assert math.isnan(weighted_total([math.nan, math.nan], [1.0, 1.0]))
    assert weighted_total([0.0, math.nan], [1.0, 1.0]) == 0.0


def scores_of(values: list[list[float]], weights: list[float]) -> RewardScores:
    names = ["a", "b"]
    return RewardScores(
        names=names,
        weights=weights,
        values=values,
        total=[weighted_total(row, weights) for row in values],
        errors={"a": 1, "b": 0},
        infra_errors={"a": 0, "b": 2},
        none={"a": 0, "b": 1},
        infra_retries={"a": 0, "b": 2},
        tracebacks={"a": [], "b": []},
        time_s=0.0,
    )


def test_metrics_use_trl_names_and_skip_nan() -> None:
    scores = scores_of([[1.0, math.nan], [0.0, math.nan], [2.0, math.nan]], [1.0, 1.0])
    m = scores.metrics()
    assert "reward" not in m  # no group size: per-function metrics only
    assert m["rewards/a/mean"] == 1.0
    assert m["rewards/a/std"] == pytest.approx(math.sqrt(2 / 3))  # population std of 1, 0, 2
    assert m["rewards/a/errors"] == 1.0
    assert math.isnan(m["rewards/b/mean"]) and math.isnan(m["rewards/b/std"])
    assert m["rewards/b/infra_errors"] == 2.0 and m["rewards/b/none"] == 1.0
    assert scores.column("a") == [1.0, 0.0, 2.0]


def test_metrics_with_a_group_size_give_the_reward_and_its_spread_per_group() -> None:
    # totals (weights 2, 1): 2 + 1 = 3, 0 + 1 = 1 | no value at all = NaN, 2 * 1 = 2
    scores = scores_of([[1.0, 1.0], [0.0, 1.0], [math.nan, math.nan], [1.0, math.nan]], [2.0, 1.0])
    assert scores.total[:2] == [3.0, 1.0] and math.isnan(scores.total[2]) and scores.total[3] == 2.0
    m = scores.metrics(group_size=2)
    assert m["reward"] == pytest.approx(2.0)  # mean of 3, 1, 2 (the NaN total left out)
    # group 1: sample std of (3, 1) = sqrt(2); group 2 has one total: std 0, no signal
    assert m["reward_std"] == pytest.approx(math.sqrt(2) / 2)
    assert m["frac_reward_zero_std"] == 0.5
    assert m["rewards/a/mean"] == pytest.approx(2 / 3) and m["rewards/b/mean"] == 1.0
    assert m["rewards/b/std"] == 0.0
    with pytest.raises(ValueError, match="groups of 3"):
        scores.metrics(group_size=3)
