"""The server's HTTP API on a real uvicorn server (loopback, ephemeral port), without training:
authentication on every route, body size caps, datasets, reward versions, job validation and
queue transitions. No worker runs here (max_concurrent_jobs=0), so queued jobs stay queued."""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

import openrft
from openrft.client import APIError, function_source
from openrft.server import ServerSettings, create_app
from openrft.server.auth import is_public
from openrft.server.background import serve_in_background

KEY = "test-key-123"
CAP = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("server-api")
    settings = ServerSettings(data_dir=data, api_key=KEY, max_concurrent_jobs=0, max_upload_bytes=CAP)
    with serve_in_background(settings) as url:
        yield url, data


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Iterator[openrft.Client]:
    with openrft.Client(server[0], KEY) as c:
        yield c


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "puzzles.jsonl"
    rows = [f'{{"nums": [{i}, {i + 1}, {i + 2}], "target": {i + 5}}}' for i in range(6)]
    path.write_text("\n".join(rows) + "\n")
    return path


# -- authentication -------------------------------------------------------------------------------


def _all_routes(routes: list[Any]) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, descending into included routers and mounts."""
    for r in routes:
        original = getattr(r, "original_router", None)
        if original is not None:
            yield from _all_routes(original.routes)
        elif getattr(r, "methods", None):
            yield r.path, set(r.methods)
        elif hasattr(r, "path"):  # a Mount (static files)
            yield r.path + "/app.js", {"GET"}


def test_every_route_needs_the_key(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    app = create_app(ServerSettings(data_dir=tmp_path, api_key=KEY, max_concurrent_jobs=0))
    routes = list(_all_routes(app.routes))
    private = [(p, m) for p, m in routes if not is_public(p)]
    assert len(private) >= 20, routes  # datasets, rewards, jobs, runs, adapters, models
    checked = 0
    with httpx.Client(base_url=url) as http:
        for path, methods in routes:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for method in sorted(methods - {"HEAD"}):
                bare = http.request(method, concrete)
                wrong = http.request(method, concrete, headers={"Authorization": "Bearer wrong-" + KEY})
                if is_public(path):
                    assert bare.status_code == 200, (method, path, bare.text[:200])
                    continue
                for resp in (bare, wrong):
                    assert resp.status_code == 401, (method, path, resp.status_code)
                    assert resp.json()["error"]["code"] == "invalid_api_key"
                    assert resp.headers["www-authenticate"] == "Bearer"
                checked += 1
        # unknown paths are not a way around it either
        assert http.get("/v1/nothing-here").status_code == 401
        assert http.get("/v1/jobs", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        assert http.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert checked == sum(len(m - {"HEAD"}) for _, m in private)


def test_public_routes_serve_docs_and_dashboard(server: tuple[str, Path]) -> None:
    url, _ = server
    with httpx.Client(base_url=url) as http:
        assert http.get("/health").json()["status"] == "ok"
        spec = http.get("/openapi.json").json()
        assert "/v1/jobs" in spec["paths"] and "/v1/datasets" in spec["paths"]
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        assert "plotly.min.js" in http.get("/").text
        js = http.get("/static/plotly.min.js")
        assert (
            js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
        )


def test_generated_key_is_saved_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENRFT_API_KEY", raising=False)
    first = create_app(ServerSettings(data_dir=tmp_path, max_concurrent_jobs=0))
    assert first.state.api_key_source == "generated"
    key_file = tmp_path / "api_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first.state.api_key
    again = create_app(ServerSettings(data_dir=tmp_path, max_concurrent_jobs=0))
    assert (again.state.api_key, again.state.api_key_source) == (first.state.api_key, "file")
    monkeypatch.setenv("OPENRFT_API_KEY", "from-env")
    env = create_app(ServerSettings(data_dir=tmp_path, max_concurrent_jobs=0))
    assert (env.state.api_key, env.state.api_key_source) == ("from-env", "environment")


# -- size caps ------------------------------------------------------------------------------------


def _raw_request(url: str, head: str) -> socket.socket:
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=10)
    sock.sendall(head.encode())
    return sock


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_upload_over_cap_is_refused_before_the_body_is_sent(server: tuple[str, Path]) -> None:
    url, data = server
    head = (
        "POST /v1/datasets?filename=big.jsonl HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {10 * 1024**3}\r\n\r\n"
    )
    t0 = time.monotonic()
    sock = _raw_request(url, head)  # 10 GiB announced, not one byte of it sent
    try:
        assert _read_status(sock) == 413
    finally:
        sock.close()
    assert time.monotonic() - t0 < 5
    assert list((data / "tmp").iterdir()) == []


def test_chunked_upload_is_cut_at_the_cap(server: tuple[str, Path]) -> None:
    url, data = server
    head = (
        "POST /v1/datasets?filename=big.jsonl HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock = _raw_request(url, head)
    line = b'{"prompt": "' + b"x" * 1000 + b'"}\n'
    chunk = b"%x\r\n" % len(line) + line + b"\r\n"
    sent = 0
    status = None
    sock.settimeout(0.01)
    try:
        for _ in range(10 * CAP // len(line)):  # up to 10x the cap; the server must stop us early
            try:
                sock.sendall(chunk)
                sent += len(line)
            except OSError:
                break
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except (TimeoutError, BlockingIOError):
                continue
        sock.settimeout(10)
        status = _read_status(sock)
    finally:
        sock.close()
    assert status == 413
    assert sent < 3 * CAP
    time.sleep(0.2)
    assert list((data / "tmp").iterdir()) == []


def test_json_body_cap_applies_to_other_routes(server: tuple[str, Path]) -> None:
    url, _ = server
    big = {"name": "huge", "source": "x = 1\n" * (2 * 1024**2)}
    r = httpx.post(f"{url}/v1/rewards", json=big, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413


# -- datasets -------------------------------------------------------------------------------------


def test_dataset_upload_is_content_addressed(client: openrft.Client, dataset_file: Path, server: Any) -> None:
    ds = client.datasets.upload(dataset_file)
    assert ds.num_rows == 6 and ds.columns == ["nums", "target"]
    assert ds.id == "ds-" + ds.sha256[:16]
    stored = server[1] / "datasets" / f"{ds.sha256}.jsonl"
    assert stored.read_bytes() == dataset_file.read_bytes()
    again = client.datasets.upload(dataset_file, name="copy.jsonl")
    assert again.id == ds.id and again.name == "copy.jsonl"
    assert [d.id for d in client.datasets.list()].count(ds.id) == 1
    rows = client.datasets.preview(ds, limit=2)
    assert rows == [{"nums": [0, 1, 2], "target": 5}, {"nums": [1, 2, 3], "target": 6}]


def test_bad_dataset_names_file_and_line(client: openrft.Client, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(APIError) as err:
        client.datasets.upload(bad)
    assert err.value.status == 422
    assert err.value.message.startswith("broken.jsonl:2")
    wrong = tmp_path / "rows.txt"
    wrong.write_text("hello")
    with pytest.raises(APIError, match=re.escape("unsupported file extension '.txt'")):
        client.datasets.upload(wrong)


def test_dataset_delete(client: openrft.Client, tmp_path: Path) -> None:
    path = tmp_path / "gone.csv"
    path.write_text("prompt\nhello\n")
    ds = client.datasets.upload(path)
    client.datasets.delete(ds)
    with pytest.raises(APIError) as err:
        client.datasets.get(ds.id)
    assert err.value.status == 404


# -- reward functions -----------------------------------------------------------------------------

PATTERN = r"<answer>(.*?)</answer>"


def answer_reward(prompt: str, completion: str, example: dict) -> float:
    found = re.search(PATTERN, completion)
    return 1.0 if found and found.group(1).strip() == str(example["target"]) else 0.0


def test_function_source_ships_imports_and_constants() -> None:
    source, name = function_source(answer_reward)
    assert name == "answer_reward"
    assert "import re" in source and f"PATTERN = {PATTERN!r}" in source
    namespace: dict[str, Any] = {}
    exec(compile(source, "<shipped>", "exec"), namespace)
    assert namespace["answer_reward"]("", "<answer>7</answer>", {"target": 7}) == 1.0
    with pytest.raises(ValueError, match="lambda"):
        function_source(lambda p, c, e: 1.0)


def test_reward_versions_and_golden_tests(client: openrft.Client) -> None:
    tests = [
        {"completion": "<answer>5</answer>", "example": {"target": 5}, "expected": 1.0},
        {"completion": "no", "example": {"target": 5}, "expected": 0.0},
    ]
    v1 = client.rewards.create("answer", answer_reward, tests=tests)
    assert (v1.version, v1.function, v1.ref) == (1, "answer_reward", "reward:answer@1")
    same = client.rewards.create("answer", answer_reward, tests=tests)
    assert same.version == 1
    v2 = client.rewards.create("answer", "def answer_reward(prompt, completion, example):\n    return 0.5\n")
    assert v2.version == 2
    assert [v.version for v in client.rewards.versions("answer")] == [1, 2]
    assert "re.search" in client.rewards.source("answer", 1)
    assert client.rewards.test("answer", version=1)["passed"] is True
    failed = client.rewards.test("answer", cases=[{"completion": "x", "expected": 1.0}])
    assert failed["passed"] is False and failed["failures"][0]["got"] == 0.5


def test_bad_reward_sources_are_refused(client: openrft.Client) -> None:
    with pytest.raises(APIError, match=r"reward 'bad':2:\d+: syntax error"):
        client.rewards.create("bad", "def f(prompt, completion, example):\n    return (\n")
    with pytest.raises(APIError, match="golden tests failed"):
        client.rewards.create(
            "wrong",
            "def f(prompt, completion, example):\n    return 0.0\n",
            tests=[{"completion": "", "expected": 1}],
        )
    with pytest.raises(APIError, match="no top-level function 'g'"):
        client.rewards.create("named", "def f(prompt, completion, example):\n    return 0.0\n", function="g")
    assert "wrong" not in [r.name for r in client.rewards.list()]


# -- jobs: validation and queue transitions ---------------------------------------------------------


def _config(ds_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": {"name": "tiny-random-llama", "dtype": "float32"},
        "data": {"train": ds_id, "prompt_template": "Use {nums} to make {target}"},
        "rewards": [{"name": "eq", "function": "countdown.equation"}],
        "max_steps": 2,
        **extra,
    }


def test_job_config_is_validated_before_queueing(client: openrft.Client, dataset_file: Path) -> None:
    ds = client.datasets.upload(dataset_file)
    cases = [
        ({**_config(ds.id), "data": {"train": "ds-missing"}}, "is not an uploaded dataset"),
        ({**_config(ds.id), "max_step": 3}, "unknown key 'max_step'; did you mean 'max_steps'"),
        (
            {**_config(ds.id), "rewards": [{"name": "x", "function": "/etc/rewards.py:f"}]},
            "register the code with POST /v1/rewards",
        ),
        (
            {**_config(ds.id), "rewards": [{"name": "x", "function": "reward:nope"}]},
            "no such registered reward",
        ),
        (
            {**_config(ds.id), "data": {"train": ds.id, "prompt_template": "{missing}"}},
            "missing",
        ),
    ]
    before = len(client.jobs.list())
    for config, message in cases:
        with pytest.raises(APIError, match=re.escape(message)) as err:
            client.jobs.create(config)
        assert err.value.status == 422
    assert len(client.jobs.list()) == before


def test_queued_job_pause_resume_cancel(client: openrft.Client, dataset_file: Path) -> None:
    ds = client.datasets.upload(dataset_file)
    client.rewards.create("answer", answer_reward)
    job = client.finetune(
        base_model="tiny-random-llama",
        dataset=ds,
        reward_functions={"answer": "reward:answer@1", "eq": "countdown.equation"},
        data={"prompt_template": "Use {nums} to make {target}"},
        max_steps=2,
        name="queued-only",
    )
    assert job.status == "queued" and job.data["name"] == "queued-only"
    config = job.refresh().data["config"]
    assert config["rewards"][0]["function"].endswith("rewards/answer/v1.py:answer_reward")
    assert config["output_dir"].endswith(f"runs/{job.id}")
    assert job.pause().status == "paused"
    assert job.resume().status == "queued"
    assert job.cancel().status == "cancelled"
    with pytest.raises(APIError) as err:
        job.resume()
    assert err.value.status == 409
    events = [e["event"] for e in job.events()]
    assert events == ["queued", "paused", "resumed", "cancelled"]
    with pytest.raises(APIError) as err:
        client.jobs.get("job-doesnotexist")
    assert err.value.status == 404


def test_dataset_in_use_cannot_be_deleted(client: openrft.Client, tmp_path: Path) -> None:
    path = tmp_path / "used.jsonl"
    path.write_text('{"nums": [1, 2, 3], "target": 6}\n')
    ds = client.datasets.upload(path)
    job = client.jobs.create(_config(ds.id))
    with pytest.raises(APIError) as err:
        client.datasets.delete(ds)
    assert err.value.status == 409
    job.cancel()
    client.datasets.delete(ds)


def test_client_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENRFT_API_KEY", raising=False)
    with pytest.raises(ValueError, match="no API key"):
        openrft.Client("http://127.0.0.1:9")
    assert os.environ.get("OPENRFT_API_KEY") is None


def test_submit_a_local_yaml_config(client: openrft.Client, dataset_file: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_bytes(dataset_file.read_bytes())
    (tmp_path / "my_rewards.py").write_text("def close(prompt, completion, example):\n    return 0.25\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {name: tiny-random-llama}\n"
        "data: {train: data/rows.jsonl, prompt_template: 'Use {nums} for {target}'}\n"
        "rewards:\n"
        "  - {name: close, function: my_rewards.py:close, weight: 0.5}\n"
        "  - {name: eq, function: countdown.equation}\n"
        "max_steps: 3\n"
        "output_dir: runs/local\n"
    )
    job = client.jobs.submit(config, overrides=["max_steps=5"])
    config_seen = job.refresh().data["config"]
    assert job.data["name"] == "run" and config_seen["max_steps"] == 5
    assert job.data["dataset_id"] == client.datasets.upload(dataset_file).id
    assert config_seen["rewards"][0]["function"].endswith("rewards/close/v1.py:close")
    assert config_seen["rewards"][0]["weight"] == 0.5
    assert client.rewards.source("close", 1).startswith("def close")
    job.cancel()
