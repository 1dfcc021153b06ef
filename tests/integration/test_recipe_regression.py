"""Stored-loss regression and exact-resume tests for every recipe (GRPO, SFT padded, packed and
with LoRA dropout, DPO, an SFT-then-GRPO stages chain), all through the one entry point
`openrft.engine.train.train` on the tiny random Llama model: CPU, one torch thread, fixed seed.

The per-step numbers in EXPECTED are today's: a change that moves them (a refactor of the
recipes, the loop, the losses, the data order, the schedule) fails here. When a change is meant
to move them, regenerate the literals and say why in the commit:

    OPENRFT_REGEN=1 PYTHONPATH=$PWD/src python -m pytest -q -p no:cacheprovider \\
        tests/integration/test_recipe_regression.py -k stored_per_step

In that mode each regression test fails (it never passes) with its recipe's new dict in the
message; paste the dicts into EXPECTED.

Tolerances. fp32: rel 1e-4, abs 1e-6. Two runs are bit-identical (also with 2 threads instead
of 1), so this only leaves room for float re-association: splitting each batch into
micro-batches of 2 instead of 4/8 moves every fp32 value by at most 1.3e-6 relative, while a
change of meaning (loss normalisation, a lost token, an lr one step off, another data order or
sampled completion) moves them by 1e-3 or more. bf16 (GRPO only: `model.dtype: auto` is bf16 on
CUDA and on CPUs with AVX512-BF16/AMX, so it is the default path there): rel 2e-2, abs 1e-4, about
bf16's precision; it runs only on such CPUs (emulated bf16 rounds differently). Sampling amplifies
bf16 rounding: the same micro-batch split flips a sampled token at step 3 in bf16 (reward and
grad_norm move ~10%), so a bf16-only failure while every fp32 case passes can be re-association;
an fp32 failure cannot.
"""

from __future__ import annotations

import json
import os
import pprint
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from openrft.config import load_config
from openrft.engine.loop import TrainingStopped, clear_stop, request_stop
from openrft.engine.train import train
from openrft.models.registry import cpu_supports_bf16

REGEN = os.environ.get("OPENRFT_REGEN") == "1"
WORDS = ["apple", "banana", "cat", "dog", "egg", "fig"]
COMMON = """\
model: {name: tiny-random-llama, dtype: float32, threads: 1, device: cpu}
seed: 3
save_every: 0
"""
REWARDS_PY = '''
def vowels(prompt, completion, example):
    """Fraction of vowels, either case: varies inside every group, after SFT (capitals) too."""
    return sum(c in "aeiouAEIOU" for c in completion) / max(1, len(completion))
'''
GRPO = """\
lora: {r: 4, alpha: 8}
data: {train: data.jsonl}
grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 12, temperature: 1.0}
optim: {lr: 0.01, micro_batch_size: 4, schedule: cosine, warmup_steps: 1}
rewards: [{name: a, function: rewards.py:vowels}]
"""
SFT = """\
lora: {r: 8, alpha: 16}
data: {train: data.jsonl}
sft: {batch_size: 4, max_seq_len: 64}
optim: {lr: 0.02, micro_batch_size: 8, schedule: cosine, warmup_steps: 1}
"""
DPO = """\
lora: {r: 8, alpha: 16}
data: {train: prefs.jsonl}
dpo: {batch_size: 4, beta: 0.5}
optim: {lr: 0.02, micro_batch_size: 4, schedule: cosine, warmup_steps: 1}
"""
STAGES = """\
lora: {r: 4, alpha: 8}
data: {train: data.jsonl}
sft: {batch_size: 4, max_seq_len: 64}
grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 12, temperature: 1.0}
optim: {lr: 0.01, micro_batch_size: 4, schedule: cosine, warmup_steps: 1}
rewards: [{name: a, function: rewards.py:vowels}]
"""

