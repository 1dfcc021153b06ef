"""Pieces every recipe (GRPO, SFT, DPO) shares: device and threads, seeding, the train and
held-out splits, prompt building, the seeded data order (`batch_indices`), phase timing, the one
set-up of the trainable policy (`setup_policy`: model, tokenizer, LoRA or every weight,
optimizer, schedule, EOS and pad tokens, resume from the newest checkpoint) and saving it as the
final artifact (`save_policy`: the adapter, or the whole model, replaced atomically)."""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openrft.config import RunConfig
from openrft.data import (
    read_rows,
    render_messages,
    render_prompt_text,
    required_columns,
    split_rows,
    validate_rows,
)
from openrft.engine.checkpoint import restore, write_manifest
from openrft.engine.kernels.allocator import keep_freed_memory
from openrft.errors import DataError
from openrft.fsutil import replace_dir
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir
from openrft.types import PromptItem


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Use the physical cores (hyper-threads slow matmuls down on CPU), and keep freed memory in
    the process so each step's tensors do not page-fault afresh (see `allocator`)."""
    keep_freed_memory()
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, threads))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """A per-step seed: sampling at step s depends only on (seed, s), so resume is exact."""
    return (seed * 1_000_003 + step * 7919) % (2**63 - 1)


# -- data -----------------------------------------------------------------------------------------


@dataclass
class Splits:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]


def load_splits(cfg: RunConfig) -> Splits:
    """Load and validate training (and held-out) rows before any model is loaded."""
    d = cfg.data
    train = load_validated(cfg, d.train)
    if d.eval:
        held = load_validated(cfg, d.eval)
    elif d.eval_fraction > 0:
        train, held = split_rows(train, eval_fraction=d.eval_fraction, seed=cfg.seed)
    else:
        held = []
    return Splits(train=train, eval=held)


def held_out_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """The held-out rows alone: `data.eval`, or the `data.eval_fraction` split of the training
    rows (the same rows `load_splits` holds out); [] when neither is set."""
    if cfg.data.eval:
        return load_validated(cfg, cfg.data.eval)
    return load_splits(cfg).eval


def load_validated(cfg: RunConfig, path: str) -> list[dict[str, Any]]:
    """Read rows and render every prompt once, so a bad row fails with its file and line."""
    loaded = read_rows(path)
    validate_rows(
        loaded.rows,
        template=cfg.data.prompt_template,
        system_prompt=cfg.data.system_prompt,
        source=loaded.source,
        lines=loaded.lines,
    )
    for i, row in enumerate(loaded.rows):
        render_prefix(cfg.data.assistant_prefix, row, source=loaded.source, line=loaded.line_of(i))
    return loaded.rows


def render_prefix(
    prefix: str, row: dict[str, Any], *, source: str = "<data>", line: int | None = None
) -> str:
    """The assistant prefix for a row: a plain string, or a format template over the columns
    (e.g. "<think>We need {target} from {nums}."), so the answer starts with the facts in view."""
    if "{" not in prefix:
        return prefix
    missing = [c for c in required_columns(prefix) if c not in row]
    if missing:
        raise DataError(
            f"data.assistant_prefix needs column {missing[0]!r}, which this row lacks",
            file=source,
            line=line,
            column=missing[0],
            hint=f"add the column or change the prefix; columns here: {', '.join(sorted(row))}",
        )
    return prefix.format_map(row)


def build_prompts(
    cfg: RunConfig, tokenizer: Any, rows: list[dict[str, Any]], source: str
) -> list[PromptItem]:
    d = cfg.data
    items = []
    for i, row in enumerate(rows):
        messages = render_messages(
            row, template=d.prompt_template, system_prompt=d.system_prompt, source=source
        )
        prefix = render_prefix(d.assistant_prefix, row, source=source)
        text = render_prompt_text(tokenizer, messages, assistant_prefix=prefix)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > d.max_prompt_tokens:
            raise DataError(
                f"row {i + 1}: prompt has {len(ids)} tokens, more than data.max_prompt_tokens "
                f"({d.max_prompt_tokens})",
                file=source,
                hint="shorten the prompt or raise data.max_prompt_tokens",
            )
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), text)
        items.append(PromptItem(index=i, row=row, text=user, ids=ids, prefix=prefix))
    return items


