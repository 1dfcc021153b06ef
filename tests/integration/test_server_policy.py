"""The server decides what tenants' reward specs may ask for (secrets, network, URLs), and a job's
training process starts with a scrubbed environment. In-process (TestClient); one test starts a
real training process to read its environment, then cancels it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openrft.jobs.worker import job_environment
from openrft.rewards import jail
from openrft.rewards.pool import ISOLATION_ENV
from openrft.rewards.url_guard import POLICY_ENV, NetworkPolicy
from openrft.server import ServerSettings, create_app
from openrft.server.policy import RewardPolicy, RewardPolicyError, url_kwargs

KEY = "policy-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROWS = "\n".join(f'{{"nums": [{i}, {i + 1}], "target": {2 * i + 1}}}' for i in range(4)) + "\n"


def _client(tmp_path: Path, **settings: Any) -> TestClient:
    app = create_app(ServerSettings(data_dir=tmp_path, api_key=KEY, max_concurrent_jobs=0, **settings))
    return TestClient(app, headers=AUTH)


def _dataset(http: TestClient) -> str:
    reply = http.post("/v1/datasets?filename=rows.jsonl", content=ROWS.encode())
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _job(http: TestClient, ds: str, *rewards: dict[str, Any], **extra: Any) -> Any:
    config = {
        "model": {"name": "tiny-random-llama", "dtype": "float32", "threads": 1},
        "data": {"train": ds, "prompt_template": "Use {nums} to make {target}."},
        "rewards": list(rewards),
        "max_steps": 1,
        **extra,
    }
    return http.post("/v1/jobs", json={"config": config})


def _judge(url: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "name": "judge",
        "function": "llm_judge",
        "kwargs": {"rubric": "10 if right", "url": url, "model": "m", **kwargs},
    }


def _remote(url: str) -> dict[str, Any]:
    return {"name": "grader", "function": "remote", "kwargs": {"url": url}}


FORMAT = {"name": "fmt", "function": "countdown.format"}


@pytest.fixture
def closed(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A server whose operator allowed nothing (the default)."""
    with _client(tmp_path / "closed") as http:
        yield http, _dataset(http)


