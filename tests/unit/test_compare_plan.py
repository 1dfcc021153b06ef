"""The comparison's pure parts: equal budgets, per-method configs, fingerprints, verdicts, markdown."""

from __future__ import annotations

from typing import Any

import pytest

from openrft.config import RunConfig
from openrft.errors import ConfigError
from openrft.evaluation.compare import Cell, cells, fingerprint, method_config, plan_budget, summarise
from openrft.evaluation.compare_report import render_markdown, verdict


def cfg(**kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "data": {"train": "rows.jsonl", "eval": "held.jsonl"},
        "rewards": [{"name": "eq", "function": "countdown.equation"}],
        "grpo": {"prompts_per_step": 4, "num_generations": 8},
        "sft": {"batch_size": 8},
        "max_steps": 60,
    }
    base.update(kw)
    return RunConfig.model_validate(base)


def test_default_budget_is_the_configured_grpo_run() -> None:
    b = plan_budget(cfg())
    # 60 steps x 4 prompts x 8 samples = 1920 sequences; SFT: 1920 / 8 = 240 steps
    assert (b.sequences, b.rft_steps, b.sft_steps) == (1920, 60, 240)
    # SFT then RFT, half each: 960 / 8 = 120 SFT steps, 960 / 32 = 30 GRPO steps
    assert (b.sft_rft_sft_steps, b.sft_rft_rft_steps) == (120, 30)
    assert b.spent("sft") == b.spent("rft") == b.spent("sft_rft") == 1920


def test_explicit_budget_share_and_overrides() -> None:
    c = cfg(compare={"budget_sequences": 320, "sft_share": 0.25, "sft_overrides": {"sft.batch_size": 16}})
    b = plan_budget(c)
    assert (b.sft_per_step, b.grpo_per_step) == (16, 32)
    assert (b.sft_steps, b.rft_steps) == (20, 10)
    assert (b.sft_rft_sft_steps, b.sft_rft_rft_steps) == (5, 8)  # 80 / 16, 240 / 32


def test_method_configs() -> None:
    c = cfg(compare={"sft_overrides": {"optim.lr": 0.002}, "rft_overrides": {"grpo.temperature": 0.9}})
    b = plan_budget(c)
    sft = method_config(c, "sft", budget=b, train="/tmp/train-12.jsonl")
    assert (sft.method, sft.max_steps, sft.optim.lr) == ("sft", 240, 0.002)
    assert (sft.data.train, sft.data.eval, sft.data.eval_fraction) == ("/tmp/train-12.jsonl", None, 0.0)
    rft = method_config(c, "rft", budget=b)
    assert (rft.method, rft.max_steps, rft.grpo.temperature, rft.optim.lr) == ("grpo", 60, 0.9, c.optim.lr)
    both = method_config(c, "sft_rft", budget=b)
    assert [(s.name, s.method, s.max_steps) for s in both.stages] == [
        ("sft", "sft", 120),
        ("rft", "grpo", 30),
    ]
    assert both.stages[0].overrides == {"optim.lr": 0.002}


def test_a_bad_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="compare: the sft config is invalid"):
        method_config(cfg(compare={"sft_overrides": {"optim.lrr": 1}}), "sft")


def test_fingerprint_ignores_what_to_run_but_not_how() -> None:
    a = fingerprint(cfg())
    assert fingerprint(cfg(compare={"train_sizes": [5], "methods": ["sft"]})) == a
    assert fingerprint(cfg(output_dir="elsewhere")) == a
    assert fingerprint(cfg(optim={"lr": 0.1})) != a
    assert fingerprint(cfg(compare={"eval_rows": 300})) != a


def test_cells_base_first_then_sizes_ascending() -> None:
    got = [c.key for c in cells([100, 12, 12], ["sft", "rft"])]
    assert got == ["base", "n12-sft", "n12-rft", "n100-sft", "n100-rft"]
    assert Cell("base", None).key == "base"


