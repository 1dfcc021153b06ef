"""Chained runs: `stages` in a config (e.g. SFT on the rows, then GRPO on the same prompts).

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

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from openrft.config import RunConfig, dump_config, stage_config
from openrft.errors import ConfigError
from openrft.tracking.progress import NullReporter, Reporter


def stage_dir(root: Path, name: str) -> Path:
    return root / "stages" / name


def chained_config(cfg: RunConfig, index: int, previous: Path | None) -> RunConfig:
    """Stage `index`'s config, starting from the previous stage's adapter or full model."""
    if previous is None or previous.name == "adapter":
        return stage_config(cfg, index, init_adapter=str(previous) if previous else None)
    scfg = stage_config(cfg, index)
    scfg.model.name = str(previous)  # a full model written by SFT with sft.full_finetune
    return scfg


def train_stages(
    cfg: RunConfig,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Run every stage in order; returns `output_dir` (with the last stage's `adapter/`)."""
    from openrft.engine.train import final_artifact, trainers

    reporter = reporter or NullReporter()
    root = Path(output_dir or cfg.output_dir)
    if not resume and (root / "stages.json").exists():
        raise ConfigError(
            f"{root} already holds a chained run; pass --resume to continue it or choose another --output-dir"
        )
    root.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, root / "config.json")
    record = _read_record(root)
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
            trainers()[stage.method](scfg, output_dir=run, resume=resume, reporter=reporter)
            spent = record.get(stage.name, {}).get("wall_time_s", 0.0) if resume else 0.0
            record[stage.name] = {
                "index": i,
                "method": stage.method,
                "max_steps": scfg.max_steps,
                "run_dir": str(run),
                "init_adapter": scfg.lora.init_adapter,
                "wall_time_s": spent + time.perf_counter() - t0,
            }
            _write_record(root, record)
            done = final_artifact(run)
        previous = done
    assert previous is not None  # a config with `stages` has at least one
    copy_dir(previous, root / previous.name)
    return root


def copy_dir(src: Path, dst: Path) -> None:
    """Replace `dst` with a copy of `src`: copied to a temp folder, then renamed."""
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def _read_record(root: Path) -> dict[str, Any]:
    f = root / "stages.json"
    if not f.is_file():
        return {}
    try:
        return dict(json.loads(f.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError):
        return {}


def _write_record(root: Path, record: dict[str, Any]) -> None:
    tmp = root / "stages.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / "stages.json")


def stage_wall_times(root: Path) -> dict[str, float]:
    """name -> seconds spent training that stage (summed over resumed sessions)."""
    return {k: float(v.get("wall_time_s", 0.0)) for k, v in _read_record(root).items()}
