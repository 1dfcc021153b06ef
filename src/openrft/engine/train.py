"""One entry point for every recipe: `train(cfg)` runs GRPO, SFT, DPO or a chain of stages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from openrft.config import RunConfig
from openrft.tracking.progress import Reporter

Trainer = Callable[..., Path]


def trainers() -> dict[str, Trainer]:
    """method -> recipe (imported here: each recipe pulls in torch)."""
    from openrft.engine.dpo import train_dpo
    from openrft.engine.grpo import train_grpo
    from openrft.engine.sft import train_sft

    return {"grpo": train_grpo, "sft": train_sft, "dpo": train_dpo}


def train(
    cfg: RunConfig,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Train as `cfg` says; returns the run directory, which holds `adapter/` (or `model/` after
    full fine-tuning) at the end."""
    if cfg.stages:
        from openrft.engine.stages import train_stages

        return train_stages(cfg, output_dir=output_dir, resume=resume, reporter=reporter)
    return trainers()[cfg.method](cfg, output_dir=output_dir, resume=resume, reporter=reporter)


def final_artifact(run: Path) -> Path:
    """What a finished run produced: `adapter/`, or `model/` for full fine-tuning."""
    return run / "model" if (run / "model").is_dir() and not (run / "adapter").is_dir() else run / "adapter"
