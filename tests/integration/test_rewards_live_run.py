"""A running GRPO job (a subprocess on the tiny model) picks up `openrft rewards update` at its
next step: the version is recorded, later metrics come from the new function and carry
rewards/<name>/version. Needs the engine to call `apply_pending_updates` at the start of each
step and to log `version_metrics` (see openrft.rewards.live)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from openrft.rewards.live import read_versions, request_update

V1 = """
def count_a(prompt, completion, example):
    return completion.count("a") / max(1, len(completion)) * 0.5
"""
V2 = """
def always_one(prompt, completion, example):
    return 1.0
"""
TRAIN = (
    "import sys\nfrom openrft.config import load_config\nfrom openrft.engine.train import train\n"
    "train(load_config(sys.argv[1]), output_dir=sys.argv[2])\n"
)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            out.append(json.loads(line))
    return out


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"the training process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_running_job_switches_to_the_new_reward(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"prompt": f"say {w}", "id": i} for i, w in enumerate(["apple", "banana", "cat", "dog"])]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rewards.py").write_text(V1)
    (tmp_path / "v2.py").write_text(V2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model: {name: tiny-random-llama, dtype: float32, threads: 1}\n"
        "lora: {r: 4, alpha: 8}\n"
        "data: {train: data.jsonl}\n"
        "grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 8, temperature: 1.0}\n"
        "max_steps: 400\nsave_every: 0\n"
        "rewards:\n  - {name: a, function: rewards.py:count_a}\n"
    )
    run = tmp_path / "run"
    log = (tmp_path / "train.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(cfg), str(run)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ,
    )
    try:
        wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) >= 2, 180, "two steps", proc)
        request = request_update(run, {"a": "v2.py:always_one"}, cwd=tmp_path)

        def applied() -> list[dict]:
            return [r for r in read_versions(run) if r.get("request") == request.name]

        wait_for(lambda: bool(applied()), 60, "the update to be applied", proc)
        record = applied()[0]
        at = record["step"]
        wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) >= at + 2, 60, "two more steps", proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()
    assert record["status"] == "applied" and record["version"] == 2, record
    assert record["rescore"]["n"] >= 16 and record["rescore"]["mean_new"] == 1.0
    assert record["rescore"]["mean_old"] <= 0.5
    metrics = read_jsonl(run / "metrics.jsonl")
    before = [m for m in metrics if m["step"] < at]
    after = [m for m in metrics if m["step"] >= at]
    assert before and len(after) >= 2
    assert all(m["rewards/a/mean"] <= 0.5 for m in before)  # v1 never reaches 0.5 per mean
    assert all(m["rewards/a/mean"] == 1.0 for m in after)
    assert all(m["rewards/a/version"] == 1.0 for m in before)
    assert all(m["rewards/a/version"] == 2.0 for m in after)
    versions = read_versions(run)
    assert [(r["status"], r["version"]) for r in versions] == [("initial", 1), ("applied", 2)]
