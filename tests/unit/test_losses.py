"""GRPO loss variants against hand-computed values."""

import math

import pytest
import torch

from openrft.engine.losses import aggregate, clipped_surrogate, grpo_loss, k3_kl, normaliser


def test_k3_kl_hand_computed() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.25)]])
    # d = ref - logp = log(0.5) -> exp(d) - d - 1 = 0.5 + log 2 - 1 ; second token 0
    assert k3_kl(logp, ref).tolist()[0] == pytest.approx([0.5 + math.log(2) - 1, 0.0])


def test_clipped_surrogate_positive_and_negative_advantage() -> None:
    old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # row 0: A=1, min(1.5, 1.28) = 1.28 -> loss -1.28, clipped
    # row 1: A=-1, min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped
    assert loss.flatten().tolist() == pytest.approx([-1.28, 0.8])
    assert clipped.flatten().tolist() == [True, True]


def test_ratio_one_gives_minus_advantage() -> None:
    logp = torch.zeros(1, 3)
    loss, clipped = clipped_surrogate(logp, logp, torch.tensor([0.7]), epsilon_low=0.2, epsilon_high=0.2)
    assert loss.flatten().tolist() == pytest.approx([-0.7] * 3)
    assert not clipped.any()


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregate_grpo_is_mean_of_sequence_means() -> None:
    # seq means: 2 and 4 -> (2 + 4) / 2 = 3
    out = aggregate(PER_TOKEN, MASK, "grpo", max_new_tokens=3, total_tokens=normaliser("grpo", MASK))
    assert out.item() == pytest.approx(3.0)


def test_aggregate_dapo_is_token_mean() -> None:
    # (1 + 2 + 3 + 4) / 4 tokens = 2.5
    out = aggregate(PER_TOKEN, MASK, "dapo", max_new_tokens=3, total_tokens=normaliser("dapo", MASK))
    assert out.item() == pytest.approx(2.5)


def test_aggregate_dr_grpo_uses_constant_normaliser() -> None:
    # 10 / (2 sequences * 4 max tokens) = 1.25
    out = aggregate(PER_TOKEN, MASK, "dr_grpo", max_new_tokens=4, total_tokens=normaliser("dr_grpo", MASK))
    assert out.item() == pytest.approx(1.25)


def test_micro_batches_sum_to_full_batch() -> None:
    for lt in ("grpo", "dapo", "dr_grpo"):
        total = normaliser(lt, MASK)
        full = aggregate(PER_TOKEN, MASK, lt, max_new_tokens=3, total_tokens=total)
        parts = sum(
            aggregate(PER_TOKEN[i : i + 1], MASK[i : i + 1], lt, max_new_tokens=3, total_tokens=total)
            for i in range(2)
        )
        assert parts.item() == pytest.approx(full.item()), lt


def test_unknown_loss_type() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(PER_TOKEN, MASK, "ppo", max_new_tokens=3, total_tokens=1.0)


def test_grpo_loss_with_kl_and_gradient() -> None:
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    parts = grpo_loss(
        logp,
        logp.detach(),
        torch.tensor([2.0]),
        torch.ones(1, 1),
        loss_type="dapo",
        epsilon_low=0.2,
        epsilon_high=0.2,
        max_new_tokens=1,
        total=1.0,
        beta=0.1,
        ref_logp=ref,
    )
    kl = 0.5 + math.log(2) - 1
    assert parts.loss.item() == pytest.approx(-2.0 + 0.1 * kl)
    assert parts.kl == pytest.approx(kl)
    parts.loss.backward()
    # d/dlogp: policy term -(exp(logp - old) * A) gives -A at ratio 1;
    # KL term beta * (exp(ref - logp) - (ref - logp) - 1) gives beta * (1 - exp(ref - logp))
    assert logp.grad.item() == pytest.approx(-2.0 + 0.1 * (1 - 0.5))
