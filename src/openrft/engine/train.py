"""The one entry point for training: `train(cfg, output_dir, resume, reporter)` runs GRPO, SFT,
DPO or a chain of stages. The CLI (`openrft train`), the job worker (server and SDK jobs) and
`openrft compare` all call it.

    method -> recipe module (grpo.py, sft.py, dpo.py); each has `setup(cfg, run, resume=,
    reporter=) -> Recipe`, and `loop.run_steps` runs the steps, checkpoints and the final save.

Chained runs (`stages` in a config, e.g. SFT on the rows, then GRPO on the same prompts):

    stages:
      - {name: sft, method: sft, max_steps: 30, overrides: {optim.lr: 1.0e-3}}
      - {name: rft, method: grpo, max_steps: 60}

Stage i runs in `<output_dir>/stages/<name>/` (a full run directory) with the top-level config,
its own method, steps and overrides, and starts from stage i-1's adapter (`lora.init_adapter`)
or, after full fine-tuning, from its model (`model.name`). `<output_dir>/adapter/` is a copy of
the last stage's result and `stages.json` records each stage's directory and wall time.
Resuming skips finished stages (their result exists) and resumes the first unfinished one.
"""

from __future__ import annotations

import importlib
import json
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from openrft.config import RunConfig, dump_config, stage_config
from openrft.errors import ConfigError
from openrft.fsutil import copy_dir, write_json_atomic
from openrft.tracking.progress import NullReporter, Reporter

# method -> the module of its recipe (imported when used: each pulls in torch)
RECIPES = {"grpo": "openrft.engine.grpo", "sft": "openrft.engine.sft", "dpo": "openrft.engine.dpo"}


def train(
    cfg: RunConfig,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Train as `cfg` says; returns the run directory, which holds `adapter/` (or `model/` after
    full fine-tuning) at the end. A first SIGINT/SIGTERM (in the main thread) finishes the current
    step, writes a checkpoint and raises `loop.TrainingStopped`."""
    from openrft.engine.loop import stop_after_step_on_signal

    reporter = reporter or NullReporter()
    with stop_after_step_on_signal(reporter):
        if cfg.stages:
            return train_stages(cfg, output_dir=output_dir, resume=resume, reporter=reporter)
        return run_recipe(cfg, output_dir=output_dir, resume=resume, reporter=reporter)


def run_recipe(cfg: RunConfig, *, output_dir: str | Path | None, resume: bool, reporter: Reporter) -> Path:
    """One method's run: its recipe's setup, then the step loop (with held-out evaluation)."""
    from openrft.engine.held_out import PeriodicEval
    from openrft.engine.loop import open_run, run_steps

    run = open_run(cfg, output_dir, resume)
    recipe_module = importlib.import_module(RECIPES[cfg.method])
    recipe = recipe_module.setup(cfg, run, resume=resume, reporter=reporter)
    with closing(recipe):
        evaluator = PeriodicEval(cfg, run, recipe.policy, reporter, getattr(recipe, "sampler", None))
        with closing(evaluator):
            run_steps(cfg, run, recipe, reporter=reporter, after_step=evaluator.after_step)
    return run.path


def final_artifact(run: Path) -> Path:
    """What a finished run produced: `adapter/`, or `model/` for full fine-tuning."""
    return run / "model" if (run / "model").is_dir() and not (run / "adapter").is_dir() else run / "adapter"


# -- chained stages --------------------------------------------------------------------------------


def stage_dir(root: Path, name: str) -> Path:
    return root / "stages" / name


def chained_config(cfg: RunConfig, index: int, previous: Path | None) -> RunConfig:
    """Stage `index`'s config, starting from the previous stage's adapter or full model."""
    if previous is None or previous.name == "adapter":
        return stage_config(cfg, index, init_adapter=str(previous) if previous else None)
    scfg = stage_config(cfg, index)
    scfg.model.name = str(previous)  # a full model written by SFT with sft.full_finetune
    return scfg


def train_stages(cfg: RunConfig, *, output_dir: str | Path | None, resume: bool, reporter: Reporter) -> Path:
    """Run every stage in order; returns `output_dir` (with the last stage's `adapter/`)."""
    from openrft.engine.loop import TrainingStopped

    root = Path(output_dir or cfg.output_dir)
    if not resume and (root / "stages.json").exists():
        raise ConfigError(
            f"{root} already holds a chained run; pass --resume to continue it or choose another --output-dir"
        )
    root.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, root / "config.json")
    record = read_stage_record(root)
    previous: Path | None = None
    for i, stage in enumerate(cfg.stages):
        scfg = chained_config(cfg, i, previous)
        run = stage_dir(root.resolve(), stage.name)
        done = final_artifact(run)
        if resume and done.is_dir():
            reporter.message(f"stage {i + 1}/{len(cfg.stages)} {stage.name}: finished before, skipped")
        else:
            reporter.message(f"stage {i + 1}/{len(cfg.stages)} {stage.name} ({stage.method})")
            t0 = time.perf_counter()
            spent = record.get(stage.name, {}).get("wall_time_s", 0.0) if resume else 0.0
            entry = {
                "index": i,
                "method": stage.method,
                "max_steps": scfg.max_steps,
                "run_dir": str(run),
                "init_adapter": scfg.lora.init_adapter,
            }
            try:
                run_recipe(scfg, output_dir=run, resume=resume, reporter=reporter)
            except TrainingStopped:  # a stopped stage keeps the time it spent, for the next session
                record[stage.name] = {**entry, "wall_time_s": spent + time.perf_counter() - t0}
                write_json_atomic(root / "stages.json", record)
                raise
            record[stage.name] = {**entry, "wall_time_s": spent + time.perf_counter() - t0}
            write_json_atomic(root / "stages.json", record)
            done = final_artifact(run)
        previous = done
    assert previous is not None  # a config with `stages` has at least one
    copy_dir(previous, root / previous.name)
    return root


def read_stage_record(root: Path) -> dict[str, Any]:
    """stages.json: stage name -> {index, method, max_steps, run_dir, init_adapter, wall_time_s}."""
    f = root / "stages.json"
    if not f.is_file():
        return {}
    try:
        return dict(json.loads(f.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError):
        return {}
