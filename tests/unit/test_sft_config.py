"""Config sections for SFT, DPO, stages and compare: defaults, stage configs, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from openrft.config import RunConfig, load_config, set_dotted, stage_config
from openrft.errors import ConfigError

BASE = "data: {train: rows.jsonl}\nrewards: [{name: f, function: countdown.format}]\n"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(BASE + text)
    return p


def test_existing_configs_stay_valid_with_new_defaults() -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "countdown.yaml")
    assert cfg.method == "grpo" and cfg.stages == []
    assert cfg.sft.batch_size == 8 and not cfg.sft.packing and not cfg.sft.full_finetune
    assert cfg.dpo.beta == 0.1
    assert cfg.compare.eval_rows == 200 and cfg.compare.methods == ["sft", "rft", "sft_rft"]


def test_stage_config_applies_method_steps_overrides_and_adapter(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "max_steps: 50\nstages:\n"
            "  - {name: sft, method: sft, max_steps: 5, overrides: {optim.lr: 0.001, sft.packing: true}}\n"
            "  - {name: rft, method: grpo}\n",
        )
    )
    s0, s1 = stage_config(cfg, 0), stage_config(cfg, 1, init_adapter="/runs/x/stages/sft/adapter")
    assert (s0.method, s0.max_steps, s0.optim.lr, s0.sft.packing) == ("sft", 5, 0.001, True)
    assert (s1.method, s1.max_steps, s1.optim.lr) == ("grpo", 50, cfg.optim.lr)
    assert s1.lora.init_adapter == "/runs/x/stages/sft/adapter"
    assert s0.stages == [] and s1.stages == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("method: sft\nstages: [{name: a, method: sft}]\n", "set `method` on each entry of `stages`"),
        ("stages: [{name: a, method: sft}, {name: a, method: grpo}]\n", "stage names must be unique"),
        (
            "stages: [{name: a, method: sft, overrides: {optim.lrr: 1}}]\n",
            "stages[0] (a): unknown key 'optim.lrr'",
        ),
        ("stages: [{name: a, method: sft, overrides: {optim.lr: -1}}]\n", "stages[0] (a)"),
        ("stages: [{name: 'a b', method: sft}]\n", "stages.0.name"),
        ("sft: {completion_fn: countdown.demonstraton}\n", "did you mean 'countdown.demonstration'"),
        ("dpo: {beta: 0}\n", "dpo.beta"),
        ("compare: {methods: [sft, ppo]}\n", "compare.methods"),
    ],
)
def test_errors_say_what_to_fix(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_grpo_stage_needs_rewards_but_sft_only_chain_does_not() -> None:
    RunConfig.model_validate({"data": {"train": "x"}, "stages": [{"name": "a", "method": "sft"}]})
    with pytest.raises(ValueError, match=r"stages\[0\] \(a\): method grpo needs at least one entry"):
        RunConfig.model_validate({"data": {"train": "x"}, "stages": [{"name": "a", "method": "grpo"}]})


def test_set_dotted_creates_sections_and_refuses_non_sections() -> None:
    data: dict = {"optim": {"lr": 1.0}}
    set_dotted(data, {"optim.lr": 2.0, "sft.batch_size": 4})
    assert data == {"optim": {"lr": 2.0}, "sft": {"batch_size": 4}}
    with pytest.raises(ValueError, match="'lr' is not a section"):
        set_dotted(data, {"optim.lr.x": 1})
