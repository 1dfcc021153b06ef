"""Durable jobs against crashes of the training process: real tiny-model jobs on an in-process
server whose training process is killed with SIGKILL (as the OOM killer does) mid-job. The job
continues from its last checkpoint with each step exactly once; a job killed on every attempt
fails with the cause and can be resumed by its user; a user error is never retried."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import openrft
from openrft.client import Job
from openrft.jobs import procs
from openrft.server import ServerSettings
from openrft.server.background import serve_in_background
from openrft.server.store import Store

KEY = "durable-test-key"
MAX_ATTEMPTS = 2
KILLED = "training process killed by SIGKILL (out of memory, or killed from outside)"


def slow_reward(prompt: str, completion: str, example: dict) -> float:
    """Makes a step last about half a second without using the CPU."""
    time.sleep(0.06)
    return float(len(completion) % 3)


def broken_reward(prompt: str, completion: str, example: dict) -> float:
    """A user's bug: every call raises."""
    raise KeyError("answer")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Store]]:
    data = tmp_path_factory.mktemp("durable")
    settings = ServerSettings(data_dir=data, api_key=KEY, poll_interval_s=0.2, max_attempts=MAX_ATTEMPTS)
    with serve_in_background(settings) as url:
        yield url, Store(data)


@pytest.fixture(scope="module")
def client(server: tuple[str, Store]) -> Iterator[openrft.Client]:
    with openrft.Client(server[0], KEY) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(client: openrft.Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("".join(f'{{"nums": [{i}, {i + 1}], "target": {i * 3}}}\n' for i in range(6)))
    return client.datasets.upload(path)


def _job(
    client: openrft.Client,
    dataset: Any,
    name: str,
    reward: Any = slow_reward,
    steps: int = 5,
    save_every: int = 2,
) -> Job:
    return client.finetune(
        base_model="tiny-random-llama",
        dataset=dataset,
        reward_functions={reward.__name__: reward},
        name=name,
        model={"dtype": "float32", "threads": 1},
        data={"prompt_template": "Numbers {nums}, target {target}."},
        grpo={"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 8},
        max_steps=steps,
        save_every=save_every,
    )


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _newest_checkpoint(run_dir: Path) -> int:
    return max(
        (int(p.parent.name.split("-")[1]) for p in run_dir.glob("checkpoints/step-*/manifest.json")),
        default=0,
    )


def _logged_steps(run_dir: Path) -> list[int]:
    """The steps in the run's metrics.jsonl (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(json.loads(line)["step"])
    return steps


def _steps_in_metrics_file(run_dir: Path, name: str = "metrics.jsonl") -> list[int]:
    """The step of each line of a finished run's metrics.jsonl (or samples.jsonl), every line whole."""
    return [json.loads(line)["step"] for line in (run_dir / name).read_text().splitlines()]


def _kill_training(store: Store, job: Job, *, steps_past_checkpoint: bool) -> tuple[int, int]:
    """SIGKILL the job's training process (its pid from the jobs table, as the OOM killer would)
    once it has written a checkpoint and, with `steps_past_checkpoint`, logged a step after it
    (that step must run again, and be logged once). Returns (newest checkpoint, last logged step)."""
    run_dir = Path(store.get_job(job.id)["run_dir"])

    def ready() -> tuple[dict[str, Any], int, int] | None:
        row = store.get_job(job.id)
        checkpoint, logged = _newest_checkpoint(run_dir), max(_logged_steps(run_dir), default=0)
        if row["status"] != "running" or not row["pid"] or checkpoint == 0:
            return None
        if steps_past_checkpoint and logged <= checkpoint:
            return None
        return row, checkpoint, logged

    row, checkpoint, logged = _wait(ready, 120, f"job {job.id} to run and write a checkpoint")
    assert procs.alive(row["pid"], row["pid_start"])
    os.kill(row["pid"], signal.SIGKILL)
    _wait(lambda: not procs.alive(row["pid"], row["pid_start"]), 10, "the training process to die")
    return checkpoint, logged


def _retries(job: Job) -> list[dict[str, Any]]:
    return [json.loads(e["detail"]) for e in job.events() if e["event"] == "retry"]


def test_a_killed_training_process_continues_from_its_last_checkpoint_and_succeeds(
    client: openrft.Client, dataset: Any, server: tuple[str, Store]
) -> None:
    store = server[1]
    job = _job(client, dataset, "killed-once")
    run_dir = Path(store.get_job(job.id)["run_dir"])
    checkpoint, logged = _kill_training(store, job, steps_past_checkpoint=True)
    assert 1 <= checkpoint < logged < 5  # mid-job, with a logged step that the checkpoint does not hold
    job.wait(timeout=300)
    assert job.data["attempts"] == 2
    assert _retries(job) == [{"attempt": 2, "cause": KILLED}]
    assert _steps_in_metrics_file(run_dir) == [1, 2, 3, 4, 5]  # each step exactly once
    samples = Counter(_steps_in_metrics_file(run_dir, "samples.jsonl"))
    assert sorted(samples) == [1, 2, 3, 4, 5] and len(set(samples.values())) == 1, samples
    assert [m["step"] for m in job.metrics()] == [1, 2, 3, 4, 5]
    log = job.logs()
    assert "--- process exited with code -9 ---" in log
    assert re.findall(r"resumed from \S+ \(step (\d+)\)", log) == [str(checkpoint)], log[-3000:]


def test_a_job_killed_on_every_attempt_fails_with_the_cause_and_its_user_can_resume_it(
    client: openrft.Client, dataset: Any, server: tuple[str, Store]
) -> None:
    store = server[1]
    job = _job(client, dataset, "killed-always")
    _kill_training(store, job, steps_past_checkpoint=False)
    _wait(lambda: store.get_job(job.id)["attempts"] == MAX_ATTEMPTS, 60, "the retry")
    _kill_training(store, job, steps_past_checkpoint=False)
    failed = job.wait(timeout=60, check=False)
    assert failed.status == "failed" and failed.data["attempts"] == MAX_ATTEMPTS
    assert failed.data["error"] == (
        f"{KILLED}; interruption 2 of max_attempts=2; resume the job to continue from its last checkpoint"
    )
    assert _retries(job) == [{"attempt": 2, "cause": KILLED}]

    job.resume()  # a failed job with a checkpoint goes back to the queue
    job.wait(timeout=300)
    assert job.data["attempts"] == MAX_ATTEMPTS + 1 and job.data["error"] is None
    assert _steps_in_metrics_file(Path(store.get_job(job.id)["run_dir"])) == [1, 2, 3, 4, 5]
    events = [e["event"] for e in job.events()]
    assert events.count("resumed") == 1 and events[-1] == "succeeded"


def test_a_user_error_exit_is_not_retried(client: openrft.Client, dataset: Any) -> None:
    job = _job(client, dataset, "broken-reward", reward=broken_reward, steps=3)  # judged after 20 calls
    job.wait(timeout=300, check=False)
    assert job.status == "failed" and job.data["attempts"] == 1
    assert "reward 'broken_reward'" in job.data["error"] and "calls failed" in job.data["error"]
    assert _retries(job) == []
