"""The step loop the supervised recipes (SFT, DPO) share with GRPO's conventions: one run
directory, resume from the last complete checkpoint, checkpoints every `save_every` steps
(timed as `time/checkpoint`), metrics flushed per step, and the final adapter (or, for full
fine-tuning, the whole model) written atomically at the end."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from openrft.config import RunConfig
from openrft.engine import checkpoint as ckpt
from openrft.errors import ConfigError
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir

StepFn = Callable[[int], dict[str, Any]]

_stop = threading.Event()


class TrainingStopped(Exception):
    """Training stopped early on request; a checkpoint of the last finished step was written."""

    def __init__(self, run: Path, step: int) -> None:
        super().__init__(f"stopped after step {step}; checkpoint saved in {run}; continue with --resume")
        self.run, self.step = run, step


def request_stop() -> None:
    """Ask the running loop to stop after the current step, with a checkpoint (a signal handler
    calls this: Ctrl-C or SIGTERM then never loses the steps since the last checkpoint)."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def clear_stop() -> None:
    _stop.clear()


def open_run(cfg: RunConfig, output_dir: str | Path | None, resume: bool) -> RunDir:
    """The run directory; refuses to write over a finished or running run unless resuming."""
    run = RunDir(output_dir or cfg.output_dir)
    if not resume and run.metrics_file.exists() and run.metrics_file.stat().st_size > 0:
        raise ConfigError(
            f"{run.path} already holds a run; pass --resume to continue it or choose another --output-dir"
        )
    return run


def restore(
    run: RunDir,
    resume: bool,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    reporter: Reporter,
    full: bool = False,
) -> int:
    """Load the newest verified checkpoint when resuming; return the step to continue after."""
    ckpt.cleanup_partial(run.checkpoints)
    if not resume:
        return 0
    start = 0
    last = ckpt.latest(run.checkpoints)
    if last is not None:
        load = load_full_checkpoint if full else ckpt.load_checkpoint
        state = load(last, model=model, optimizer=optimizer, scheduler=scheduler)
        start = int(state["step"])
        reporter.message(f"resumed from {last} (step {start})")
    run.truncate_after(start)
    return start


def run_steps(
    cfg: RunConfig,
    run: RunDir,
    *,
    start: int,
    per_step: int,
    step_fn: StepFn,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    reporter: Reporter,
    label: str,
    final: Path,
    save_final: Callable[[Path], None],
) -> None:
    """Steps start+1 .. max_steps, then the last checkpoint and `save_final(final)`."""

    def save(step: int) -> None:
        ckpt.save_checkpoint(
            run.checkpoints,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state={"data_position": step * per_step, "seed": cfg.seed},
            keep=cfg.keep_checkpoints,
        )

    reporter.start(cfg.max_steps, start, label)
    try:
        checkpoint_s = 0.0
        for step in range(start + 1, cfg.max_steps + 1):
            metrics = step_fn(step)
            metrics["time/checkpoint"] = checkpoint_s  # the previous step's checkpoint, if any
            # metrics first, then the checkpoint: a crash in between redoes this step on resume
            run.log_metrics(metrics)
            reporter.update(step, metrics)
            checkpoint_s = 0.0
            periodic = bool(cfg.save_every) and step % cfg.save_every == 0
            if step < cfg.max_steps and (periodic or _stop.is_set()):
                t0 = time.perf_counter()
                save(step)
                checkpoint_s = time.perf_counter() - t0
                if _stop.is_set():
                    raise TrainingStopped(run.path, step)
        if start < cfg.max_steps or not final.exists():
            save(cfg.max_steps)
            save_final(final)
    finally:
        reporter.stop()


# -- full fine-tuning: the whole model instead of an adapter ---------------------------------------


def load_full_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """`checkpoint.load_checkpoint` for a model saved whole (`save_pretrained` of a plain model)."""
    weights: dict[str, torch.Tensor] = {}
    for f in sorted((folder / "adapter").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise ConfigError(f"{folder}: checkpoint does not match the model (missing {sorted(missing)[:3]})")
    return ckpt.restore_trainer_state(folder, optimizer=optimizer, scheduler=scheduler)


def save_full_model(model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """Write model (safetensors) + tokenizer into `target` atomically (temp folder, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    ckpt.write_manifest(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
