"""Durable jobs: the server is killed (SIGKILL) and later stopped (SIGTERM) while one job runs and
another waits; after each restart neither job is lost, the running one resumes from its last
checkpoint, and no job ever runs in two processes at once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import openrft
from openrft.jobs import procs
from openrft.server.background import free_port

KEY = "restart-key"

SLOW_REWARD = """
import time


def slow(prompt, completion, example):
    time.sleep(0.08)  # makes a step last about a second without using the CPU
    return float(len(completion) % 3)
"""


class ServerProcess:
    """`python -m openrft.cli.server` on loopback, as a user would start it."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        port = free_port()
        env = {**os.environ, "OPENRFT_API_KEY": KEY}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openrft.cli.server",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text()[-3000:])

    def stop(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop(signal.SIGTERM)


def _db_jobs(data_dir: Path) -> dict[str, dict[str, Any]]:
    db = sqlite3.connect(data_dir / "openrft.db")
    db.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in db.execute("SELECT * FROM jobs")}
    finally:
        db.close()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _config(ds_id: str, max_steps: int) -> dict[str, Any]:
    return {
        "model": {"name": "tiny-random-llama", "dtype": "float32", "threads": 1},
        "data": {"train": ds_id, "prompt_template": "Numbers {nums}, target {target}."},
        "rewards": [{"name": "slow", "function": "reward:slow"}],
        "grpo": {"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 8},
        "max_steps": max_steps,
        "save_every": 1,
        "keep_checkpoints": 2,
    }


def test_jobs_survive_crash_and_restart(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"nums": [{i}, {i + 1}], "target": {i * 3}}}\n' for i in range(6)))
    client = openrft.Client(server.start(), KEY)
    ds = client.datasets.upload(data)
    client.rewards.create("slow", SLOW_REWARD)
    running = client.jobs.create(_config(ds.id, 10), name="long")
    waiting = client.jobs.create(_config(ds.id, 2), name="queued")
    _wait(lambda: running.refresh().data["step"] >= 2, 120, "two steps of the running job")
    assert waiting.refresh().status == "queued"

    # 1. crash: SIGKILL the server. Its training process notices and stops by itself.
    server.stop(signal.SIGKILL)
    row = _db_jobs(server.data_dir)[running.id]
    assert row["status"] == "running" and row["pid"]
    _wait(lambda: not procs.alive(row["pid"], row["pid_start"]), 10, "the orphaned training process to stop")

    # 2. restart: the running job is re-queued (attempt 2) and resumes from its checkpoint
    client = openrft.Client(server.start(), KEY)
    running, waiting = client.jobs.get(running.id), client.jobs.get(waiting.id)
    _wait(lambda: running.refresh().data["attempts"] == 2 and running.status == "running", 60, "the resume")
    assert waiting.refresh().status == "queued"  # one job at a time
    resumed_from = running.data["step"]
    _wait(lambda: running.refresh().data["step"] >= resumed_from + 2, 120, "progress after the resume")

    # 3. graceful stop (SIGTERM): the running job goes back to the queue
    server.stop(signal.SIGTERM)
    rows = _db_jobs(server.data_dir)
    assert rows[running.id]["status"] == "queued" and rows[running.id]["pid"] is None
    assert rows[waiting.id]["status"] == "queued"

    # 4. restart again: both finish, each exactly once
    client = openrft.Client(server.start(), KEY)
    first, second = client.jobs.get(running.id), client.jobs.get(waiting.id)
    first.wait(timeout=300)
    second.wait(timeout=300)
    assert (first.data["attempts"], second.data["attempts"]) == (3, 1)
    assert [m["step"] for m in first.metrics()] == list(range(1, 11))
    assert [m["step"] for m in second.metrics()] == [1, 2]
    log = first.logs()
    assert log.count("resumed from") == 2, log[-3000:]
    assert "server gone: stopping" in log

    # the event log: every start of a job is closed (recovered, re-queued, succeeded) before the
    # next start, and the waiting job started only after the other one had finished
    events = [(e["at"], first.id, e["event"]) for e in first.events()]
    events += [(e["at"], second.id, e["event"]) for e in second.events()]
    live: set[str] = set()
    for _, job_id, event in sorted(events):
        if event == "started":
            assert not live, f"{job_id} started while {live} ran"
            live.add(job_id)
        elif event in ("recovered", "queued", "succeeded", "failed", "cancelled") and job_id in live:
            live.discard(job_id)
    assert [e for _, j, e in sorted(events) if j == first.id].count("recovered") == 1
