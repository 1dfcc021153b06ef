"""Held-out evaluation: sample K completions per row, score every reward, report means,
`accuracy` (mean of the config's success reward) with a 95% bootstrap CI, and pass@k."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.engine.common import build_prompts, load_splits, load_validated, pick_device, set_threads
from openrft.engine.held_out import Scored, sample_and_score, summarize
from openrft.engine.rollout import RolloutModel
from openrft.errors import ConfigError
from openrft.fsutil import write_atomic
from openrft.rewards import RewardSet
from openrft.tracking.progress import NullReporter, Reporter


def load_for_eval(cfg: RunConfig, adapter: str | Path | None) -> tuple[torch.nn.Module, Any]:
    from openrft.models import load_model_and_tokenizer

    device = pick_device(cfg.model.device)
    model, tok = load_model_and_tokenizer(cfg.model.name, dtype=cfg.model.dtype, device=str(device))
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter}: not an adapter directory (no adapter_config.json)")
        # eval never trains: merge the adapter so sampling runs on plain weights
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.set_attn_implementation("eager")  # faster than SDPA for one-token decode queries on CPU
    model.eval()
    return model, tok


def evaluation_rows(cfg: RunConfig, data: str | None) -> tuple[list[dict[str, Any]], str]:
    if data:
        return load_validated(cfg, data), data
    held = load_splits(cfg).eval
    if not held:
        raise ConfigError(
            "no held-out rows: pass --data FILE, or set data.eval or data.eval_fraction in the config"
        )
    return held, cfg.data.eval or f"{cfg.data.train} (held-out {cfg.data.eval_fraction:.0%})"


def evaluate(
    cfg: RunConfig,
    *,
    adapter: str | Path | None = None,
    data: str | None = None,
    samples: int | None = None,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Evaluate the base model or `adapter` on held-out rows. Returns the report dict."""
    reporter = reporter or NullReporter()
    k = samples or cfg.eval.samples
    rows, source = evaluation_rows(cfg, data)
    if cfg.eval.max_rows:
        rows = rows[: cfg.eval.max_rows]
    set_threads(cfg.model.threads)
    if model is None:
        model, tokenizer = load_for_eval(cfg, adapter)
    prompts = build_prompts(cfg, tokenizer, rows, source)
    t0 = time.perf_counter()
    reporter.start(len(prompts), 0, "eval")
    was_training = model.training
    model.eval()
    try:
        # the sampling copy: LoRA merged (a no-op for plain weights) and, for Llama-family
        # models, decoded by the lean decoder
        sampler = RolloutModel(model)
        with RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=1.0) as rewards:
            scored = sample_and_score(
                cfg,
                model,
                sampler,
                tokenizer,
                prompts,
                rewards,
                k=k,
                on_batch=lambda n: reporter.update(n, {}),
            )
    finally:
        reporter.stop()
        model.train(was_training)
    return build_report(cfg, rows, prompts, scored, k, time.perf_counter() - t0, adapter, source)


def build_report(
    cfg: RunConfig,
    rows: list[dict[str, Any]],
    prompts: list[Any],
    scored: Scored,
    k: int,
    seconds: float,
    adapter: str | Path | None,
    source: str,
) -> dict[str, Any]:
    names = [r.name for r in cfg.rewards]
    report: dict[str, Any] = {
        "n": len(rows),
        "samples_per_row": k,
        "model": cfg.model.name,
        "adapter": str(adapter) if adapter else None,
        "data": source,
        **summarize(cfg, scored, len(rows), k),
    }
    report["time_s"] = seconds
    report["details"] = [
        {
            "index": i,
            "prompt": prompts[i].text,
            "completions": scored.completions[i * k : (i + 1) * k],
            "rewards": [dict(zip(names, v, strict=True)) for v in scored.values[i * k : (i + 1) * k]],
        }
        for i in range(len(rows))
    ]
    return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    write_atomic(path, json.dumps(clean(report), indent=2, ensure_ascii=False) + "\n")
