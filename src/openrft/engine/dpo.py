"""Direct Preference Optimization (DPO) on a LoRA adapter: the training recipe.

    openrft train examples/dpo_concise.yaml

Rows hold a prompt (a `prompt` column or the config's `prompt_template`), a `chosen` and a
`rejected` answer (text, or one assistant message). Each step draws `dpo.batch_size` pairs
and runs the named, timed phases data -> reference -> update; checkpoints, resume, metrics and
the adapter format are GRPO's.

How this departs from the paper (Rafailov et al., 2023) and matches TRL's `loss_type="sigmoid"`:
- The reference policy is the base model with the adapter disabled (`model.disable_adapter()`),
  so no second copy of the weights is held. With `lora.init_adapter` (DPO after SFT) the
  reference is still the base, not the starting adapter.
- The base is frozen, so each pair's reference log-probs are computed once and cached.
- `dpo.label_smoothing` > 0 gives conservative DPO (cDPO): the labels are assumed flipped with
  that probability.
- Metrics use TRL's names: `rewards/chosen`, `rewards/rejected` (beta x log-ratio to the
  reference), `rewards/margins`, `rewards/accuracies` (fraction of pairs with chosen > rejected),
  `logps/chosen`, `logps/rejected` (summed over the answer's tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.data import read_rows, split_rows, validate_rows
from openrft.data.targets import preference_texts
from openrft.engine.batching import SFTExample, collate_padded, tokenize_completion
from openrft.engine.common import PhaseTimer, Policy, batch_indices, build_prompts, setup_policy, step_seed
from openrft.engine.logprobs import completion_logps
from openrft.engine.loop import optimizer_step
from openrft.engine.losses import dpo_sigmoid_loss
from openrft.engine.ops.fused import fused_layers
from openrft.engine.ops.precision import train_autocast
from openrft.errors import DataError
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir

# =============================================================================================
# Data
# =============================================================================================


@dataclass
class PreferenceExample:
    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]  # ends with EOS
    rejected_ids: list[int]  # ends with EOS


def load_preference_rows(cfg: RunConfig) -> tuple[list[dict[str, Any]], list[tuple[str, str]], str]:
    """(rows, (chosen, rejected) texts, source), validated before any model is loaded."""
    loaded = read_rows(cfg.data.train)
    d = cfg.data
    validate_rows(
        loaded.rows,
        template=d.prompt_template,
        system_prompt=d.system_prompt,
        source=loaded.source,
        lines=loaded.lines,
    )
    pairs = preference_texts(loaded.rows, loaded.source, loaded.lines)
    rows = loaded.rows
    if d.eval is None and d.eval_fraction > 0:
        both = split_rows(list(zip(rows, pairs, strict=True)), eval_fraction=d.eval_fraction, seed=cfg.seed)[
            0
        ]
        rows, pairs = [r for r, _ in both], [p for _, p in both]
    return rows, pairs, loaded.source


def tokenize_pairs(
    cfg: RunConfig, tok: Any, rows: list[dict[str, Any]], pairs: list[tuple[str, str]], source: str, eos: int
) -> list[PreferenceExample]:
    prompts = build_prompts(cfg, tok, rows, source)
    limit = cfg.dpo.max_seq_len
    out = []
    for p, (chosen, rejected) in zip(prompts, pairs, strict=True):
        ex = PreferenceExample(
            p.index,
            p.ids,
            tokenize_completion(tok, chosen, p.prefix, eos),
            tokenize_completion(tok, rejected, p.prefix, eos),
        )
        longest = len(p.ids) + max(len(ex.chosen_ids), len(ex.rejected_ids))
        if longest > limit:
            raise DataError(
                f"row {p.index + 1}: prompt + answer are {longest} tokens, "
                f"more than dpo.max_seq_len ({limit})",
                file=source,
                hint="shorten the row or raise dpo.max_seq_len",
            )
        out.append(ex)
    return out


def sequence_logps(model: torch.nn.Module, pairs: list[PreferenceExample], pad: int) -> torch.Tensor:
    """Summed log-probs [2n] of the n chosen answers, then the n rejected ones."""
    seqs = [SFTExample(e.index, e.prompt_ids, e.chosen_ids) for e in pairs]
    seqs += [SFTExample(e.index, e.prompt_ids, e.rejected_ids) for e in pairs]
    b = collate_padded(seqs, pad)
    logps, _ = completion_logps(model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    return (logps * b.completion_mask.to(logps.device)).sum(-1)  # [2n]


# =============================================================================================
# The recipe: setup / step
# =============================================================================================


@dataclass
class DPORecipe:
    cfg: RunConfig
    policy: Policy
    pairs: list[PreferenceExample]
    ref_cache: dict[int, tuple[float, float]] = field(default_factory=dict)  # row -> reference logps
    label: str = "DPO"

    @property
    def per_step(self) -> int:
        return self.cfg.dpo.batch_size

    def step(self, n: int) -> dict[str, Any]:
        return dpo_step(self, n)

    def close(self) -> None:
        pass


def setup(cfg: RunConfig, run: RunDir, *, resume: bool, reporter: Reporter) -> DPORecipe:
    """Preference rows are validated before the model loads; then the policy and the pairs."""
    rows, texts, source = load_preference_rows(cfg)
    policy = setup_policy(cfg, run, resume=resume, reporter=reporter)
    return DPORecipe(cfg, policy, tokenize_pairs(cfg, policy.tokenizer, rows, texts, source, policy.eos_id))


def reference_logps(
    model: torch.nn.Module,
    pairs: list[PreferenceExample],
    pad: int,
    per_micro: int,
    cache: dict[int, tuple[float, float]],
) -> torch.Tensor:
    """[B, 2] (chosen, rejected) log-probs under the base model (adapter disabled), cached per row."""
    todo = [e for e in pairs if e.index not in cache]
    with torch.no_grad(), model.disable_adapter():
        for i in range(0, len(todo), per_micro):
            chunk = todo[i : i + per_micro]
            s = sequence_logps(model, chunk, pad).float().cpu()  # [2n]
            for j, e in enumerate(chunk):
                cache[e.index] = (float(s[j]), float(s[len(chunk) + j]))
    return torch.tensor([cache[e.index] for e in pairs], dtype=torch.float32)


def dpo_step(r: DPORecipe, step: int) -> dict[str, Any]:
    cfg, d, pol = r.cfg, r.cfg.dpo, r.policy
    model = pol.model
    timer = PhaseTimer()
    t_step = time.perf_counter()
    torch.manual_seed(step_seed(cfg.seed, step))
    per_micro = cfg.optim.micro_batch_size

    with timer("data"):
        idx = batch_indices(len(r.pairs), step - 1, d.batch_size, cfg.seed, cfg.data.shuffle)
        chosen = [r.pairs[i] for i in idx]

    with timer("reference"):
        model.eval()
        ref = reference_logps(model, chosen, pol.pad, per_micro, r.ref_cache)  # [B, 2]

    with timer("update"):
        model.train()
        policy = torch.zeros(len(chosen), 2)
        loss_sum = 0.0
        rewards_c, rewards_r = [], []
        with fused_layers(model):
            for i in range(0, len(chosen), per_micro):
                mb = chosen[i : i + per_micro]
                n = len(mb)
                with train_autocast(model):
                    s = sequence_logps(model, mb, pol.pad)  # [2n]
                r_mb = ref[i : i + n].to(s.device, s.dtype)
                parts = dpo_sigmoid_loss(
                    s[:n], s[n:], r_mb[:, 0], r_mb[:, 1], beta=d.beta, label_smoothing=d.label_smoothing
                )
                loss = parts.losses.sum() / len(chosen)
                loss.backward()
                loss_sum += float(loss.detach())
                policy[i : i + n, 0] = s[:n].detach().float().cpu()
                policy[i : i + n, 1] = s[n:].detach().float().cpu()
                rewards_c.append(parts.chosen_rewards.float().cpu())
                rewards_r.append(parts.rejected_rewards.float().cpu())
        grad_norm, lr = optimizer_step(cfg, pol.params, pol.optimizer, pol.scheduler)

    rc, rr = torch.cat(rewards_c), torch.cat(rewards_r)
    step_time = time.perf_counter() - t_step
    tokens = sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in chosen)
    return {
        "step": step,
        "loss": loss_sum,
        "rewards/chosen": float(rc.mean()),
        "rewards/rejected": float(rr.mean()),
        "rewards/margins": float((rc - rr).mean()),
        "rewards/accuracies": float((rc > rr).float().mean()),
        "logps/chosen": float(policy[:, 0].mean()),
        "logps/rejected": float(policy[:, 1].mean()),
        "grad_norm": grad_norm,
        "learning_rate": lr,
        "epoch": step * d.batch_size / len(r.pairs),
        **timer.times,
        "step_time": step_time,
        "tokens_per_second": tokens / step_time,
    }