# recipe -> (config body, overrides, metric keys pinned)
RECIPES: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "grpo": (GRPO, ["method=grpo"], ("loss", "grad_norm", "reward", "entropy", "learning_rate")),
    "grpo_bf16": (GRPO, ["method=grpo", "model.dtype=bfloat16"], ("loss", "grad_norm", "reward", "entropy")),
    "sft": (SFT, ["method=sft"], ("loss", "grad_norm", "learning_rate")),
    "sft_packed": (SFT, ["method=sft", "sft.packing=true"], ("loss", "grad_norm", "learning_rate")),
    "sft_dropout": (SFT, ["method=sft", "lora.dropout=0.1"], ("loss", "grad_norm", "learning_rate")),
    "dpo": (DPO, ["method=dpo"], ("loss", "grad_norm", "rewards/margins", "learning_rate")),
    "stages": (STAGES, [], ("loss", "grad_norm", "reward", "entropy", "learning_rate")),
}

# OPENRFT_REGEN=1 at 365991b (torch 2.13.0+cpu, transformers 5.25.0, peft 0.21.2); see the top
EXPECTED: dict[str, dict[str, list[float]]] = {
    "grpo": {
        "loss": [0.06829897686839104, 0.03697100117482144, 4.967053879312289e-09],
        "grad_norm": [0.15098069608211517, 0.14427262544631958, 0.22802796959877014],
        "reward": [0.17064397037029266, 0.21544912457466125, 0.057007577270269394],
        "entropy": [4.580529819835316, 4.582764656313004, 4.587356726328532],
        "learning_rate": [0.01, 0.01, 0.005],
    },
    "grpo_bf16": {
        "loss": [0.06829897686839104, 0.03697100117482144, 9.934107758624577e-09],
        "grad_norm": [0.15096618235111237, 0.1457955241203308, 0.2190273106098175],
        "reward": [0.17064397037029266, 0.21544912457466125, 0.07897727191448212],
        "entropy": [4.580533461137251, 4.5827638359480005, 4.585361003875732],
    },
    "sft": {
        "loss": [4.5258469581604, 4.267522811889648, 4.530613422393799],
        "grad_norm": [1.1084074974060059, 0.6396709084510803, 0.6362271904945374],
        "learning_rate": [0.02, 0.02, 0.01],
    },
    "sft_packed": {
        "loss": [4.525847434997559, 4.267522811889648, 4.530613422393799],
        "grad_norm": [1.1084074974060059, 0.6396709680557251, 0.6362271904945374],
        "learning_rate": [0.02, 0.02, 0.01],
    },
    "sft_dropout": {
        "loss": [4.5258469581604, 4.264528751373291, 4.5354509353637695],
        "grad_norm": [1.1319215297698975, 0.6167391538619995, 0.6399500966072083],
        "learning_rate": [0.02, 0.02, 0.01],
    },
    "dpo": {
        "loss": [0.6931470632553101, 0.4301450550556183, 0.14850714802742004],
        "grad_norm": [2.271097183227539, 2.2980430126190186, 0.6336199641227722],
        "rewards/margins": [2.384185791015625e-07, 0.621284008026123, 1.8321337699890137],
        "learning_rate": [0.02, 0.02, 0.01],
    },
    "stages": {
        "sft/loss": [4.5258469581604, 4.405483722686768, 4.4787468910217285],
        "sft/grad_norm": [0.6788960099220276, 0.8270604610443115, 1.0600969791412354],
        "sft/learning_rate": [0.01, 0.01, 0.005],
        "rft/loss": [0.032149413600564, -0.027856005015232554, 2.4835269396561444e-09],
        "rft/grad_norm": [0.2976173460483551, 0.30056509375572205, 0.2256493866443634],
        "rft/reward": [0.0988636389374733, 0.146401509642601, 0.11117424815893173],
        "rft/entropy": [4.5830934697931465, 4.580879129389281, 4.5819830894470215],
        "rft/learning_rate": [0.01, 0.01, 0.005],
    },
}


