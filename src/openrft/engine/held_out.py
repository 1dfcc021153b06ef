"""Held-out evaluation on the model being trained: sample K completions per row, score every
reward, summarise (reward means, accuracy with a bootstrap CI, pass@k).

`sample_and_score` is the sampling core that `openrft eval` also uses (evaluation/evaluate.py).
`PeriodicEval` runs it every `eval.every` steps during training and adds `eval/<reward>/mean`,
`eval/reward`, `eval/accuracy` and its CI (`eval/accuracy_ci_low`, `eval/accuracy_ci_high`) to
that step's row of metrics.jsonl; with `eval.keep_best` it keeps the adapter with the best
held-out accuracy as `adapter-best/` next to `adapter/`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from openrft.config import RunConfig
from openrft.engine.common import Policy, build_prompts, eos_ids, held_out_rows, pad_id, save_policy
from openrft.engine.rollout import RolloutModel, decode_completions, sample_groups
from openrft.fsutil import write_json_atomic
from openrft.rewards import RewardSet
from openrft.stats import bootstrap_ci, mean, pass_at_k
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir
from openrft.types import PromptItem

BEST = "adapter-best"
BEST_RECORD = "openrft_best.json"  # inside adapter-best/: the step and accuracy it was kept at


@dataclass
class Scored:
    completions: list[str]  # K per prompt, prompt-major
    values: list[list[float]]  # [n*K][F]; NaN = the reward did not apply
    totals: list[float]  # [n*K] weighted reward totals (`RewardScores.total`); NaN = no reward
    errors: dict[str, int]  # reward name -> user errors


def sampling_temperature(cfg: RunConfig, k: int) -> float:
    """eval.temperature, or greedy for one sample and 1.0 for several."""
    e = cfg.eval
    return e.temperature if e.temperature is not None else (0.0 if k == 1 else 1.0)


def sample_and_score(
    cfg: RunConfig,
    model: torch.nn.Module,
    sampler: RolloutModel,
    tokenizer: Any,
    prompts: list[PromptItem],
    rewards: RewardSet,
    *,
    k: int,
    on_batch: Callable[[int], object] | None = None,
) -> Scored:
    """K completions per prompt from `sampler` (the sampling copy of `model`, synced), in batches
    of `eval.batch_size` sequences, scored by `rewards`. Seeded by `cfg.seed`, so the same weights
    give the same completions whatever happened before."""
    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model)
    pad = pad_id(tokenizer, eos)
    temperature = sampling_temperature(cfg, k)
    max_new = cfg.eval.max_new_tokens or cfg.grpo.max_new_tokens
    per_batch = max(1, cfg.eval.batch_size // k)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Scored([], [], [], {r.name: 0 for r in cfg.rewards})
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
            generator=gen if device.type == "cpu" else None,
        )
        texts = decode_completions(tokenizer, batch, [p.prefix for p in chunk])
        expanded = [chunk[i // k] for i in range(len(texts))]
        scores = rewards.score([p.text for p in expanded], texts, [p.row for p in expanded])
        out.values.extend(scores.values)
        out.totals.extend(scores.total)
        out.completions.extend(texts)
        for name, c in scores.errors.items():
            out.errors[name] = out.errors.get(name, 0) + c
        if on_batch is not None:
            on_batch(min(start + per_batch, len(prompts)))
    return out


def summarize(cfg: RunConfig, scored: Scored, n_rows: int, k: int) -> dict[str, Any]:
    """reward (weighted total) and each reward's mean and errors; with a success reward
    (`success_reward`, else the first), `accuracy` (its mean), `accuracy_ci95` (95% bootstrap) and
    pass@1 / pass@K (a sample solves its row when the success reward >= eval.success_threshold)."""
    names = [r.name for r in cfg.rewards]
    out: dict[str, Any] = {"reward": mean(scored.totals)}
    for j, name in enumerate(names):
        out[f"rewards/{name}/mean"] = mean([v[j] for v in scored.values])
        out[f"rewards/{name}/errors"] = scored.errors.get(name, 0)
    success = cfg.success_reward or (names[0] if names else None)
    if success is None:
        return out
    col = [v[names.index(success)] for v in scored.values]
    out["success_reward"] = success
    out["accuracy"] = mean(col)
    out["accuracy_ci95"] = list(bootstrap_ci(col, seed=cfg.seed))
    for kk in sorted({1, k}):
        per_row = []
        for i in range(n_rows):
            group = col[i * k : (i + 1) * k]
            c = sum(1 for x in group if x == x and x >= cfg.eval.success_threshold)
            per_row.append(pass_at_k(k, c, kk))
        out[f"pass@{kk}"] = mean(per_row)
    return out


# -- during training -------------------------------------------------------------------------------


class PeriodicEval:
    """Evaluates the held-out rows every `eval.every` steps (and at the last step) on the policy
    being trained; a no-op when `eval.every` is 0."""

    def __init__(
        self,
        cfg: RunConfig,
        run: RunDir,
        policy: Policy,
        reporter: Reporter,
        sampler: RolloutModel | None = None,
    ) -> None:
        """`sampler`: the recipe's own sampling copy of the policy (GRPO's), reused so that no
        second merged copy of the weights is held."""
        self.cfg, self.run, self.policy, self.reporter = cfg, run, policy, reporter
        self.prompts: list[PromptItem] = []
        self.rewards: RewardSet | None = None
        self.sampler = sampler
        self.best = float("-inf")
        if not cfg.eval.every:
            return
        rows = held_out_rows(cfg)
        if cfg.eval.max_rows:
            rows = rows[: cfg.eval.max_rows]
        source = cfg.data.eval or f"{cfg.data.train} (held-out)"
        self.prompts = build_prompts(cfg, policy.tokenizer, rows, source)
        self.rewards = RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=1.0)
        self.best = self._best_so_far()

    def _best_so_far(self) -> float:
        """The best accuracy kept before (a resumed run keeps improving on it, not restarting)."""
        record = self.run.path / BEST / BEST_RECORD
        if self.cfg.eval.keep_best and record.is_file():
            try:
                return float(json.loads(record.read_text(encoding="utf-8"))["accuracy"])
            except (ValueError, KeyError, TypeError):
                pass
        return float("-inf")

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return bool(every) and (step % every == 0 or step == self.cfg.max_steps)

    def after_step(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.due(step) or self.rewards is None:
            return
        t0 = time.perf_counter()
        k = self.cfg.eval.samples
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            if self.sampler is None:
                self.sampler = RolloutModel(model)
            else:
                self.sampler.sync()
            scored = sample_and_score(
                self.cfg, model, self.sampler, self.policy.tokenizer, self.prompts, self.rewards, k=k
            )
        finally:
            model.train(was_training)
        summary = summarize(self.cfg, scored, len(self.prompts), k)
        metrics.update(eval_metrics(summary))
        if self.cfg.eval.keep_best and "accuracy" in summary and summary["accuracy"] > self.best:
            self.best = summary["accuracy"]
            self.keep_best(step, summary["accuracy"])
        metrics["time/eval"] = time.perf_counter() - t0

    def keep_best(self, step: int, accuracy: float) -> None:
        target = self.run.path / BEST
        save_policy(self.policy, target)
        write_json_atomic(target / BEST_RECORD, {"step": step, "accuracy": accuracy})
        self.run.log_event("best_adapter", step=step, accuracy=accuracy, path=str(target))
        self.reporter.message(
            f"step {step}: held-out accuracy {accuracy:.3f}, the best so far: kept in {target}"
        )

    def close(self) -> None:
        if self.rewards is not None:
            self.rewards.close()


def eval_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A held-out summary as metrics.jsonl keys: eval/reward, eval/<name>/mean, eval/accuracy and
    its 95% CI, eval/pass@k."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if key == "accuracy_ci95":
            out["eval/accuracy_ci_low"], out["eval/accuracy_ci_high"] = (float(x) for x in value)
        elif key.endswith("/errors") or key == "success_reward":
            continue
        else:
            out[f"eval/{key}"] = float(value)
    return out
