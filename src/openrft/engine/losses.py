"""Every training loss, as pure functions: GRPO's policy loss and KL estimator, SFT's
negative log-likelihood and DPO's sigmoid loss.

Shapes: N sequences, T completion tokens; `mask` [N, T] is 1 on real completion tokens.
GRPO's normalisation variants (see `aggregate`):
- grpo    (DeepSeekMath): mean over each sequence's tokens, then mean over sequences.
- dapo    (DAPO): mean over all tokens of the batch (long answers are not down-weighted).
- dr_grpo (Dr. GRPO): sum over tokens / (N x max_new_tokens), a constant normaliser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref-logp) - (ref-logp) - 1 >= 0."""
    d = ref_logp - logp  # [N, T]
    return torch.exp(d) - d - 1


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-style clipped objective per token, as a loss to minimise.

    logp, old_logp: [N, T]; advantages: [N]. Returns (per-token loss [N, T], clipped [N, T] bool):
    loss = -min(ratio * A, clip(ratio, 1-eps_low, 1+eps_high) * A), ratio = exp(logp - old_logp).
    """
    ratio = torch.exp(logp - old_logp)  # [N, T]
    adv = advantages[:, None]  # [N, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    loss = -torch.min(unclipped, clipped)
    was_clipped = clipped < unclipped  # the min chose the clipped term
    return loss, was_clipped


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, *, max_new_tokens: int, total_tokens: float
) -> torch.Tensor:
    """Reduce a per-token loss [N, T] to a scalar, normalised by whole-batch constants.

    Callers split a batch into micro-batches and sum the results, so every normaliser is that of
    the whole optimizer batch (`normaliser(loss_type, batch_mask)` gives it as `total_tokens`):
    - grpo:    sum over sequences of each sequence's token mean / sequences in the batch;
    - dapo:    sum over tokens / real tokens in the batch;
    - dr_grpo: sum over tokens / (sequences in the batch x max_new_tokens).
    """
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        per_seq = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)  # [N]
        return per_seq.sum() / total_tokens
    if loss_type == "dapo":
        return (per_token * m).sum() / max(total_tokens, 1.0)
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (total_tokens * max_new_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}; use grpo, dapo or dr_grpo")


def normaliser(loss_type: str, mask: torch.Tensor) -> float:
    """The whole-batch constant `aggregate` expects for `loss_type`, from the batch's mask [N, T]."""
    return float(mask.sum()) if loss_type == "dapo" else float(mask.shape[0])


@dataclass
class LossParts:
    loss: torch.Tensor
    policy_loss: float
    kl: float
    clip_ratio: float


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    epsilon_low: float,
    epsilon_high: float,
    max_new_tokens: int,
    total: float,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> LossParts:
    """The full GRPO loss for a micro-batch: clipped surrogate (+ beta * k3 KL), aggregated."""
    per_token, clipped = clipped_surrogate(
        logp, old_logp, advantages, epsilon_low=epsilon_low, epsilon_high=epsilon_high
    )
    m = mask.to(logp.dtype)
    n_tok = float(m.sum().clamp(min=1))
    kl_val = 0.0
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        kl_val = float((kl.detach() * m).sum() / n_tok)
    loss = aggregate(per_token, mask, loss_type, max_new_tokens=max_new_tokens, total_tokens=total)
    return LossParts(
        loss=loss,
        policy_loss=float(loss.detach()),
        kl=kl_val,
        clip_ratio=float((clipped.to(m.dtype) * m).sum() / n_tok),
    )


# -- SFT --------------------------------------------------------------------------------------------


def sft_loss(logps: torch.Tensor, mask: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """Summed negative log-likelihood of the masked tokens / `total_tokens` (all target tokens of
    the step, so micro-batches add up to the step's token mean). logps, mask: [n, T] (or [K])."""
    return -(logps * mask).sum() / total_tokens


# -- DPO --------------------------------------------------------------------------------------------


@dataclass
class DPOParts:
    losses: torch.Tensor  # [B] per-pair loss (with gradient)
    chosen_rewards: torch.Tensor  # [B] beta * (log pi(chosen) - log ref(chosen)), detached
    rejected_rewards: torch.Tensor  # [B] same for the rejected answer, detached


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOParts:
    """DPO's sigmoid loss from sequence log-probs (each [B], summed over the answer's tokens):

    h = (log pi(c) - log pi(r)) - (log ref(c) - log ref(r))
    loss = -(1 - ls) * log sigmoid(beta * h) - ls * log sigmoid(-beta * h)
    """
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # [B]
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return DPOParts(
        losses=losses,
        chosen_rewards=beta * (policy_chosen - ref_chosen).detach(),
        rejected_rewards=beta * (policy_rejected - ref_rejected).detach(),
    )
