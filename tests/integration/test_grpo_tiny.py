"""GRPO end to end on the tiny random Llama model: train, metrics, samples, checkpoint,
resume (exactly, and after kill -9), reward errors, data errors, eval. Seconds each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from openrft.config import load_config
from openrft.engine.train import train
from openrft.errors import RewardError
from openrft.evaluation.evaluate import evaluate

REWARDS_PY = '''
def count_a(prompt, completion, example):
    """Fraction of 'a' characters: varies inside every group, so each step updates."""
    return completion.count("a") / max(1, len(completion))

def always_raises(prompt, completion, example):
    raise ValueError("broken reward " + str(example["id"]))

def not_applicable_for_odd(prompt, completion, example):
    return None if example["id"] % 2 else 1.0
'''


def write_setup(tmp: Path, *, extra: str = "", rewards: str | None = None) -> Path:
    rows = [
        {"prompt": f"say {w}", "id": i} for i, w in enumerate(["apple", "banana", "cat", "dog", "egg", "fig"])
    ]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "rewards.py").write_text(REWARDS_PY)
    rewards = rewards or "  - {name: a, function: rewards.py:count_a}\n"
    cfg = textwrap.dedent(
        """\
        model: {name: tiny-random-llama, dtype: float32, threads: 1}
        lora: {r: 4, alpha: 8}
        data: {train: data.jsonl, eval_fraction: 0.34}
        grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 12, temperature: 1.0}
        optim: {lr: 0.01, micro_batch_size: 4}
        max_steps: 3
        save_every: 1
        """
    )
    path = tmp / "cfg.yaml"
    path.write_text(cfg + "rewards:\n" + rewards + extra)
    return path


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return write_setup(tmp_path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_train_writes_metrics_samples_checkpoints_and_adapter(
    setup: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = load_config(setup)
    run = train(cfg, output_dir=tmp_path / "run")
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in (
        "reward",
        "reward_std",
        "rewards/a/mean",
        "rewards/a/std",
        "rewards/a/errors",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/clipped_ratio",
        "loss",
        "kl",
        "entropy",
        "clip_ratio",
        "grad_norm",
        "learning_rate",
        "time/rollout",
        "time/reward",
        "time/update",
        "step_time",
        "tokens_per_second",
    ):
        assert key in metrics[0], key
    assert any(m["grad_norm"] > 0 for m in metrics), "no step updated the adapter"
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 3 * 2 * 4
    assert {"prompt", "completion", "rewards", "advantage", "step"} <= samples[0].keys()
    cfg_saved = json.loads((run / "config.json").read_text())
    assert cfg_saved["max_steps"] == 3
    assert (run / "checkpoints" / "step-3" / "manifest.json").is_file()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "the saved adapter was never trained"


def test_resume_continues_exactly(setup: Path, tmp_path: Path) -> None:
    full = train(load_config(setup, ["max_steps=4"]), output_dir=tmp_path / "full")
    part = tmp_path / "part"
    train(load_config(setup, ["max_steps=2"]), output_dir=part)
    train(load_config(setup, ["max_steps=4"]), output_dir=part, resume=True)
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b, strict=True):
        assert ma["reward"] == pytest.approx(mb["reward"], abs=1e-6)
        assert ma["loss"] == pytest.approx(mb["loss"], abs=1e-6)


def test_refuses_to_overwrite_a_run_without_resume(setup: Path, tmp_path: Path) -> None:
    train(load_config(setup, ["max_steps=1"]), output_dir=tmp_path / "r")
    with pytest.raises(Exception, match="--resume"):
        train(load_config(setup, ["max_steps=1"]), output_dir=tmp_path / "r")


def test_kill_9_then_resume_uses_last_complete_checkpoint(setup: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "openrft.cli.main",
        "train",
        str(setup),
        "--output-dir",
        str(run),
        "--set",
        "max_steps=40",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step-3" / "manifest.json").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpts = run / "checkpoints"
    done = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("step-*") if (p / "manifest.json").exists())
    assert done and done[-1] >= 3
    last = done[-1]
    # a crash mid-write leaves a temp folder; a torn file breaks a manifest: neither may be used
    (ckpts / f".step-{last + 1}.tmp-999").mkdir()
    torn = ckpts / f"step-{last + 1}"
    torn.mkdir(exist_ok=True)
    (torn / "adapter").mkdir(exist_ok=True)
    (torn / "manifest.json").write_text(
        json.dumps({"files": {"trainer_state.json": {"sha256": "0", "bytes": 1}}})
    )
    out = subprocess.run([*cmd[:-1], f"max_steps={last + 3}", "--resume"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"resumed from {ckpts / f'step-{last}'} (step {last})" in out.stderr.replace("\n", "")
    steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, last + 4))
    assert not list(ckpts.glob(".step-*.tmp-*"))


def test_reward_that_always_raises_is_counted_then_stops_the_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    setup = write_setup(
        tmp_path,
        rewards=(
            "  - {name: a, function: rewards.py:count_a}\n"
            "  - {name: bad, function: rewards.py:always_raises}\n"
        ),
        extra="max_reward_error_rate: 0.5\n",
    )
    cfg = load_config(setup, ["max_steps=10"])
    with pytest.raises(RewardError) as err:
        train(cfg, output_dir=tmp_path / "run")
    assert "bad" in str(err.value) and "broken reward" in str(err.value)
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert metrics, "the run should go on for a while before stopping"
    assert all(m["rewards/bad/errors"] == 8 for m in metrics)
    assert all(m["rewards/bad/mean"] == 0.0 for m in metrics)


def test_not_applicable_rewards_are_left_out(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path, rewards="  - {name: na, function: rewards.py:not_applicable_for_odd}\n")
    run = train(load_config(setup, ["max_steps=2"]), output_dir=tmp_path / "run")
    for s in read_jsonl(run / "samples.jsonl"):
        assert s["rewards"]["na"] in (None, 1.0)
        assert s["advantage"] == 0.0  # constant or absent reward: no signal
    assert all(m["rewards/na/errors"] == 0 for m in read_jsonl(run / "metrics.jsonl"))


def test_missing_template_column_is_one_line_exit_2(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path, extra="")
    text = setup.read_text().replace(
        "eval_fraction: 0.34}", "eval_fraction: 0.34, prompt_template: 'Q: {question}'}"
    )
    setup.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "openrft.cli.main", "train", str(setup)], capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, out.stderr
    assert "data.jsonl" in lines[0] and "question" in lines[0]


def test_unknown_config_key_names_closest(setup: Path) -> None:
    from openrft.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        load_config(setup, ["grpo.temprature=0.5"])


def test_eval_reports_accuracy_and_rewards(setup: Path, tmp_path: Path) -> None:
    cfg = load_config(setup, ["max_steps=1"])
    report = evaluate(cfg, samples=2)
    assert report["n"] == 2 and report["samples_per_row"] == 2
    assert 0 <= report["accuracy"] <= 1
    assert "rewards/a/mean" in report and "pass@2" in report and "pass@1" in report


def test_kl_against_the_base_model(setup: Path, tmp_path: Path) -> None:
    run = train(load_config(setup, ["max_steps=2", "grpo.beta=0.1"]), output_dir=tmp_path / "run")
    m = read_jsonl(run / "metrics.jsonl")
    assert m[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: LoRA B = 0, so policy = reference
    assert m[1]["kl"] > 0  # after one update the policy has moved away from the base


def test_several_iterations_reuse_rollout_logprobs(setup: Path, tmp_path: Path) -> None:
    cfg = load_config(
        setup, ["max_steps=2", "grpo.num_iterations=3", "grpo.loss_type=grpo", "grpo.epsilon=0.01"]
    )
    run = train(cfg, output_dir=tmp_path / "run")
    m = read_jsonl(run / "metrics.jsonl")
    assert torch.isfinite(torch.tensor([x["loss"] for x in m])).all()
    assert max(x["clip_ratio"] for x in m) > 0  # later iterations move past the tight clip range


def test_assistant_prefix_template_is_rendered_per_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path)
    setup.write_text(
        setup.read_text().replace("eval_fraction: 0.34}", "eval_fraction: 0.34, assistant_prefix: '#{id}:'}")
    )
    run = train(load_config(setup, ["max_steps=1"]), output_dir=tmp_path / "run")
    for s in read_jsonl(run / "samples.jsonl"):
        assert s["completion"].startswith(f"#{s['example']['id']}:")  # rewards see the rendered prefix


def test_assistant_prefix_missing_column_fails_before_loading(tmp_path: Path, tiny_model_dir: Path) -> None:
    from openrft.errors import DataError

    setup = write_setup(tmp_path)
    setup.write_text(
        setup.read_text().replace("eval_fraction: 0.34}", "eval_fraction: 0.34, assistant_prefix: '{nope}'}")
    )
    with pytest.raises(DataError, match="nope"):
        train(load_config(setup, ["max_steps=1"]), output_dir=tmp_path / "run")


def test_sigterm_stops_after_the_step_with_a_checkpoint(setup: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "openrft.cli.main", "train", str(setup), "--output-dir", str(run)]
    proc = subprocess.Popen(
        [*cmd, "--set", "max_steps=100000", "--set", "save_every=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and len(read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []) < 2
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "continue with --resume" in " ".join(err.split())
    last = read_jsonl(run / "metrics.jsonl")[-1]["step"]
    assert (run / "checkpoints" / f"step-{last}" / "manifest.json").is_file()  # no step lost
    out = subprocess.run([*cmd, "--set", f"max_steps={last + 2}", "--resume"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"(step {last})" in out.stderr.replace("\n", "")
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == list(range(1, last + 3))
