"""Tenants' reward code on the server: it runs in the sandbox or not at all.

- A reward submitted through the SDK that tries every escape (the data dir, the API key file,
  /etc/shadow, other processes' environments, unmounting /proc, libc.system, the server's port,
  writing outside) gets nowhere, and its job still succeeds.
- Where the sandbox is unavailable, the server refuses submitted code (403, saying why) unless
  the operator passed --trust-reward-code; built-in rewards still train.
- `auto` isolation on a user's own machine without the sandbox warns once and goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import openrft
from openrft.errors import RewardError
from openrft.rewards import RewardSet, jail, pool
from openrft.server import ServerSettings
from openrft.server.app import create_app
from openrft.server.background import serve_in_background

KEY = "sandbox-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SANDBOX = jail.available()

HOSTILE = r'''
import ctypes, os, socket

DATA_DIR = {data_dir!r}
OUTSIDE = {outside!r}
PORT = {port}


def escapes(prompt, completion, example):
    """How many of these attempts worked (each one is a way out of the sandbox)."""
    libc = ctypes.CDLL(None, use_errno=True)
    worked = 0
    for path in (DATA_DIR + "/api_key", DATA_DIR + "/openrft.db", "/etc/shadow"):
        try:
            open(path, "rb").read(1)
            worked += 1
        except OSError:
            pass
    for pid in os.listdir("/proc"):
        try:
            worked += b"AWS_SECRET_ACCESS_KEY" in open(f"/proc/{{pid}}/environ", "rb").read()
        except OSError:
            pass
    worked += libc.umount2(b"/proc", 2) == 0
    worked += libc.system(("echo pwned > " + OUTSIDE + "/system").encode()) == 0
    fd = libc.socket(2, 1, 0)
    addr = bytes([2, 0, PORT >> 8, PORT & 255, 127, 0, 0, 1]) + bytes(8)
    worked += fd >= 0 and libc.connect(fd, addr, 16) == 0
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
        worked += 1
    except OSError:
        pass
    try:
        open(OUTSIDE + "/written", "w").write("pwned")
        worked += 1
    except OSError:
        pass
    return float(worked)
'''


@pytest.mark.skipif(SANDBOX is not None, reason=f"the bubblewrap sandbox is not available here: {SANDBOX}")
def test_a_hostile_reward_submitted_through_the_sdk_escapes_nothing_and_its_job_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")  # in the server's environment
    data, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)  # open to anyone on the host: only the sandbox keeps the reward out
    settings = ServerSettings(data_dir=data, api_key=KEY, poll_interval_s=0.1)
    with serve_in_background(settings) as url, openrft.Client(url, KEY) as client:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        rows = tmp_path / "rows.jsonl"
        rows.write_text("".join(f'{{"n": {i}}}\n' for i in range(4)))
        source = HOSTILE.format(data_dir=str(data.resolve()), outside=str(outside), port=port)
        job = client.finetune(
            base_model="tiny-random-llama",
            dataset=client.datasets.upload(rows),
            reward_functions={"escapes": source},
            model={"dtype": "float32", "threads": 1},
            data={"prompt_template": "Count to {n}."},
            grpo={"num_generations": 2, "prompts_per_step": 2, "max_new_tokens": 4},
            max_steps=2,
        )
        deadline = time.monotonic() + 240
        while (status := client.jobs.get(job.id).status) not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status == "succeeded", client.jobs.get(job.id).error
        run_dir = next((data / "runs").glob(f"{job.id}*"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["rewards/escapes/mean"] == 0.0 and m["rewards/escapes/errors"] == 0 for m in metrics)
    assert sorted(os.listdir(outside)) == []
    assert Path("/proc/self").exists()  # this machine's /proc is still there


@pytest.fixture
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> str:
    """As on a machine without bubblewrap (the probe's answer, for this test only)."""
    why = "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    monkeypatch.setattr(jail, "_probe", {False: why, True: why})
    monkeypatch.setattr(pool, "_warned", set())  # the warning is said once per process and reason
    return why


def _app(data: Path, trust: bool = False) -> TestClient:
    settings = ServerSettings(data_dir=data, api_key=KEY, max_concurrent_jobs=0, trust_reward_code=trust)
    return TestClient(create_app(settings), headers=AUTH)


REWARD = "def mine(prompt, completion, example):\n    return 1.0\n"


def _job_config(ds_id: str, function: str) -> dict:
    return {
        "model": {"name": "tiny-random-llama"},
        "data": {"train": ds_id, "prompt_template": "Count to {n}."},
        "rewards": [{"name": "r", "function": function}],
        "max_steps": 1,
    }


def test_submitted_code_is_refused_without_the_sandbox_unless_the_operator_trusts_it(
    tmp_path: Path, no_sandbox: str, tiny_model_dir: Path
) -> None:
    with _app(tmp_path, trust=True) as http:  # an operator who trusts their tenants
        created = http.post("/v1/rewards", json={"name": "mine", "source": REWARD})
        assert created.status_code == 201, created.text
        ds = http.post("/v1/datasets?filename=rows.jsonl", content=b'{"n": 1}\n{"n": 2}\n').json()["id"]
    with _app(tmp_path) as http:
        refused = http.post("/v1/rewards", json={"name": "other", "source": REWARD})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "reward_code_refused"
        assert "bubblewrap is not installed" in error["message"] and "--trust-reward-code" in error["message"]
        job = http.post("/v1/jobs", json={"config": _job_config(ds, "reward:mine")})
        assert job.status_code == 403 and "rewards[0].function" in job.json()["error"]["message"]
        tests = http.post("/v1/rewards/mine/test", json={"cases": [{"completion": "x", "expected": 1.0}]})
        assert tests.status_code == 403
        builtin = http.post("/v1/jobs", json={"config": _job_config(ds, "countdown.format")})
        assert builtin.status_code == 201, builtin.text  # our own graders still train


def test_auto_isolation_without_the_sandbox_warns_once_and_runs_with_the_weaker_isolation(
    tmp_path: Path, no_sandbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "r.py").write_text(REWARD)
    caplog.set_level(logging.WARNING, logger="openrft.rewards")
    for _ in range(2):
        with RewardSet(
            [{"name": "r", "function": "r.py:mine"}], tmp_path, pool_size=1, isolation="auto"
        ) as rs:
            assert rs.score(["p"], ["c"], [{}]).column("r") == [1.0]
            assert rs.isolation()[0]["mode"] in ("namespaces", "hooks")
    warnings = [r.getMessage() for r in caplog.records if "reward sandbox unavailable" in r.getMessage()]
    assert len(warnings) == 1 and no_sandbox in warnings[0]


def test_sandbox_isolation_is_required_when_asked_for(tmp_path: Path, no_sandbox: str) -> None:
    (tmp_path / "r.py").write_text(REWARD)
    with pytest.raises(RewardError, match="sandbox required but unavailable: bubblewrap"):
        RewardSet([{"name": "r", "function": "r.py:mine"}], tmp_path, pool_size=1, isolation="sandbox")


@pytest.mark.skipif(SANDBOX is not None, reason=f"the bubblewrap sandbox is not available here: {SANDBOX}")
def test_golden_tests_at_registration_run_in_the_sandbox_away_from_the_servers_key(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, max_concurrent_jobs=0)  # key generated into the data dir
    app = create_app(settings)
    key_file = tmp_path.resolve() / "api_key"
    assert key_file.is_file()
    source = (
        "def peek(prompt, completion, example):\n"
        f"    try:\n        open({str(key_file)!r}).read()\n        return 1.0\n"
        "    except OSError:\n        return 0.0\n"
    )
    case = {"completion": "x", "expected": 0.0}  # passes only if the key file cannot be read
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.api_key}"}) as http:
        created = http.post("/v1/rewards", json={"name": "peek", "source": source, "tests": [case]})
        assert created.status_code == 201, created.text
        tested = http.post("/v1/rewards/peek/test", json={"cases": [case]})
        assert tested.status_code == 200 and tested.json()["passed"], tested.text
