"""`openrft compare`: base vs SFT vs RFT (GRPO) vs SFT-then-RFT at several training-set sizes.

    openrft compare examples/countdown_compare.yaml --train-sizes 12,100 --output runs/compare

For each size N, N training rows are drawn (seeded; a larger N holds the smaller draws), and
each method trains on them with the same budget of training sequences (completions that get a
gradient, see `plan_budget`). The base model and every adapter are evaluated with
`evaluation.evaluate.evaluate` on the same held-out rows. The output folder holds:

    plan.json            the budget and a fingerprint of the config (a changed config is refused)
    eval_config.yaml     the resolved config used for every evaluation (`openrft eval` it)
    data/eval.jsonl      the held-out rows; data/train-N.jsonl the rows drawn for size N
    cells/<cell>/        run/ (the training run) and result.json (written atomically last)
    report.json, report.md, accuracy.png

Resumable: a cell with a result.json is never recomputed; an interrupted training resumes from
its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from openrft.config import RunConfig, set_dotted
from openrft.data import take
from openrft.errors import ConfigError
from openrft.evaluation.compare_report import LABELS, build_report, plot_accuracy, render_markdown
from openrft.fsutil import write_atomic
from openrft.stats import bootstrap_ci, mean
from openrft.tracking.progress import NullReporter, Reporter

METHODS: tuple[str, ...] = ("sft", "rft", "sft_rft")


class CompareStopped(Exception):
    """The comparison stopped between two cells because `should_stop` said so; rerun to resume."""

    def __init__(self, out: Path, done: int) -> None:
        super().__init__(f"stopped after {done} finished cells; the rest run when the comparison resumes")
        self.out, self.done = out, done


# =============================================================================================
# The plan: equal budgets (pure)
# =============================================================================================


@dataclass(frozen=True)
class Budget:
    """Training sequences per method, and the steps that spend them."""

    sequences: int  # the budget every method gets
    grpo_per_step: int  # prompts_per_step x num_generations
    sft_per_step: int  # sft.batch_size
    rft_steps: int
    sft_steps: int
    sft_rft_sft_steps: int
    sft_rft_rft_steps: int

    def spent(self, method: str) -> int:
        """Sequences the method actually trains on (steps are whole, so within a step of `sequences`)."""
        if method == "sft":
            return self.sft_steps * self.sft_per_step
        if method == "rft":
            return self.rft_steps * self.grpo_per_step
        return self.sft_rft_sft_steps * self.sft_per_step + self.sft_rft_rft_steps * self.grpo_per_step


def plan_budget(cfg: RunConfig) -> Budget:
    """Equal budgets: every method trains on (about) `compare.budget_sequences` sequences
    (default: the config's GRPO run, max_steps x prompts_per_step x num_generations).
    SFT-then-RFT spends `compare.sft_share` of it on SFT and the rest on GRPO."""
    c = cfg.compare
    rft, sft = method_config(cfg, "rft"), method_config(cfg, "sft")
    per_grpo = rft.grpo.prompts_per_step * rft.grpo.num_generations
    per_sft = sft.sft.batch_size
    total = c.budget_sequences or cfg.max_steps * cfg.grpo.prompts_per_step * cfg.grpo.num_generations
    return Budget(
        sequences=total,
        grpo_per_step=per_grpo,
        sft_per_step=per_sft,
        rft_steps=max(1, round(total / per_grpo)),
        sft_steps=max(1, round(total / per_sft)),
        sft_rft_sft_steps=max(1, round(c.sft_share * total / per_sft)),
        sft_rft_rft_steps=max(1, round((1 - c.sft_share) * total / per_grpo)),
    )


def method_config(
    cfg: RunConfig, method: str, *, budget: Budget | None = None, train: str | None = None
) -> RunConfig:
    """The run config of one method: the base config, the method's overrides, its steps and
    training rows; held-out settings are dropped (compare evaluates separately)."""
    c = cfg.compare
    data = cfg.model_dump(mode="json", exclude={"stages"})
    data.pop("method")
    if train is not None:
        data["data"].update({"train": train, "eval": None, "eval_fraction": 0.0})
    data["eval"]["every"] = 0
    if method == "sft_rft":
        data["stages"] = [
            {"name": "sft", "method": "sft", "overrides": c.sft_overrides},
            {"name": "rft", "method": "grpo", "overrides": c.rft_overrides},
        ]
        if budget is not None:
            data["stages"][0]["max_steps"] = budget.sft_rft_sft_steps
            data["stages"][1]["max_steps"] = budget.sft_rft_rft_steps
    else:
        data["method"] = "sft" if method == "sft" else "grpo"
        set_dotted(
            data, c.sft_overrides if method == "sft" else c.rft_overrides, f"compare.{method}_overrides"
        )
        if budget is not None:
            data["max_steps"] = budget.sft_steps if method == "sft" else budget.rft_steps
    try:
        return RunConfig.model_validate(data)
    except Exception as err:  # an override that does not fit: say which
        raise ConfigError(f"compare: the {method} config is invalid: {err}".splitlines()[0]) from None


def fingerprint(cfg: RunConfig) -> str:
    """sha256 of everything that changes a cell's result (not the sizes/methods to run)."""
    body = cfg.model_dump(mode="json", exclude={"output_dir"})
    body["compare"].pop("train_sizes")
    body["compare"].pop("methods")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# =============================================================================================
# Cells
# =============================================================================================


@dataclass(frozen=True)
class Cell:
    method: str  # base | sft | rft | sft_rft
    size: int | None  # training rows; None for the base model

    @property
    def key(self) -> str:
        return "base" if self.size is None else f"n{self.size}-{self.method}"


def cells(sizes: list[int], methods: list[str]) -> list[Cell]:
    """The base model first, then each size's methods (smallest size first)."""
    return [Cell("base", None)] + [Cell(m, n) for n in sorted(set(sizes)) for m in methods]


def summarise(report: dict[str, Any], names: list[str], seed: int) -> dict[str, Any]:
    """Accuracy and each reward's mean with a 95% bootstrap CI, from an `evaluate` report."""
    per_reward: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [s.get(name) for d in report["details"] for s in d["rewards"]]
        col = [float("nan") if v is None else float(v) for v in values]
        lo, hi = bootstrap_ci(col, seed=seed)
        per_reward[name] = {"mean": mean(col), "ci95": [lo, hi]}
    return {
        "n": report["n"],
        "samples_per_row": report["samples_per_row"],
        "success_reward": report.get("success_reward"),
        "accuracy": report.get("accuracy"),
        "accuracy_ci95": report.get("accuracy_ci95"),
        "reward": report.get("reward"),
        "rewards": per_reward,
        "eval_time_s": report["time_s"],
    }


def train_time(run: Path) -> float:
    """Seconds spent in training steps and checkpoints (summed over resumed sessions and
    stages), from metrics.jsonl: model loading and evaluation are not counted."""
    total = 0.0
    for f in [run / "metrics.jsonl", *sorted(run.glob("stages/*/metrics.jsonl"))]:
        if f.is_file():
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    m = json.loads(line)
                    total += float(m.get("step_time") or 0.0) + float(m.get("time/checkpoint") or 0.0)
    return total


def _write_json(path: Path, body: Any) -> None:
    from openrft.evaluation.evaluate import write_report

    write_report(body, path)  # temp file + rename; NaN -> null


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    def default(x: Any) -> Any:
        return x.tolist() if hasattr(x, "tolist") else str(x)

    write_atomic(path, "".join(json.dumps(r, default=default) + "\n" for r in rows))


# =============================================================================================
# The comparison
# =============================================================================================


@dataclass
class Plan:
    out: Path
    eval_cfg: RunConfig
    eval_file: Path
    eval_config_file: Path
    budget: Budget
    pool_size: int


def prepare(cfg: RunConfig, out: Path, sizes: list[int]) -> Plan:
    """Check the config, write plan.json, the eval config and the held-out/training rows."""
    from openrft.engine.common import load_splits

    if not cfg.rewards:
        raise ConfigError("compare needs `rewards` (every model is scored with them)")
    if cfg.stages:
        raise ConfigError("compare builds its own stages; remove `stages` from the config")
    c = cfg.compare
    splits = load_splits(cfg)
    if len(splits.eval) < c.eval_rows:
        raise ConfigError(
            f"compare evaluates on compare.eval_rows={c.eval_rows} held-out rows but the config has "
            f"{len(splits.eval)}; set data.eval to a file with more rows or lower compare.eval_rows"
        )
    too_big = [n for n in sizes if n > len(splits.train)]
    if too_big or any(n < 1 for n in sizes):
        raise ConfigError(
            f"train sizes {sizes}: each must be between 1 and the {len(splits.train)} training rows"
        )
    budget = plan_budget(cfg)
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    fp = fingerprint(cfg)
    if plan_file.is_file():
        old = json.loads(plan_file.read_text(encoding="utf-8")).get("fingerprint")
        if old != fp:
            raise ConfigError(
                f"{out} holds a comparison made with a different config; use another --output "
                "(or delete that folder) to compare with this one"
            )
    _write_json(plan_file, {"fingerprint": fp, "budget": asdict(budget)})
    eval_file = out / "data" / "eval.jsonl"
    _write_rows(eval_file, splits.eval[: c.eval_rows])
    for n in sizes:
        _write_rows(out / "data" / f"train-{n}.jsonl", take(splits.train, n, cfg.seed))
    eval_cfg = cfg.model_copy(deep=True)
    eval_cfg.eval.max_rows = None  # eval.jsonl holds exactly the rows to evaluate
    eval_config_file = out / "eval_config.yaml"
    body = eval_cfg.model_dump(mode="json", exclude={"stages"})
    write_atomic(
        eval_config_file,
        "# Resolved config of every evaluation in this comparison:\n"
        f"#   openrft eval {eval_config_file} --data {eval_file} --adapter <cell>/run/adapter\n"
        + yaml.safe_dump(body, sort_keys=False),
    )
    return Plan(out, eval_cfg, eval_file, eval_config_file, budget, len(splits.train))


def run_cell(cfg: RunConfig, plan: Plan, cell: Cell, reporter: Reporter) -> dict[str, Any]:
    """Train (unless base) and evaluate one cell; its result.json is written last, atomically."""
    from openrft.engine.train import final_artifact, train
    from openrft.evaluation.evaluate import evaluate, write_report

    folder = plan.out / "cells" / cell.key
    result_file = folder / "result.json"
    if result_file.is_file():
        reporter.message(f"{cell.key}: finished before, reused")
        return dict(json.loads(result_file.read_text(encoding="utf-8")))
    adapter: Path | None = None
    eval_cfg = plan.eval_cfg
    seconds = 0.0
    if cell.size is not None:
        train_file = plan.out / "data" / f"train-{cell.size}.jsonl"
        mcfg = method_config(cfg, cell.method, budget=plan.budget, train=str(train_file.resolve()))
        run = folder / "run"
        reporter.message(f"{cell.key}: training {LABELS[cell.method]} on {cell.size} rows")
        train(mcfg, output_dir=run, resume=True, reporter=reporter)
        seconds = train_time(run)
        adapter = final_artifact(run)
        if adapter.name == "model":  # full fine-tuning: evaluate that model, no adapter
            eval_cfg = eval_cfg.model_copy(deep=True)
            eval_cfg.model.name = str(adapter)
            adapter = None
    reporter.message(f"{cell.key}: evaluating on {plan.eval_cfg.compare.eval_rows} held-out rows")
    report = evaluate(eval_cfg, adapter=adapter, data=str(plan.eval_file), reporter=reporter)
    write_report(report, folder / "eval.json")
    command = f"openrft eval {plan.eval_config_file} --data {plan.eval_file}"
    if adapter is not None:
        command += f" --adapter {adapter}"
    elif eval_cfg is not plan.eval_cfg:
        command += f" --set model.name={eval_cfg.model.name}"
    result = {
        "cell": cell.key,
        "method": cell.method,
        "train_size": cell.size,
        "adapter": str(adapter) if adapter else None,
        "train_time_s": seconds,
        "eval_command": command,
        **summarise(report, [r.name for r in cfg.rewards], cfg.seed),
    }
    _write_json(result_file, result)
    return result


def compare(
    cfg: RunConfig,
    *,
    output: str | Path,
    train_sizes: list[int] | None = None,
    methods: list[str] | None = None,
    reporter: Reporter | None = None,
    command: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the comparison; write report.json, report.md and accuracy.png into
    `output` and return the report. `should_stop` is asked before each cell (a paused job): True
    raises `CompareStopped` (a training in progress stops by itself after a step, with a checkpoint)."""
    reporter = reporter or NullReporter()
    sizes = sorted(set(train_sizes or cfg.compare.train_sizes))
    chosen = list(methods or cfg.compare.methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    for m in chosen:
        method_config(cfg, m)  # an override that does not fit fails before anything runs
    out = Path(output)
    t0 = time.perf_counter()
    plan = prepare(cfg, out, sizes)
    results: list[dict[str, Any]] = []
    for cell in cells(sizes, chosen):
        if should_stop is not None and should_stop():
            raise CompareStopped(out, len(results))
        results.append(run_cell(cfg, plan, cell, reporter))
    report = build_report(
        cfg,
        results,
        budget=asdict(plan.budget) | {m: plan.budget.spent(m) for m in chosen},
        sizes=sizes,
        methods=chosen,
        eval_file=str(plan.eval_file),
        eval_config=str(plan.eval_config_file),
        pool_size=plan.pool_size,
        command=command,
        session_time_s=time.perf_counter() - t0,
    )
    _write_json(out / "report.json", report)
    plot_accuracy(report, out / "accuracy.png")
    write_atomic(out / "report.md", render_markdown(report))
    return report