def write_setup(tmp: Path, recipe: str, max_steps: int) -> Path:
    """Data, reward file and config for `recipe` in `tmp`; a stages chain runs `max_steps` in each
    stage (SFT first, then GRPO starting from its adapter)."""
    rows = [
        {"id": i, "prompt": f"say {w}", "completion": w.upper() * k, "chosen": "yes", "rejected": "no"}
        for i, (w, k) in enumerate(zip(WORDS, [1, 3, 1, 2, 1, 2], strict=True))
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp / "data.jsonl").write_text(text)
    (tmp / "prefs.jsonl").write_text(text)
    (tmp / "rewards.py").write_text(REWARDS_PY)
    body = RECIPES[recipe][0]
    if recipe == "stages":
        body += textwrap.dedent(
            f"""\
            stages:
              - {{name: sft, method: sft, max_steps: {max_steps}}}
              - {{name: rft, method: grpo, max_steps: {max_steps}}}
            """
        )
    path = tmp / "cfg.yaml"
    path.write_text(COMMON + f"max_steps: {max_steps}\n" + body)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def metric_files(run: Path, recipe: str) -> dict[str, Path]:
    """Label -> metrics.jsonl: one per stage for a chain (labels prefix the keys), else one."""
    if recipe == "stages":
        return {f"{s}/": run / "stages" / s / "metrics.jsonl" for s in ("sft", "rft")}
    return {"": run / "metrics.jsonl"}


def per_step(run: Path, recipe: str) -> dict[str, list[float]]:
    """`label + key` -> that metric at each step, for the keys RECIPES pins."""
    keys = RECIPES[recipe][2]
    out: dict[str, list[float]] = {}
    for label, path in metric_files(run, recipe).items():
        rows = read_jsonl(path)
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), f"{path}: each step exactly once"
        for key in keys:
            if key in rows[0]:
                out[label + key] = [float(r[key]) for r in rows]
    return out


def run_recipe(tmp: Path, recipe: str, max_steps: int, name: str, **kw: Any) -> Path:
    cfg = load_config(write_setup(tmp, recipe, max_steps), RECIPES[recipe][1])
    return train(cfg, output_dir=tmp / name, **kw)


def needs_fast_bf16(recipe: str) -> None:
    if recipe.endswith("_bf16") and not cpu_supports_bf16():
        pytest.skip("bf16 numbers are pinned for CPUs with AVX512-BF16/AMX (emulated bf16 rounds otherwise)")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_three_steps_give_the_stored_per_step_metrics(
    recipe: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    needs_fast_bf16(recipe)
    got = per_step(run_recipe(tmp_path, recipe, 3, "run"), recipe)
    if REGEN:
        pytest.fail(f"OPENRFT_REGEN=1: new EXPECTED entry, not checked:\n{recipe!r}: {pprint.pformat(got)},")
    want = EXPECTED[recipe]
    assert sorted(got) == sorted(want)
    rel, abs_ = (2e-2, 1e-4) if recipe.endswith("_bf16") else (1e-4, 1e-6)
    for key, values in want.items():
        assert got[key] == pytest.approx(values, rel=rel, abs=abs_), f"{recipe}: {key} moved"


class Recorder:
    """A reporter that keeps the engine's messages and, given `stop_at=(loop, step)`, asks the
    `loop`-th training loop it sees to stop after `step` (the loop then writes a checkpoint and
    raises TrainingStopped)."""

    def __init__(self, stop_at: tuple[int, int] | None = None) -> None:
        self.stop_at, self.loops, self.messages = stop_at, 0, []

    def start(self, total: int, completed: int, description: str) -> None:
        self.loops += 1

    def update(self, completed: int, metrics: dict[str, Any]) -> None:
        if (self.loops, completed) == self.stop_at:
            request_stop()

    def message(self, text: str) -> None:
        self.messages.append(text)

    def stop(self) -> None:
        pass


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if not r.endswith("_bf16")])
def test_stopping_after_step_2_and_resuming_gives_the_straight_runs_steps_and_adapter(
    recipe: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    straight = run_recipe(tmp_path, recipe, 4, "straight")
    loop = 2 if recipe == "stages" else 1  # a chain stops inside its second (GRPO) stage
    try:
        with pytest.raises(TrainingStopped) as stopped:
            run_recipe(tmp_path, recipe, 4, "part", reporter=Recorder(stop_at=(loop, 2)))
    finally:
        clear_stop()
    assert stopped.value.step == 2
    resumed = Recorder()
    part = run_recipe(tmp_path, recipe, 4, "part", resume=True, reporter=resumed)
    assert any(m.endswith("/step-2 (step 2)") and m.startswith("resumed from") for m in resumed.messages)
    assert per_step(part, recipe) == per_step(straight, recipe)  # bit-identical, each step once
    a, b = adapter_tensors(straight), adapter_tensors(part)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
