"""DPO's sigmoid loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.engine.losses import dpo_sigmoid_loss

# Pair 1: policy (chosen, rejected) = (-1, -2), reference = (-1.5, -1.0)
#   h = (-1 - -2) - (-1.5 - -1.0) = 1 - (-0.5) = 1.5;  beta h = 0.75
#   loss = -log sigmoid(0.75) = log(1 + e^-0.75) = 0.386871006...
# Pair 2: policy = (-3, -1), reference = (-2, -2): h = -2, beta h = -1
#   loss = log(1 + e^1) = 1.313261687...
POLICY_C = torch.tensor([-1.0, -3.0])
POLICY_R = torch.tensor([-2.0, -1.0])
REF_C = torch.tensor([-1.5, -2.0])
REF_R = torch.tensor([-1.0, -2.0])


def test_losses_match_hand_values() -> None:
    parts = dpo_sigmoid_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5)
    assert parts.losses.tolist() == pytest.approx([0.38687100611489994, 1.3132616875182228], abs=1e-6)


def test_implicit_rewards_are_beta_times_log_ratios() -> None:
    parts = dpo_sigmoid_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5)
    # chosen: 0.5 * (-1 - -1.5) = 0.25, 0.5 * (-3 - -2) = -0.5
    assert parts.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])
    # rejected: 0.5 * (-2 - -1) = -0.5, 0.5 * (-1 - -2) = 0.5
    assert parts.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5])
    margins = parts.chosen_rewards - parts.rejected_rewards
    assert margins.tolist() == pytest.approx([0.75, -1.0])  # = beta * h
    assert not parts.chosen_rewards.requires_grad


def test_label_smoothing_mixes_in_the_flipped_label() -> None:
    parts = dpo_sigmoid_loss(POLICY_C[:1], POLICY_R[:1], REF_C[:1], REF_R[:1], beta=0.5, label_smoothing=0.1)
    # 0.9 * log(1 + e^-0.75) + 0.1 * log(1 + e^0.75)
    assert float(parts.losses[0]) == pytest.approx(0.46187100611489995, abs=1e-6)


def test_equal_policy_and_reference_give_log_two() -> None:
    x = torch.tensor([-4.0, -7.5])
    parts = dpo_sigmoid_loss(x, x - 1, x, x - 1, beta=0.1)
    assert parts.losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert parts.chosen_rewards.tolist() == [0.0, 0.0]


def test_gradient_raises_chosen_and_lowers_rejected() -> None:
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    dpo_sigmoid_loss(pc, pr, REF_C[:1], REF_R[:1], beta=0.5).losses.sum().backward()
    # d/d pc of -log sigmoid(beta h) = -beta (1 - sigmoid(beta h)) = -0.5 (1 - sigmoid(0.75))
    assert float(pc.grad[0]) == pytest.approx(-0.1604106504123035, abs=1e-6)
    assert float(pr.grad[0]) == pytest.approx(0.1604106504123035, abs=1e-6)