def test_summarise_means_and_cis_from_details() -> None:
    report = {
        "n": 2,
        "samples_per_row": 1,
        "success_reward": "eq",
        "accuracy": 0.5,
        "accuracy_ci95": [0.0, 1.0],
        "reward": 0.5,
        "time_s": 1.5,
        "details": [{"rewards": [{"eq": 1.0, "fmt": None}]}, {"rewards": [{"eq": 0.0, "fmt": 1.0}]}],
    }
    s = summarise(report, ["eq", "fmt"], seed=0)
    assert s["rewards"]["eq"]["mean"] == 0.5
    assert s["rewards"]["fmt"] == {"mean": 1.0, "ci95": [1.0, 1.0]}  # None = not applicable, left out
    assert s["eval_time_s"] == 1.5


def test_verdict_uses_ci_overlap() -> None:
    def r(lo: float, hi: float) -> dict[str, Any]:
        return {"accuracy_ci95": [lo, hi]}

    assert verdict(r(0.5, 0.7), r(0.1, 0.4)) == "higher"
    assert verdict(r(0.1, 0.4), r(0.5, 0.7)) == "lower"
    assert verdict(r(0.3, 0.6), r(0.5, 0.7)) == "within the CIs"
    assert verdict(r(None, None), r(0.5, 0.7)) == "not comparable"  # type: ignore[arg-type]


def test_markdown_states_budget_and_results() -> None:
    def res(method: str, size: int | None, acc: float, lo: float, hi: float) -> dict[str, Any]:
        return {
            "method": method,
            "train_size": size,
            "accuracy": acc,
            "accuracy_ci95": [lo, hi],
            "rewards": {"eq": {"mean": acc, "ci95": [lo, hi]}},
            "train_time_s": 0.0 if size is None else 90.0,
            "eval_time_s": 5.0,
            "eval_command": f"openrft eval e.yaml --adapter {method}",
        }

    report = {
        "command": "openrft compare c.yaml --train-sizes 12",
        "model": "m",
        "dtype": "float32",
        "lora": {"r": 16, "alpha": 32},
        "success_reward": "eq",
        "reward_names": ["eq"],
        "eval": {
            "rows": 200,
            "data": "e.jsonl",
            "samples_per_row": 1,
            "temperature": 0.0,
            "max_new_tokens": 96,
        },
        "train": {"sizes": [12], "source": "t.jsonl", "pool_rows": 2000, "seed": 0, "sft_targets": "demo"},
        "budget": {
            "sequences": 1920,
            "sft_steps": 240,
            "sft_per_step": 8,
            "rft_steps": 60,
            "grpo_per_step": 32,
            "sft_rft_sft_steps": 120,
            "sft_rft_rft_steps": 30,
            "sft": 1920,
            "rft": 1920,
            "sft_rft": 1920,
        },
        "methods": ["base", "sft", "rft", "sft_rft"],
        "results": [
            res("base", None, 0.05, 0.02, 0.08),
            res("sft", 12, 0.10, 0.06, 0.14),
            res("rft", 12, 0.30, 0.24, 0.36),
            res("sft_rft", 12, 0.28, 0.22, 0.34),
        ],
        "time": {"train_s": 270.0, "eval_s": 20.0, "this_session_s": 300.0},
    }
    md = render_markdown(report)
    assert "openrft compare c.yaml --train-sizes 12" in md
    assert "**1920 training sequences**" in md
    assert "| SFT | SFT: 240 steps x 8 demonstrations | 1920 |" in md
    assert "| 12 | RFT (GRPO) | 30.0% [24.0, 36.0] | 0.300 [0.24, 0.36] | 1.5 min |" in md
    assert "RFT (GRPO) vs SFT: 30.0% vs 10.0%, higher" in md
    assert "SFT then RFT vs RFT (GRPO): 28.0% vs 30.0%, within the CIs" in md
    assert "highest accuracy: RFT (GRPO) (30.0%)" in md
