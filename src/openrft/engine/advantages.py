"""Group-relative advantages (pure functions).

Rewards arrive as one total per completion (`RewardScores.total`), grouped contiguously:
rows [g*G, (g+1)*G) are the G completions of prompt g. NaN marks a completion with no reward
(every function said "not applicable", or the grader's infrastructure failed): it is left out
of its group's mean and std and gets advantage 0, so it neither pushes nor pulls the policy.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO advantages A_i = (r_i - mean_g) / (std_g + eps), or r_i - mean_g when not scaled.

    rewards: [N] with N = groups * group_size, NaN allowed.
    Returns (advantages [N], group mean [groups], group std [groups]); std is the unbiased
    sample std over the group's present rewards (0 for fewer than two), as in TRL.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.view(-1, group_size).double()  # [B, G]
    present = ~torch.isnan(r)
    n = present.sum(-1)  # [B]
    filled = torch.where(present, r, torch.zeros_like(r))
    mean = filled.sum(-1) / n.clamp(min=1)  # [B]
    sq = torch.where(present, (r - mean[:, None]) ** 2, torch.zeros_like(r)).sum(-1)
    std = torch.where(n > 1, (sq / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(mean))  # [B]
    adv = r - mean[:, None]
    if scale:  # a group with zero spread has all-equal rewards: its advantages are 0, not 0/0
        adv = torch.where(std[:, None] > 0, adv / (std[:, None] + eps), torch.zeros_like(adv))
    adv = torch.where(present, adv, torch.zeros_like(adv))
    return adv.view(-1).to(rewards.dtype), mean.to(rewards.dtype), std.to(rewards.dtype)
