"""The issue's own checks, on the real default model (two short steps): train through the CLI,
metrics and adapter, then eval on a file holding only `nums` and `target`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "countdown.yaml"
FAST = ["--set", "grpo.max_new_tokens=24", "--set", "grpo.prompts_per_step=2", "--set", "eval.max_rows=4"]

pytestmark = pytest.mark.e2e


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openrft.cli.main", *args], capture_output=True, text=True)


def test_train_two_steps_then_eval_on_nums_and_target_only(tmp_path: Path, default_model_dir: Path) -> None:
    run = tmp_path / "D"
    out = cli("train", str(CONFIG), "--set", "max_steps=2", *FAST, "--output-dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for key in (
        "reward",
        "rewards/format/mean",
        "rewards/equation/mean",
        "frac_reward_zero_std",
        "loss",
        "step_time",
    ):
        assert key in metrics[0] and key in metrics[1], key

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(default_model_dir), str(run / "adapter")
    )
    assert any("lora_A" in n for n, _ in model.named_parameters())

    data = tmp_path / "F.jsonl"
    data.write_text('{"nums": [3, 5, 7], "target": 22}\n{"nums": [2, 9, 4], "target": 14}\n')
    report_file = tmp_path / "R.json"
    out = cli(
        "eval",
        str(CONFIG),
        *FAST,
        "--adapter",
        str(run / "adapter"),
        "--data",
        str(data),
        "--output",
        str(report_file),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["n"] == 2
    for key in ("accuracy", "rewards/format/mean", "rewards/equation/mean"):
        assert 0.0 <= report[key] <= 1.0, key
