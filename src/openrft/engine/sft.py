"""Supervised fine-tuning (SFT) on a LoRA adapter (or every weight): the training recipe.

    openrft train examples/countdown_sft.yaml

Each step draws `sft.batch_size` rows (seeded epochs, so resume is exact), runs the named,
timed phases data -> update -> checkpoint -> log, and writes the same run directory as GRPO
(config.json, metrics.jsonl, checkpoints/step-N/, adapter/).

Choices (as in TRL's SFTTrainer with `completion_only_loss`):
- The loss is the negative log-likelihood of the completion tokens only (the prompt is
  context), averaged over all completion tokens of the step; the target ends with EOS so the
  model learns to stop.
- The prompt is rendered exactly as GRPO and eval render it (chat template, system prompt,
  `data.assistant_prefix`), so an SFT adapter is trained on the prompts it is evaluated on.
- Packing (`sft.packing`) concatenates sequences into rows of `sft.max_seq_len` tokens with
  position ids restarting per sequence; transformers then builds a block-diagonal causal mask,
  so a sequence never attends to its neighbours and the loss equals the unpacked loss. The
  vocabulary projection runs only at target positions, chunk by chunk (no [K, V] logits).
- `sft.full_finetune` trains every weight and writes `model/` (a model directory) instead of
  `adapter/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.data import read_rows, split_rows, validate_rows
from openrft.data.targets import SFTRow, sft_rows
from openrft.engine.batching import (
    PackedBatch,
    PaddedBatch,
    SFTExample,
    micro_batches,
    tokenize_completion,
)
from openrft.engine.common import PhaseTimer, Policy, batch_indices, build_prompts, setup_policy, step_seed
from openrft.engine.logprobs import completion_logps, packed_target_logps
from openrft.engine.loop import optimizer_step
from openrft.engine.losses import sft_loss
from openrft.engine.ops.fused import fused_layers
from openrft.engine.ops.precision import train_autocast
from openrft.errors import DataError
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir

# =============================================================================================
# Data: rows -> token ids
# =============================================================================================


def load_sft_rows(cfg: RunConfig) -> list[SFTRow]:
    """Training rows with their targets, validated before any model is loaded. With
    `data.eval_fraction` (and no `data.eval`), the held-out part is left out exactly as
    `load_splits` leaves it out, so SFT never trains on GRPO's eval rows."""
    loaded = read_rows(cfg.data.train)
    rows = sft_rows(cfg, loaded.rows, loaded.source, loaded.lines)
    validate_rows(
        [r.row for r in rows],
        template=cfg.data.prompt_template,
        system_prompt=cfg.data.system_prompt,
        source=loaded.source,
        lines=[r.line for r in rows] if loaded.lines is not None else None,
    )
    if cfg.data.eval is None and cfg.data.eval_fraction > 0:
        rows, _ = split_rows(rows, eval_fraction=cfg.data.eval_fraction, seed=cfg.seed)
    return rows


def tokenize_examples(
    cfg: RunConfig, tok: Any, rows: list[SFTRow], source: str, max_len: int, eos: int
) -> list[SFTExample]:
    prompts = build_prompts(cfg, tok, [r.row for r in rows], source)
    out = []
    for p, r in zip(prompts, rows, strict=True):
        ex = SFTExample(p.index, p.ids, tokenize_completion(tok, r.completion, p.prefix, eos))
        if ex.length > max_len:
            raise DataError(
                f"{'' if r.line else f'row {p.index + 1}: '}prompt + completion are {ex.length} tokens, "
                f"more than sft.max_seq_len ({max_len})",
                file=source,
                line=r.line,
                hint="shorten the row or raise sft.max_seq_len",
            )
        out.append(ex)
    return out


def target_logps(
    model: torch.nn.Module, batch: PaddedBatch | PackedBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target token, mask) under the model, with gradients: [n, T] each for a
    padded batch; [K] (the K target tokens) for a packed one, whose vocabulary projection is
    applied only at target positions, chunk by chunk (prompt positions need no logits)."""
    device = next(model.parameters()).device
    if isinstance(batch, PaddedBatch):
        logps, _ = completion_logps(
            model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
        )
        return logps, batch.completion_mask.to(device)
    logps = packed_target_logps(model, batch.input_ids, batch.position_ids, batch.target_mask)
    return logps, torch.ones_like(logps)


# =============================================================================================
# The recipe: setup / step
# =============================================================================================


@dataclass
class SFTRecipe:
    cfg: RunConfig
    policy: Policy
    examples: list[SFTExample]
    label: str = "SFT"

    @property
    def per_step(self) -> int:
        return self.cfg.sft.batch_size

    def step(self, n: int) -> dict[str, Any]:
        return sft_step(self, n)

    def close(self) -> None:
        pass


def setup(cfg: RunConfig, run: RunDir, *, resume: bool, reporter: Reporter) -> SFTRecipe:
    """Rows and targets are validated before the model loads; then the policy (LoRA, or every
    weight with `sft.full_finetune`) and the tokenized examples."""
    rows = load_sft_rows(cfg)
    policy = setup_policy(cfg, run, resume=resume, reporter=reporter, full=cfg.sft.full_finetune)
    examples = tokenize_examples(
        cfg, policy.tokenizer, rows, cfg.data.train, cfg.sft.max_seq_len, policy.eos_id
    )
    return SFTRecipe(cfg, policy, examples)


def sft_step(r: SFTRecipe, step: int) -> dict[str, Any]:
    cfg, s, pol = r.cfg, r.cfg.sft, r.policy
    timer = PhaseTimer()
    t_step = time.perf_counter()
    torch.manual_seed(step_seed(cfg.seed, step))

    with timer("data"):
        idx = batch_indices(len(r.examples), step - 1, s.batch_size, cfg.seed, cfg.data.shuffle)
        chosen = [r.examples[i] for i in idx]
        batches = micro_batches(
            chosen,
            packing=s.packing,
            capacity=s.max_seq_len,
            per_micro=cfg.optim.micro_batch_size,
            pad=pol.pad,
        )
        targets = float(sum(len(e.completion_ids) for e in chosen))
        forwarded = sum(b.forwarded for b in batches)

    with timer("update"):
        pol.model.train()
        loss_sum = 0.0
        with fused_layers(pol.model):
            for batch in batches:
                with train_autocast(pol.model):
                    logps, mask = target_logps(pol.model, batch)
                    loss = sft_loss(logps, mask, targets)
                loss.backward()
                loss_sum += float(loss.detach())
        grad_norm, lr = optimizer_step(cfg, pol.params, pol.optimizer, pol.scheduler)

    step_time = time.perf_counter() - t_step
    real = sum(e.length for e in chosen)
    return {
        "step": step,
        "loss": loss_sum,
        "grad_norm": grad_norm,
        "learning_rate": lr,
        "epoch": step * s.batch_size / len(r.examples),
        "num_tokens": targets,
        "completions/mean_length": targets / len(chosen),
        "padding_ratio": 1.0 - real / max(forwarded, 1),
        **timer.times,
        "step_time": step_time,
        "tokens_per_second": real / step_time,
    }