def batch_indices(n_rows: int, step: int, per_step: int, seed: int, shuffle: bool) -> list[int]:
    """Row indices for `step`: epochs of seeded permutations, a pure function of (step, seed)."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, n_rows)
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(n_rows)
            out.append(int(order[pos]))
        else:
            out.append(pos)
    return out


# -- model, optimizer, schedule --------------------------------------------------------------------


def load_policy(cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    from openrft.models import attach_lora, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(cfg.model.name, dtype=cfg.model.dtype, device=str(device))
    model = attach_lora(
        model,
        r=cfg.lora.r,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        init_adapter=cfg.lora.init_adapter,
    )
    return model, tok


def make_optimizer(
    cfg: RunConfig, model: torch.nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, o.warmup_steps, cfg.max_steps))
    return opt, sched


def lr_lambda(schedule: str, warmup: int, total: int) -> Any:
    """Multiplier of the peak lr at a step: linear warmup, then constant, linear or cosine decay."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def eos_ids(tokenizer: Any, model: torch.nn.Module) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list):
        ids.update(int(x) for x in extra)
    return sorted(ids)


def end_id(tokenizer: Any, eos: list[int]) -> int:
    """The EOS a target completion ends with: the tokenizer's, else the model's first."""
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else eos[0]


def pad_id(tokenizer: Any, eos: list[int]) -> int:
    """The id padding is written with (always masked out): the tokenizer's pad token, else the EOS
    that `end_id` gives. Training, evaluation and preflight all pad with it."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else end_id(tokenizer, eos)


class PhaseTimer:
    """Times named phases of a step: `with timer("rollout"): ...` -> {"time/rollout": s}."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - t0


# -- the trainable policy, set up once for every recipe ---------------------------------------------


@dataclass
class Policy:
    """What every recipe trains: the model (base + LoRA, or every weight), its tokenizer, the
    optimizer and schedule over its trainable weights, and the step to continue after."""

    model: torch.nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    eos: list[int]  # every id that ends a completion
    eos_id: int  # the one that SFT/DPO targets end with
    pad: int
    full: bool  # every weight is trained (`sft.full_finetune`): saved as `model/`, not `adapter/`
    start_step: int = 0

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def load_trainable(cfg: RunConfig, device: torch.device, full: bool) -> tuple[torch.nn.Module, Any]:
    """Base + LoRA (`lora.*`), or with `full` the base model with every weight trainable."""
    if not full:
        return load_policy(cfg, device)
    from openrft.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(cfg.model.name, dtype=cfg.model.dtype, device=str(device))
    for p in model.parameters():
        p.requires_grad_(True)
    return model, tok


def setup_policy(
    cfg: RunConfig, run: RunDir, *, resume: bool, reporter: Reporter, full: bool = False
) -> Policy:
    """Threads, seeds and device; the run directory; the model; optimizer and schedule; then the
    newest verified checkpoint when resuming. Call it after the data has been validated, so a bad
    row fails before a model loads."""
    set_threads(cfg.model.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.model.device)
    run.create(cfg)
    reporter.message(f"loading {cfg.model.name} ...")
    model, tok = load_trainable(cfg, device, full)
    eos = eos_ids(tok, model)
    eos_id, pad = end_id(tok, eos), pad_id(tok, eos)
    optimizer, scheduler = make_optimizer(cfg, model)
    start = restore(
        run, resume, model=model, optimizer=optimizer, scheduler=scheduler, reporter=reporter, full=full
    )
    return Policy(model, tok, optimizer, scheduler, eos, eos_id, pad, full, start)


def save_policy(policy: Policy, target: Path) -> None:
    """The final artifact: the adapter (PEFT format), or the whole model + tokenizer, atomically."""
    if policy.full:
        save_full_model(policy.model, policy.tokenizer, target)
        return
    from openrft.models import save_adapter

    save_adapter(policy.model, target)


def save_full_model(model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """Write model (safetensors) + tokenizer into `target` atomically (temp folder, then rename)."""

    def build(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp)

    replace_dir(target, build, durable=True)