@pytest.fixture
def public_only(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A server that lets rewards reach any public host ('*'), and nothing else."""
    with _client(tmp_path / "public", allow_reward_hosts=["*"]) as http:
        yield http, _dataset(http)


def _refused(reply: Any, *needles: str) -> str:
    assert reply.status_code == 422, reply.text
    message = reply.json()["error"]["message"]
    assert reply.json()["error"]["code"] == "RewardPolicyError", message
    for needle in needles:
        assert needle in message, message
    return message


def test_a_secret_env_variable_the_operator_did_not_allow_is_refused_with_the_field_named(
    closed: tuple[TestClient, str],
) -> None:
    http, ds = closed
    reply = _job(http, ds, FORMAT, {**FORMAT, "name": "leak", "env": ["AWS_SECRET_ACCESS_KEY"]})
    assert _refused(reply) == (
        "rewards[1].env: AWS_SECRET_ACCESS_KEY is not allowed by this server; the operator can allow it "
        "with --allow-reward-env AWS_SECRET_ACCESS_KEY"
    )
    assert http.get("/v1/jobs").json()["data"] == []  # nothing was queued


def test_a_judges_api_key_variable_must_be_allowed_too(public_only: tuple[TestClient, str]) -> None:
    http, ds = public_only
    reply = _job(http, ds, _judge("https://api.example.com/v1", api_key_env="OPENAI_API_KEY"))
    _refused(reply, "rewards[0].kwargs.api_key_env: OPENAI_API_KEY is not allowed")


def test_network_access_is_refused_when_no_host_is_allowed(closed: tuple[TestClient, str]) -> None:
    http, ds = closed
    _refused(
        _job(http, ds, {**FORMAT, "allow_network": True}), "rewards[0].allow_network", "--allow-reward-host"
    )
    message = _refused(_job(http, ds, _remote("https://grader.example.com/")), "rewards[0].allow_network")
    assert "remote calls an HTTP endpoint" in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8000/v1", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://10.0.0.8/v1", "private"),
        ("http://192.168.1.10/v1", "private"),
        ("http://100.100.100.200/", "metadata"),
        ("http://localhost:8000/v1", "'localhost' resolves to"),
        ("http://[::ffff:127.0.0.1]:8000/v1", "loopback"),
        ("http://[::1]:8000/v1", "loopback"),
        ("http://2130706433/v1", "loopback"),
        ("http://0x7f.1/v1", "loopback"),
        ("http://0.0.0.0:8000/v1", "unspecified"),
    ],
)
def test_urls_to_the_server_itself_metadata_or_private_networks_are_refused(
    public_only: tuple[TestClient, str], url: str, why: str
) -> None:
    http, ds = public_only
    _refused(_job(http, ds, _judge(url)), "rewards[0].kwargs.url", why, "--allow-reward-host")
    _refused(_job(http, ds, _remote(url)), "rewards[0].kwargs.url", why)


def test_an_octal_ip_that_the_http_client_cannot_parse_is_refused_as_invalid(
    public_only: tuple[TestClient, str],
) -> None:
    http, ds = public_only
    _refused(_job(http, ds, _remote("http://0177.0.0.1/v1")), "rewards[0].kwargs.url", "is not a valid URL")


def test_a_host_off_the_list_and_a_non_http_url_are_refused(tmp_path: Path) -> None:
    with _client(tmp_path, allow_reward_hosts=["judge.example.com"]) as http:
        ds = _dataset(http)
        _refused(
            _job(http, ds, _remote("https://elsewhere.example.org/grade")),
            "rewards[0].kwargs.url",
            "'elsewhere.example.org' is not allowed by this server",
            "--allow-reward-host elsewhere.example.org",
        )
        _refused(_job(http, ds, _judge("ftp://judge.example.com/v1")), "rewards[0].kwargs.url", "http://")


def test_the_operators_allow_lists_admit_exactly_what_they_name(tmp_path: Path) -> None:
    settings = {
        "allow_reward_env": ["JUDGE_KEY", "GRADER_TOKEN"],
        "allow_reward_hosts": ["judge.example.com", "10.20.0.0/16", "127.0.0.1"],
    }
    with _client(tmp_path, **settings) as http:
        ds = _dataset(http)
        accepted = _job(
            http,
            ds,
            _judge("http://judge.example.com/v1", api_key_env="JUDGE_KEY"),
            {
                **_remote("http://10.20.3.4:9000/grade"),
                "kwargs": {"url": "http://10.20.3.4:9000/grade", "auth_env": "GRADER_TOKEN"},
            },
            {**FORMAT, "env": ["JUDGE_KEY"]},
            {**_remote("http://127.0.0.1:7000/"), "name": "local"},
        )
        assert accepted.status_code == 201, accepted.text
        _refused(_job(http, ds, _remote("http://10.21.0.1/")), "rewards[0].kwargs.url", "is not allowed")
        _refused(_job(http, ds, {**FORMAT, "env": ["AWS_SECRET_ACCESS_KEY"]}), "rewards[0].env")


def test_golden_test_kwargs_of_a_registered_reward_obey_the_policy(closed: tuple[TestClient, str]) -> None:
    http, _ = closed
    source = "def score(prompt, completion, example, url=''):\n    return 1.0\n"
    assert http.post("/v1/rewards", json={"name": "r", "source": source}).status_code == 201
    case = {"completion": "x", "expected": 1.0}
    ok = http.post("/v1/rewards/r/test", json={"cases": [case], "kwargs": {"url": "unused"}})
    assert ok.status_code == 422 and "kwargs.url" in ok.json()["error"]["message"]
    meta = http.post(
        "/v1/rewards/r/test", json={"cases": [case], "kwargs": {"url": "http://169.254.169.254/"}}
    )
    _refused(meta, "kwargs.url", "169.254.169.254")


def test_url_kwargs_are_found_by_name() -> None:
    kwargs = {
        "url": "a",
        "base_url": "b",
        "urls": ["c", "d"],
        "pattern": "http://x",
        "endpoint": "e",
        "api_url": None,
    }
    assert url_kwargs(kwargs) == [
        ("url", "a"),
        ("base_url", "b"),
        ("urls[0]", "c"),
        ("urls[1]", "d"),
        ("endpoint", "e"),
    ]


def test_the_policy_object_refuses_without_a_server() -> None:
    from openrft.rewards.spec import RewardSpec

    with pytest.raises(RewardPolicyError, match=r"^allow_network"):
        RewardPolicy().check_spec(
            RewardSpec(name="x", function="regex", kwargs={"pattern": "a"}, allow_network=True)
        )
    RewardPolicy(allow_hosts=("*",)).check_spec(RewardSpec(name="x", function="regex", allow_network=True))


def test_the_server_settings_refuse_a_malformed_host_or_the_api_key_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no URL"):
        ServerSettings(data_dir=tmp_path, allow_reward_hosts=["http://judge.example.com:8000"])
    with pytest.raises(ValueError, match="OPENRFT_API_KEY"):
        ServerSettings(data_dir=tmp_path, allow_reward_env=["OPENRFT_API_KEY"])


# -- the training process's environment --------------------------------------------------------------


def test_job_environment_keeps_only_what_the_engine_and_the_operator_name() -> None:
    server = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "OPENRFT_HOME": "/cache",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "OPENRFT_API_KEY": "server-key",
        "DATABASE_URL": "postgres://secret",
        "JUDGE_KEY": "judge",
        POLICY_ENV: json.dumps({"allow_hosts": ["*", "127.0.0.1"]}),
        ISOLATION_ENV: "hooks",
    }
    job_env = {"EXTRA": "1", POLICY_ENV: "{}", "OPENRFT_API_KEY": "again", ISOLATION_ENV: "hooks"}
    network = NetworkPolicy(("api.example.com",))
    env = job_environment(server, job_env, ["JUDGE_KEY", "NOT_SET"], network, reward_isolation="sandbox")
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "OPENRFT_HOME": "/cache",
        "JUDGE_KEY": "judge",
        "EXTRA": "1",
        "PYTHONUNBUFFERED": "1",
        POLICY_ENV: NetworkPolicy(("api.example.com",)).to_env(),
        ISOLATION_ENV: "sandbox",
    }


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_a_jobs_training_process_never_sees_the_servers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("OPENRFT_API_KEY", "the-servers-key")
    monkeypatch.setenv("JUDGE_KEY", "judge-secret")
    monkeypatch.setenv(POLICY_ENV, json.dumps({"allow_hosts": ["*", "127.0.0.0/8"]}))
    monkeypatch.setenv(ISOLATION_ENV, "hooks")  # the server's own setting never reaches its jobs
    settings = ServerSettings(
        data_dir=tmp_path,
        api_key=KEY,
        max_concurrent_jobs=1,
        poll_interval_s=0.05,
        cancel_grace_s=1,
        job_env={"OPERATOR_SETTING": "on"},
        allow_reward_env=["JUDGE_KEY"],
        allow_reward_hosts=["judge.example.com"],
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as http:
        reply = _job(http, _dataset(http), {**FORMAT, "env": ["JUDGE_KEY"]})
        assert reply.status_code == 201, reply.text
        job_id = reply.json()["id"]
        store = app.state.ctx.store
        deadline = time.monotonic() + 30
        while not (pid := (store.get_job(job_id) or {}).get("pid")):
            assert time.monotonic() < deadline, store.get_job(job_id)
            time.sleep(0.02)
        env = _environ(pid)
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert "AWS_SECRET_ACCESS_KEY" not in env and "OPENRFT_API_KEY" not in env
    assert env["JUDGE_KEY"] == "judge-secret" and env["OPERATOR_SETTING"] == "on"
    assert env["OPENRFT_HOME"] == os.environ["OPENRFT_HOME"] and env["PATH"] == os.environ["PATH"]
    assert NetworkPolicy.from_env(env) == NetworkPolicy(("judge.example.com",))
    assert env[ISOLATION_ENV] == ("sandbox" if jail.available() is None else "auto")
    assert set(env) - {"JUDGE_KEY", "OPERATOR_SETTING", "PYTHONUNBUFFERED", POLICY_ENV} <= set(os.environ)


def test_golden_tests_run_by_the_server_cannot_reach_a_unix_socket(
    closed: tuple[TestClient, str], tmp_path: Path
) -> None:
    """Golden tests run in the server's own reward workers; they get the server's policy too."""
    import socket

    path = str(tmp_path / "daemon.sock")
    with socket.socket(socket.AF_UNIX) as daemon:
        daemon.bind(path)
        daemon.listen(1)
        source = (
            "import socket\n\n"
            "def score(prompt, completion, example):\n"
            "    with socket.socket(socket.AF_UNIX) as s:\n"
            f"        s.connect({path!r})\n"
            "    return 1.0\n"
        )
        http, _ = closed
        reply = http.post(
            "/v1/rewards",
            json={"name": "sock", "source": source, "tests": [{"completion": "x", "expected": 1.0}]},
        )
    assert reply.status_code == 422 and "Unix sockets" in reply.json()["error"]["message"], reply.text


def test_the_server_command_refuses_a_url_as_an_allowed_host(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from openrft.cli.main import app as cli

    args = ["server", "--data-dir", str(tmp_path), "--allow-reward-env", "JUDGE_KEY"]
    result = CliRunner().invoke(cli, [*args, "--allow-reward-host", "http://judge.example.com/v1"])
    assert result.exit_code == 2 and "no URL, no port" in result.output, result.output
