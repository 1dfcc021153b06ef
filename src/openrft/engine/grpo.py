"""GRPO on a LoRA adapter: the training recipe.

    openrft train examples/countdown.yaml

Each step runs named, timed phases: rollout -> reward -> advantage -> update -> checkpoint -> log.

How this departs from the DeepSeekMath paper (and matches current practice, as in TRL):
- The loss normalisation is a choice (`grpo.loss_type`): per-sequence mean (paper), DAPO's
  token mean (default: long answers are not down-weighted), or Dr. GRPO's constant.
- DAPO's clip-higher (`epsilon_high`) and optional std-free advantages (Dr. GRPO).
- KL to the reference is off by default (beta = 0); when on, the reference is the base model
  with the adapter disabled, so no second copy of the weights is held.
- With one update per rollout (`num_iterations = 1`) the old policy is the current one (ratio
  = 1, no clipping); with more, the rollout's own sampling log-probs are the old policy.
- Completions whose advantage is exactly 0 contribute exactly 0 gradient (when beta = 0), so
  their backward pass is skipped; the loss normaliser still counts them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.engine.advantages import group_advantages
from openrft.engine.common import (
    PhaseTimer,
    Policy,
    batch_indices,
    build_prompts,
    load_splits,
    setup_policy,
    step_seed,
)
from openrft.engine.logprobs import grouped_completion_logps
from openrft.engine.loop import optimizer_step
from openrft.engine.losses import grpo_loss, normaliser
from openrft.engine.ops.fused import fused_layers
from openrft.engine.ops.precision import train_autocast
from openrft.engine.rollout import RolloutModel, decode_completions, sample_groups
from openrft.rewards import RewardSet
from openrft.rewards.golden import check_golden_or_raise
from openrft.rewards.live import apply_pending_updates, describe_event, version_metrics
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir
from openrft.types import PromptItem, RolloutBatch


@dataclass
class UpdateStats:
    loss: float
    kl: float
    clip_ratio: float
    entropy: float
    grad_norm: float


# =============================================================================================
# Update
# =============================================================================================


def update_policy(
    cfg: RunConfig, policy: Policy, batch: RolloutBatch, advantages: torch.Tensor
) -> UpdateStats:
    """`num_iterations` optimizer steps on one rollout batch, accumulating over micro-batches."""
    g = cfg.grpo
    mask = batch.completion_mask.clone()  # [N, T]
    if g.mask_truncated_completions:
        mask[batch.truncated] = 0
    total = normaliser(g.loss_type, mask)
    rows = torch.arange(batch.num_sequences)
    if g.skip_zero_advantage and g.beta == 0:
        rows = rows[(advantages != 0) & (mask.sum(-1) > 0)]  # zero advantage -> zero gradient exactly
    model, params = policy.model, policy.params
    device = params[0].device
    sums = {"loss": 0.0, "kl": 0.0, "clip": 0.0, "ent": 0.0, "ent_n": 0.0, "tok": 0.0}
    grad_norm = 0.0
    model.train()
    with fused_layers(model):  # one op per LoRA layer, norm and MLP (ops/fused.py)
        for it in range(g.num_iterations):
            for start in range(0, len(rows), cfg.optim.micro_batch_size):
                idx = rows[start : start + cfg.optim.micro_batch_size]
                width = int(
                    batch.completion_mask[idx].sum(-1).max()
                )  # trim right padding of this micro-batch
                cm = mask[idx, :width].to(device)  # [n, t]
                args = micro_batch_inputs(batch, idx, width)
                with train_autocast(model):
                    logp, ent = grouped_completion_logps(
                        model, *args, temperature=g.temperature, with_entropy=it == 0
                    )
                    ref = None
                    if g.beta > 0:
                        with torch.no_grad(), model.disable_adapter():
                            ref, _ = grouped_completion_logps(model, *args, temperature=g.temperature)
                old = batch.sampling_logps[idx, :width].to(device) if g.num_iterations > 1 else logp.detach()
                parts = grpo_loss(
                    logp,
                    old,
                    advantages[idx].to(device, logp.dtype),
                    cm,
                    loss_type=g.loss_type,
                    epsilon_low=g.epsilon,
                    epsilon_high=cfg.epsilon_high,
                    max_new_tokens=g.max_new_tokens,
                    total=total,
                    beta=g.beta,
                    ref_logp=ref,
                )
                parts.loss.backward()
                n_tok = float(cm.sum())
                sums["loss"] += parts.policy_loss
                sums["kl"] += parts.kl * n_tok
                sums["clip"] += parts.clip_ratio * n_tok
                sums["tok"] += n_tok
                if ent is not None:
                    sums["ent"] += float((ent * cm).sum())
                    sums["ent_n"] += n_tok
            grad_norm, _ = optimizer_step(cfg, params, policy.optimizer, None, any_grad=bool(rows.numel()))
    tok = max(sums["tok"], 1.0)
    return UpdateStats(
        loss=sums["loss"] / g.num_iterations,
        kl=sums["kl"] / tok,
        clip_ratio=sums["clip"] / tok,
        entropy=sums["ent"] / sums["ent_n"] if sums["ent_n"] else float("nan"),
        grad_norm=grad_norm,
    )


def micro_batch_inputs(
    batch: RolloutBatch, idx: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distinct prompt ids [U, P], their mask, row -> prompt index [n], completion ids/mask [n, t])."""
    group = idx // batch.group_size  # [n]
    uniq, inv = torch.unique(group, return_inverse=True)  # [U], [n]
    first_rows = uniq * batch.group_size
    return (
        batch.prompt_ids[first_rows],
        batch.prompt_mask[first_rows],
        inv,
        batch.completion_ids[idx, :width],
        batch.completion_mask[idx, :width],
    )


