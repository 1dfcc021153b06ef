"""The step loop every recipe runs in, and the pieces of a step they share.

- `Recipe`: the shape of a recipe (GRPO, SFT, DPO): built by its `setup` (data validated first,
  then `common.setup_policy`), it runs one `step(n)` and returns its metrics; the loop saves its
  policy.
- `run_steps`: steps start+1 .. max_steps; after each, the `after_step` hook (train.py passes
  held-out evaluation, which adds its metrics to the same row), then the row is written to
  metrics.jsonl; a checkpoint every `save_every` steps and on a stop request (its time logged as
  the next row's `time/checkpoint`); at the end the last checkpoint and the final adapter (or
  whole model), written atomically.
- `open_run`: the run directory, refusing to write over a run that has metrics unless resuming.
- Signals (`stop_after_step_on_signal`, which train.py wraps around a run; `request_stop` does
  the same from code): the first Ctrl-C or SIGTERM finishes the current step, writes a
  checkpoint and raises `TrainingStopped` (the CLI exits 130); a second one stops at once.
- `optimizer_step`: clip, step, zero, advance the schedule: the same for every recipe.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

from openrft.config import RunConfig
from openrft.engine import checkpoint as ckpt
from openrft.engine.common import Policy, save_policy
from openrft.errors import ConfigError
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir

_stop = threading.Event()


class TrainingStopped(Exception):
    """Training stopped early on request; a checkpoint of the last finished step was written."""

    def __init__(self, run: Path, step: int) -> None:
        super().__init__(f"stopped after step {step}; checkpoint saved in {run}; continue with --resume")
        self.run, self.step = run, step


def request_stop() -> None:
    """Ask the running loop to stop after the current step, with a checkpoint."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def clear_stop() -> None:
    _stop.clear()


@contextmanager
def stop_after_step_on_signal(reporter: Reporter | None = None) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish the current step, checkpoint, stop (`TrainingStopped`).
    Second: `KeyboardInterrupt` at once. Outside the main thread (signals cannot be caught
    there) the caller's own handling stays in place. A stop asked before training starts (a job
    paused while it loads) is kept: the first step finishes, then it stops; the flag is cleared
    on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop_requested():
            raise KeyboardInterrupt
        request_stop()
        if reporter is not None:
            reporter.message("stopping after this step (checkpoint first); signal again to stop now")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clear_stop()


# -- the recipe shape ------------------------------------------------------------------------------


class Recipe(Protocol):
    """What `run_steps` needs of a recipe (torchtune's recipe interface: setup / step / save).

    A recipe module has `setup(cfg, run, *, resume, reporter) -> Recipe`: it validates the data
    (a bad row fails before a model loads), then builds the policy with `common.setup_policy`."""

    label: str  # shown on the progress bar: "GRPO", "SFT", "DPO"
    per_step: int  # rows drawn per step (recorded in checkpoints)
    policy: Policy  # model, tokenizer, optimizer, schedule, start step

    def step(self, n: int) -> dict[str, Any]:
        """Train step `n` (1-based); its metrics."""
        ...

    def close(self) -> None:
        """Release what the recipe holds (reward workers)."""
        ...


StepHook = Callable[[int, dict[str, Any]], None]


def optimizer_step(
    cfg: RunConfig,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    any_grad: bool = True,
) -> tuple[float, float]:
    """Clip the gradient norm (`optim.max_grad_norm`; 0 = no clipping), step, advance the schedule
    (when given), zero the gradients. Returns (grad norm before clipping, the lr used)."""
    max_norm = cfg.optim.max_grad_norm or float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if any_grad else 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = float(optimizer.param_groups[0]["lr"])
    if scheduler is not None:
        scheduler.step()
    return grad_norm, lr


# -- run directory and resume ----------------------------------------------------------------------


def open_run(cfg: RunConfig, output_dir: str | Path | None, resume: bool) -> RunDir:
    """The run directory; refuses to write over a finished or running run unless resuming."""
    run = RunDir(output_dir or cfg.output_dir)
    if not resume and run.metrics_file.exists() and run.metrics_file.stat().st_size > 0:
        raise ConfigError(
            f"{run.path} already holds a run; pass --resume to continue it or choose another --output-dir"
        )
    return run


# -- the loop --------------------------------------------------------------------------------------


def final_path(run: RunDir, policy: Policy) -> Path:
    """`model/` after full fine-tuning, else `adapter/`."""
    return run.path / "model" if policy.full else run.adapter


def run_steps(
    cfg: RunConfig,
    run: RunDir,
    recipe: Recipe,
    *,
    reporter: Reporter,
    after_step: StepHook | None = None,
) -> None:
    """Steps start+1 .. max_steps, then the last checkpoint and the final artifact.
    `after_step(step, metrics)` runs after each step's own metrics (held-out evaluation adds
    its metrics to the same row)."""
    policy, start = recipe.policy, recipe.policy.start_step
    final = final_path(run, policy)

    def save(step: int) -> None:
        ckpt.save_checkpoint(
            run.checkpoints,
            step,
            model=policy.model,
            optimizer=policy.optimizer,
            scheduler=policy.scheduler,
            state={"data_position": step * recipe.per_step, "seed": cfg.seed},
            keep=cfg.keep_checkpoints,
        )

    reporter.start(cfg.max_steps, start, recipe.label)
    try:
        checkpoint_s = 0.0
        for step in range(start + 1, cfg.max_steps + 1):
            metrics = recipe.step(step)
            if after_step is not None:
                after_step(step, metrics)
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
            save_policy(policy, final)
    finally:
        reporter.stop()
