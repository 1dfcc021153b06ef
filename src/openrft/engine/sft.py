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
  so a sequence never attends to its neighbours and the loss equals the unpacked loss.
- `sft.full_finetune` trains every weight and writes `model/` (a model directory) instead of
  `adapter/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.data import read_rows, split_rows, validate_rows
from openrft.engine.common import (
    PhaseTimer,
    batch_indices,
    build_prompts,
    eos_ids,
    load_policy,
    make_optimizer,
    pick_device,
    save_final_adapter,
    seed_everything,
    set_threads,
    step_seed,
)
from openrft.engine.fused import fused_layers
from openrft.engine.logprobs import causal_lm, completion_logps, selective_log_softmax
from openrft.engine.loop import open_run, restore, run_steps, save_full_model
from openrft.engine.rollout import left_pad
from openrft.engine.sft_data import SFTRow, pack, sft_rows, strip_prefix
from openrft.errors import DataError
from openrft.tracking.progress import NullReporter, Reporter

# =============================================================================================
# Data: rows -> token ids
# =============================================================================================


@dataclass
class SFTExample:
    """One training sequence: the rendered prompt and the target completion (ending with EOS)."""

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


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


def tokenize_completion(tok: Any, text: str, prefix: str, eos: int) -> list[int]:
    """Token ids the model must write after the prompt: the target without the prompt's
    assistant prefix, then EOS."""
    return [*tok(strip_prefix(text, prefix), add_special_tokens=False)["input_ids"], eos]


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


# =============================================================================================
# Batches: padded (prompt left-padded, completion right-padded) or packed
# =============================================================================================


@dataclass
class PaddedBatch:
    prompt_ids: torch.Tensor  # [n, P] left-padded
    prompt_mask: torch.Tensor  # [n, P]
    completion_ids: torch.Tensor  # [n, T] right-padded
    completion_mask: torch.Tensor  # [n, T] 1 on target tokens


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [r, L] several sequences per row, padding at the end
    position_ids: torch.Tensor  # [r, L] restart at 0 for each sequence (and for the padding)
    target_mask: torch.Tensor  # [r, L] 1 where the token is a completion token (a target)


def collate_padded(examples: list[SFTExample], pad: int) -> PaddedBatch:
    p_ids, p_mask = left_pad([e.prompt_ids for e in examples], pad)
    width = max(len(e.completion_ids) for e in examples)
    c_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    c_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        c_ids[i, : len(e.completion_ids)] = torch.tensor(e.completion_ids)
        c_mask[i, : len(e.completion_ids)] = 1
    return PaddedBatch(p_ids, p_mask, c_ids, c_mask)


def collate_packed(rows: list[list[SFTExample]], pad: int) -> PackedBatch:
    """Each inner list becomes one row: its sequences back to back, then padding."""
    width = max(sum(e.length for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n_p, n = len(e.prompt_ids), e.length
            ids[r, at : at + n] = torch.tensor(e.prompt_ids + e.completion_ids)
            pos[r, at : at + n] = torch.arange(n)
            target[r, at + n_p : at + n] = 1
            at += n
        pos[r, at:] = torch.arange(width - at)  # the padding is one more (ignored) sequence
    return PackedBatch(ids, pos, target)


def micro_batches(
    examples: list[SFTExample], *, packing: bool, capacity: int, per_micro: int, pad: int
) -> list[PaddedBatch | PackedBatch]:
    """Split a step's examples into micro-batches of at most `per_micro` sequences (padded) or
    `per_micro` packed rows of `capacity` tokens."""
    if not packing:
        return [collate_padded(examples[i : i + per_micro], pad) for i in range(0, len(examples), per_micro)]
    bins = [[examples[i] for i in b] for b in pack([e.length for e in examples], capacity)]
    return [collate_packed(bins[i : i + per_micro], pad) for i in range(0, len(bins), per_micro)]


# =============================================================================================
# Loss
# =============================================================================================


def sft_loss(logps: torch.Tensor, mask: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """Summed negative log-likelihood of the masked tokens / `total_tokens` (all target tokens of
    the step, so micro-batches add up to the step's token mean). logps, mask: [n, T]."""
    return -(logps * mask).sum() / total_tokens


def target_logps(
    model: torch.nn.Module, batch: PaddedBatch | PackedBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target token, mask) under the model, with gradients: [n, T] each for a
    padded batch; [K] (the K target tokens) for a packed one, whose vocabulary projection is
    applied only at target positions (prompt positions need no logits)."""
    device = next(model.parameters()).device
    if isinstance(batch, PaddedBatch):
        mask = batch.completion_mask.to(device)
        logps, _ = completion_logps(
            model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
        )
        return logps, mask
    ids = batch.input_ids.to(device)
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=ids,
        attention_mask=None,  # None + restarting position ids = block-diagonal causal attention
        position_ids=batch.position_ids.to(device),
        use_cache=False,
    ).last_hidden_state  # [r, L, H]
    targets = batch.target_mask[:, 1:].to(device).bool()  # [r, L-1]: token t+1 is a target
    logits = lm.get_output_embeddings()(hidden[:, :-1][targets])  # [K, V]: only where a target is
    logps = selective_log_softmax(logits, ids[:, 1:][targets])  # [K]
    return logps, torch.ones_like(logps)


# =============================================================================================
# The training loop
# =============================================================================================


def load_trainable(cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Base + LoRA (as GRPO), or with `sft.full_finetune` the base model with every weight trainable."""
    if not cfg.sft.full_finetune:
        return load_policy(cfg, device)
    from openrft.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(cfg.model.name, dtype=cfg.model.dtype, device=str(device))
    for p in model.parameters():
        p.requires_grad_(True)
    return model, tok


def train_sft(
    cfg: RunConfig,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Run SFT as configured; returns the run directory (with `adapter/`, or `model/` when
    `sft.full_finetune`)."""
    reporter = reporter or NullReporter()
    run = open_run(cfg, output_dir, resume)

    # -- setup: data errors surface before the model loads ---------------------------------------
    rows = load_sft_rows(cfg)
    set_threads(cfg.model.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.model.device)
    run.create(cfg)
    reporter.message(f"loading {cfg.model.name} ...")
    model, tok = load_trainable(cfg, device)
    eos = eos_ids(tok, model)
    eos_id = tok.eos_token_id if tok.eos_token_id is not None else eos[0]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    examples = tokenize_examples(cfg, tok, rows, cfg.data.train, cfg.sft.max_seq_len, eos_id)
    optimizer, scheduler = make_optimizer(cfg, model)
    full = cfg.sft.full_finetune
    start = restore(
        run, resume, model=model, optimizer=optimizer, scheduler=scheduler, reporter=reporter, full=full
    )

    def step_fn(step: int) -> dict[str, Any]:
        return sft_step(cfg, step, model, optimizer, scheduler, examples, pad)

    def save_final(target: Path) -> None:
        save_full_model(model, tok, target) if full else save_final_adapter(model, target)

    run_steps(
        cfg,
        run,
        start=start,
        per_step=cfg.sft.batch_size,
        step_fn=step_fn,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        reporter=reporter,
        label="SFT",
        final=run.path / "model" if full else run.adapter,
        save_final=save_final,
    )
    return run.path


def sft_step(
    cfg: RunConfig,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    examples: list[SFTExample],
    pad: int,
) -> dict[str, Any]:
    s = cfg.sft
    timer = PhaseTimer()
    t_step = time.perf_counter()
    torch.manual_seed(step_seed(cfg.seed, step))

    with timer("data"):
        idx = batch_indices(len(examples), step - 1, s.batch_size, cfg.seed, cfg.data.shuffle)
        chosen = [examples[i] for i in idx]
        per_micro = cfg.optim.micro_batch_size
        batches = micro_batches(
            chosen, packing=s.packing, capacity=s.max_seq_len, per_micro=per_micro, pad=pad
        )
        targets = float(sum(len(e.completion_ids) for e in chosen))
        forwarded = sum(
            b.input_ids.numel()
            if isinstance(b, PackedBatch)
            else b.prompt_ids.numel() + b.completion_ids.numel()
            for b in batches
        )

    with timer("update"):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        loss_sum = 0.0
        with fused_layers(model):
            for batch in batches:
                logps, mask = target_logps(model, batch)
                loss = sft_loss(logps, mask, targets)
                loss.backward()
                loss_sum += float(loss.detach())
        max_norm = cfg.optim.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()

    step_time = time.perf_counter() - t_step
    real = sum(e.length for e in chosen)
    return {
        "step": step,
        "loss": loss_sum,
        "grad_norm": grad_norm,
        "learning_rate": lr,
        "epoch": step * s.batch_size / len(examples),
        "num_tokens": targets,
        "completions/mean_length": targets / len(chosen),
        "padding_ratio": 1.0 - real / max(forwarded, 1),
        **timer.times,
        "step_time": step_time,
        "tokens_per_second": real / step_time,
    }
