"""Held-out evaluation: sample K completions per row, score every reward, report means,
`accuracy` (mean of the config's success reward) with a 95% bootstrap CI, and pass@k."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.engine.common import (
    build_prompts,
    eos_ids,
    load_splits,
    load_validated,
    pick_device,
    set_threads,
)
from openrft.engine.grpo import decode_completions
from openrft.engine.rollout import sample_groups
from openrft.engine.rollout_model import RolloutModel
from openrft.errors import ConfigError
from openrft.evaluation.metrics import bootstrap_ci, mean, pass_at_k
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
    e = cfg.eval
    k = samples or e.samples
    rows, source = evaluation_rows(cfg, data)
    if e.max_rows:
        rows = rows[: e.max_rows]
    temperature = e.temperature if e.temperature is not None else (0.0 if k == 1 else 1.0)
    set_threads(cfg.model.threads)
    if model is None:
        model, tokenizer = load_for_eval(cfg, adapter)
    prompts = build_prompts(cfg, tokenizer, rows, source)
    eos = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    names = [r.name for r in cfg.rewards]
    max_new = e.max_new_tokens or cfg.grpo.max_new_tokens
    per_batch = max(1, e.batch_size // k)
    gen = torch.Generator().manual_seed(cfg.seed)
    values: list[list[float]] = []
    completions: list[str] = []
    errors = dict.fromkeys(names, 0)
    t0 = time.perf_counter()
    reporter.start(len(prompts), 0, "eval")
    was_training = model.training
    model.eval()
    try:
        # the sampling copy: LoRA merged (a no-op for plain weights) and, for Llama-family
        # models, decoded by the lean decoder
        sampler = RolloutModel(model)
        with RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=1.0) as rewards:
            for start in range(0, len(prompts), per_batch):
                chunk = prompts[start : start + per_batch]
                batch = sample_groups(
                    sampler,
                    [p.ids for p in chunk],
                    group_size=k,
                    max_new_tokens=max_new,
                    eos_ids=eos,
                    pad_id=pad,
                    temperature=temperature,
                    top_p=cfg.grpo.top_p if temperature > 0 else 1.0,
                    generator=gen if next(model.parameters()).device.type == "cpu" else None,
                )
                texts = decode_completions(tokenizer, batch, [p.prefix for p in chunk])
                expanded = [chunk[i // k] for i in range(len(texts))]
                scores = rewards.score([p.text for p in expanded], texts, [p.row for p in expanded])
                values.extend(scores.values)
                completions.extend(texts)
                for n_, c in scores.errors.items():
                    errors[n_] = errors.get(n_, 0) + c
                done = min(start + per_batch, len(prompts))
                reporter.update(done, {})
    finally:
        reporter.stop()
        model.train(was_training)
    return build_report(
        cfg, rows, prompts, completions, values, names, k, errors, time.perf_counter() - t0, adapter, source
    )


def build_report(
    cfg: RunConfig,
    rows: list[dict[str, Any]],
    prompts: list[Any],
    completions: list[str],
    values: list[list[float]],
    names: list[str],
    k: int,
    errors: dict[str, int],
    seconds: float,
    adapter: str | Path | None,
    source: str,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "n": len(rows),
        "samples_per_row": k,
        "model": cfg.model.name,
        "adapter": str(adapter) if adapter else None,
        "data": source,
    }
    weights = [r.weight for r in cfg.rewards]
    totals = []
    for v in values:
        present = [(w, x) for w, x in zip(weights, v, strict=True) if x == x]
        totals.append(sum(w * x for w, x in present) if present else float("nan"))
    report["reward"] = mean(totals)
    for j, name in enumerate(names):
        col = [v[j] for v in values]
        report[f"rewards/{name}/mean"] = mean(col)
        report[f"rewards/{name}/errors"] = errors.get(name, 0)
    success = cfg.success_reward or (names[0] if names else None)
    if success is not None:
        j = names.index(success)
        col = [v[j] for v in values]
        report["success_reward"] = success
        report["accuracy"] = mean(col)
        lo, hi = bootstrap_ci(col, seed=cfg.seed)
        report["accuracy_ci95"] = [lo, hi]
        for kk in sorted({1, k}):
            per_row = []
            for i in range(len(rows)):
                group = col[i * k : (i + 1) * k]
                c = sum(1 for x in group if x == x and x >= cfg.eval.success_threshold)
                per_row.append(pass_at_k(k, c, kk))
            report[f"pass@{kk}"] = mean(per_row)
    report["time_s"] = seconds
    report["details"] = [
        {
            "index": i,
            "prompt": prompts[i].text,
            "completions": completions[i * k : (i + 1) * k],
            "rewards": [dict(zip(names, v, strict=True)) for v in values[i * k : (i + 1) * k]],
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

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(p)
