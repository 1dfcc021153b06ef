"""Group-relative advantages against hand-computed values."""

import math

import pytest
import torch

from openrft.engine.advantages import group_advantages

NAN = float("nan")


def test_scaled_advantages_hand_computed() -> None:
    # group 1: [1, 0, 0, 1] mean .5, unbiased std sqrt(1/3)=0.57735; group 2: all equal -> 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, mean, std = group_advantages(r, 4, scale=True, eps=0.0)
    s = math.sqrt(1 / 3)
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    assert mean.tolist() == pytest.approx([0.5, 2.0])
    assert std.tolist() == pytest.approx([s, 0.0])


def test_unscaled_advantages_are_centred_rewards() -> None:
    r = torch.tensor([3.0, 1.0, 2.0, 0.0, 0.0, 3.0])
    adv, _, _ = group_advantages(r, 3, scale=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, -1.0, -1.0, 2.0])


def test_eps_keeps_zero_std_groups_finite() -> None:
    adv, _, std = group_advantages(torch.tensor([5.0, 5.0]), 2, scale=True)
    assert adv.tolist() == [0.0, 0.0] and std.tolist() == [0.0]


def test_nan_rewards_left_out_of_baseline_and_get_zero_advantage() -> None:
    # present: [1, 3] -> mean 2, std sqrt(2); the NaN row gets 0
    r = torch.tensor([1.0, NAN, 3.0])
    adv, mean, std = group_advantages(r, 3, scale=True, eps=0.0)
    assert mean.item() == pytest.approx(2.0)
    assert std.item() == pytest.approx(math.sqrt(2))
    assert adv.tolist() == pytest.approx([-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)])


def test_group_size_must_divide() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
