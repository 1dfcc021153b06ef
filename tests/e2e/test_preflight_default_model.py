"""`openrft rewards preflight` on the default model with the Countdown example (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openrft.cli.rewards import app

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "countdown.yaml"
CODES = {
    "function_errors", "function_constant", "function_mostly_none", "sft_warm_start", "too_easy",
    "too_hard", "group_size", "no_signal", "dominated", "redundant", "conflict", "clipped", "ready",
    "no_success_reward",
}  # fmt: skip


def test_preflight_countdown_on_the_default_model(default_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "preflight.json"
    # one thread: robust on shared CI machines, where two-thread OpenMP spin-waits oversubscribe
    args = ["preflight", str(EXAMPLE), "--samples", "4", "--prompts", "2", "--output", str(out)]
    args += ["--set", "grpo.max_new_tokens=32", "--set", "model.threads=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reward functions" in result.output and "advice" in result.output
    report = json.loads(out.read_text())
    assert report["model"] == "smollm2-135m-instruct" and report["adapter"] is None
    assert (report["prompts"], report["samples_per_prompt"]) == (2, 4)
    assert set(report["functions"]) == {"format", "equation", "partial"}
    for st in report["functions"].values():
        assert st["errors"] == 0 and 0.0 <= st["mean"] <= 1.0
    assert report["success"]["reward"] == "equation" and report["success"]["samples"] == 8
    assert report["success"]["group_size"] == 8  # the config's grpo.num_generations
    assert 0 < report["completions"]["max_length"] <= 32
    assert report["advice"] and {a["code"] for a in report["advice"]} <= CODES
    assert len(report["per_prompt"]) == 2 and report["examples"][0]["completion"].startswith("<think>")
    assert report["time_s"]["total"] < 300
