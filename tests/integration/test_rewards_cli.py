"""`openrft rewards test | preflight | update` on the tiny model, and the golden gate of training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openrft.cli.rewards import app
from openrft.config import load_config
from openrft.errors import ConfigError, RewardError
from openrft.rewards import check_golden_or_raise

REWARDS = """
def count_a(prompt, completion, example):
    return completion.count("a") / max(1, len(completion))

def has_a(prompt, completion, example):
    return 1.0 if "a" in completion else 0.0

def boom(prompt, completion, example):
    raise ValueError("boom on " + repr(completion[:5]))
"""

runner = CliRunner()


def write_config(tmp: Path, rewards: str) -> Path:
    rows = [{"prompt": f"say {w}", "id": i} for i, w in enumerate(["apple", "banana", "cat", "dog", "egg"])]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "rw.py").write_text(REWARDS)
    path = tmp / "cfg.yaml"
    path.write_text(
        "model: {name: tiny-random-llama, dtype: float32, threads: 1}\n"
        "lora: {r: 4, alpha: 8}\n"
        "data: {train: data.jsonl}\n"
        "grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 10, temperature: 1.0}\n"
        "max_steps: 1\n"
        "rewards:\n" + rewards
    )
    return path


GOOD = """\
  - name: a
    function: rw.py:count_a
    tests:
      - {completion: "aa", expected: 1.0}
      - {completion: "ab", expected: 0.5, tolerance: 0.01}
  - name: fmt
    function: regex
    kwargs: {pattern: "^<a>"}
    tests:
      - {completion: "<a>x", expected: 1.0}
"""
BAD = """\
  - name: a
    function: rw.py:count_a
    tests:
      - {completion: "aa", expected: 1.0}
      - {completion: "bb", expected: 0.5}
  - name: b
    function: rw.py:boom
    tests:
      - {completion: "xyz", expected: 0.0}
"""


def test_rewards_test_passes_and_fails(tmp_path: Path) -> None:
    good = write_config(tmp_path, GOOD)
    result = runner.invoke(app, ["test", str(good)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert result.output.count("│ pass ") == 3 and "3 passed, 0 failed" in result.output
    assert check_golden_or_raise(load_config(good))[0].passed

    bad = write_config(tmp_path, BAD)
    result = runner.invoke(app, ["test", str(bad)], env={"COLUMNS": "120"})
    assert result.exit_code == 1
    assert result.output.count("│ FAIL ") == 2 and "1 passed, 2 failed" in result.output
    assert "ValueError: boom on 'xyz'" in result.output  # the failing function's traceback
    with pytest.raises(RewardError) as err:
        check_golden_or_raise(load_config(bad))
    message = str(err.value)
    assert "\n" not in message
    assert "failed (2 of 3 cases)" in message
    assert "'a' #1: expected 0.5, got 0.0" in message
    assert "'b' #0: expected 0.0, got an error (ValueError: boom on 'xyz')" in message


def test_golden_gate_reuses_a_started_reward_set(tmp_path: Path) -> None:
    from openrft.rewards import RewardSet

    cfg = load_config(write_config(tmp_path, BAD))
    with (
        RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=1.0) as rs,
        pytest.raises(RewardError, match="2 of 3 cases"),
    ):
        check_golden_or_raise(cfg, reward_set=rs)


def test_no_golden_cases_is_not_a_failure(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "  - {name: a, function: rw.py:count_a}\n")
    result = runner.invoke(app, ["test", str(cfg)])
    assert result.exit_code == 0 and "no golden cases" in result.output
    assert check_golden_or_raise(load_config(cfg)) == []


def test_preflight_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(
        tmp_path,
        "  - {name: a, function: rw.py:count_a}\n"
        "  - {name: has_a, function: rw.py:has_a, weight: 0.5}\n"
        "  - {name: b, function: rw.py:boom}\n",
    )
    out = tmp_path / "report.json"
    args = ["preflight", str(cfg), "--samples", "3", "--prompts", "4", "--output", str(out)]
    result = runner.invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "reward functions" in result.output and "advice" in result.output
    report = json.loads(out.read_text())
    assert (report["prompts"], report["samples_per_prompt"]) == (4, 3)
    assert report["success"]["reward"] == "has_a"  # no success_reward: the first 0/1 function
    assert report["functions"]["b"]["errors"] == 12 and report["functions"]["b"]["stops_training"]
    assert any(a["code"] == "function_errors" and a["level"] == "error" for a in report["advice"])
    assert "ValueError: boom on" in report["functions"]["b"]["last_error"]
    # the per-prompt means are consistent with the function means (all 12 samples have values)
    means = [p["means"]["a"] for p in report["per_prompt"]]
    assert report["functions"]["a"]["mean"] == pytest.approx(sum(means) / 4, abs=1e-3)
    assert 0 <= report["completions"]["clipped_ratio"] <= 1 and report["completions"]["max_length"] <= 10
    assert set(report["correlations"]) == {"a~has_a", "a~b", "has_a~b"}
    assert report["correlations"]["a~b"] is None  # b is constant (always the error score 0)
    shares = [st["variance_share"] for st in report["functions"].values() if st["variance_share"] is not None]
    assert not shares or math.isclose(sum(shares), 1.0, abs_tol=1e-3)


def test_preflight_refuses_one_sample(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "  - {name: a, function: rw.py:count_a}\n")
    result = runner.invoke(app, ["preflight", str(cfg), "--samples", "1"])
    assert isinstance(result.exception, ConfigError)


def test_update_writes_a_request(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"rewards": [{"name": "a", "function": "x.py:f"}]}))
    (tmp_path / "v2.py").write_text("def g(prompt, completion, example):\n    return 0.0\n")
    result = runner.invoke(app, ["update", str(run), f"a={tmp_path / 'v2.py'}:g"])
    assert result.exit_code == 0, result.output
    files = list((run / "reward_updates").glob("*.json"))
    assert len(files) == 1 and "requested:" in result.output
    result = runner.invoke(app, ["update", str(run), f"a={tmp_path / 'v2.py'}:g", "--wait", "0.2"])
    assert result.exit_code == 1 and "not applied within 0.2s" in result.output
    result = runner.invoke(app, ["update", str(run), "zz=v2.py:g"])
    assert isinstance(result.exception, ConfigError)


def test_preflight_of_a_trained_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    from openrft.engine.train import train

    cfg = write_config(tmp_path, "  - {name: has_a, function: rw.py:has_a}\n")
    run = train(load_config(cfg, ["save_every=0"]), output_dir=tmp_path / "run")
    out = tmp_path / "report.json"
    args = ["preflight", str(cfg), "-k", "2", "-n", "2", "--adapter", str(run / "adapter"), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["adapter"] == str(run / "adapter") and report["success"]["samples"] == 4
    result = runner.invoke(app, ["preflight", str(cfg), "--adapter", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "not an adapter directory" in str(result.exception)