# =============================================================================================
# Metrics and samples of a step
# =============================================================================================


def sample_rows(
    step: int,
    prompts: list[PromptItem],
    completions: list[str],
    names: list[str],
    values: torch.Tensor,
    totals: torch.Tensor,
    advantages: torch.Tensor,
    batch: RolloutBatch,
) -> list[dict[str, Any]]:
    g = batch.group_size
    rows = []
    for i, text in enumerate(completions):
        p = prompts[i // g]
        rows.append(
            {
                "step": step,
                "prompt_index": p.index,
                "group": i // g,
                "prompt": p.text,
                "example": p.row,
                "completion": text,
                "rewards": {n: _num(values[i, j]) for j, n in enumerate(names)},
                "reward": _num(totals[i]),
                "advantage": float(advantages[i]),
                "length": int(batch.completion_mask[i].sum()),
                "truncated": bool(batch.truncated[i]),
            }
        )
    return rows


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


# =============================================================================================
# The recipe: setup / step
# =============================================================================================


@dataclass
class GRPORecipe:
    """Everything a GRPO step needs, built once by `setup`."""

    cfg: RunConfig
    run: RunDir
    policy: Policy  # base + trainable LoRA (peft), optimizer, schedule
    sampler: RolloutModel  # LoRA-merged copy used for sampling
    rewards: RewardSet
    prompts: list[PromptItem]
    names: list[str]
    reporter: Reporter
    label: str = "GRPO"

    @property
    def per_step(self) -> int:
        return self.cfg.grpo.prompts_per_step

    def step(self, n: int) -> dict[str, Any]:
        for event in apply_pending_updates(self.rewards, self.run.path, n):  # `openrft rewards update`
            self.reporter.message(describe_event(event))
        metrics = train_step(self, n)
        metrics.update(version_metrics(self.rewards))
        return metrics

    def close(self) -> None:
        self.rewards.close()


def setup(cfg: RunConfig, run: RunDir, *, resume: bool, reporter: Reporter) -> GRPORecipe:
    """Validate inputs (data, rewards, golden tests) before loading the model, then build the
    recipe's state."""
    splits = load_splits(cfg)
    rewards = RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=cfg.max_reward_error_rate)
    try:
        check_golden_or_raise(cfg, reward_set=rewards)  # reward unit tests must pass before launch
        policy = setup_policy(cfg, run, resume=resume, reporter=reporter)
        prompts = build_prompts(cfg, policy.tokenizer, splits.train, cfg.data.train)
    except BaseException:
        rewards.close()
        raise
    return GRPORecipe(
        cfg=cfg,
        run=run,
        policy=policy,
        sampler=RolloutModel(policy.model),
        rewards=rewards,
        prompts=prompts,
        names=[r.name for r in cfg.rewards],
        reporter=reporter,
    )


def train_step(tr: GRPORecipe, step: int) -> dict[str, Any]:
    """One GRPO step: rollout -> reward -> advantage -> update -> log; returns its metrics."""
    cfg, g, pol = tr.cfg, tr.cfg.grpo, tr.policy
    timer = PhaseTimer()
    t_step = time.perf_counter()
    torch.manual_seed(step_seed(cfg.seed, step))
    rows = batch_indices(len(tr.prompts), step - 1, g.prompts_per_step, cfg.seed, cfg.data.shuffle)
    batch_prompts = [tr.prompts[i] for i in rows]

    with timer("rollout"):
        tr.sampler.sync()
        on_cpu = next(pol.model.parameters()).device.type == "cpu"
        batch = sample_groups(
            tr.sampler,
            [p.ids for p in batch_prompts],
            group_size=g.num_generations,
            max_new_tokens=g.max_new_tokens,
            eos_ids=pol.eos,
            pad_id=pol.pad,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            generator=torch.Generator().manual_seed(step_seed(cfg.seed, step)) if on_cpu else None,
        )
        completions = decode_completions(pol.tokenizer, batch, [p.prefix for p in batch_prompts])

    with timer("reward"):
        expanded = [batch_prompts[i // g.num_generations] for i in range(batch.num_sequences)]
        scores = tr.rewards.score([p.text for p in expanded], completions, [p.row for p in expanded])
        values = torch.tensor(scores.values, dtype=torch.float32).view(batch.num_sequences, len(tr.names))

    with timer("advantage"):
        totals = torch.tensor(scores.total, dtype=torch.float32)  # [N], NaN = no reward
        advantages, _, _ = group_advantages(totals, g.num_generations, scale=g.scale_rewards)

    with timer("update"):
        stats = update_policy(cfg, pol, batch, advantages)
        lr = pol.scheduler.get_last_lr()[0]
        pol.scheduler.step()
    with timer("log"):
        if step % cfg.log_samples_every == 0:
            tr.run.log_samples(
                sample_rows(step, batch_prompts, completions, tr.names, values, totals, advantages, batch)
            )

    step_time = time.perf_counter() - t_step
    lengths = batch.completion_mask.sum(-1).float()
    metrics: dict[str, Any] = {"step": step}
    metrics.update(scores.metrics(g.num_generations))  # reward, reward_std, rewards/<name>/...
    metrics.update(
        {
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(batch.truncated.float().mean()),
            "loss": stats.loss,
            "kl": stats.kl,
            "entropy": stats.entropy,
            "clip_ratio": stats.clip_ratio,
            "grad_norm": stats.grad_norm,
            "learning_rate": lr,
            **timer.times,
            "step_time": step_time,
            "tokens_per_second": float(lengths.sum()) / step_time,
        }
    )
    return metrics
