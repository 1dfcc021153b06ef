"""Malformed and hostile requests from a client holding the API key: each is answered 4xx with a
one-line JSON error (never a 500 or a dropped connection), no response shows the data dir's
absolute path, a job config cannot make the server read or probe files outside what the operator
allowed, and uploads racing deletes of the same bytes leave every dataset row with its file.

Most cases use the in-process TestClient; the header limit (enforced partly by uvicorn's parser)
and the upload/delete race run against a real uvicorn on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from openrft.jobs import queue
from openrft.server import ServerSettings, create_app
from openrft.server.background import serve_in_background
from openrft.server.limits import MAX_HEADER_BYTES
from openrft.server.store import Store

KEY = "malformed-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROWS = b'{"nums": [1, 2, 3], "target": 6}\n{"nums": [2, 3, 4], "target": 9}\n'
DEEP = "[" * 200_000 + "]" * 200_000
REWARD = "def close(prompt, completion, example):\n    return 0.5\n"


@pytest.fixture(scope="module")
def allowed_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """An operator's model folder holding the tiny model, a link to it and a link out."""
    folder = tmp_path_factory.mktemp("allowed-models")
    shutil.copytree(tiny_model_dir, folder / "tiny")
    (folder / "linked").symlink_to(tiny_model_dir, target_is_directory=True)
    (folder / "escape").symlink_to("/etc", target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def app_data(
    tmp_path_factory: pytest.TempPathFactory, allowed_models: Path
) -> Iterator[tuple[TestClient, Path]]:
    data = tmp_path_factory.mktemp("malformed-data")
    settings = ServerSettings(
        data_dir=data, api_key=KEY, max_concurrent_jobs=0, allowed_model_dirs=[allowed_models]
    )
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=AUTH) as client:
        yield client, data


@pytest.fixture(scope="module")
def dataset_id(app_data: tuple[TestClient, Path]) -> str:
    client, _ = app_data
    r = client.post("/v1/datasets", params={"filename": "rows.jsonl"}, content=ROWS)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _config(ds: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": {"name": "tiny-random-llama", "dtype": "float32"},
        "data": {"train": ds, "prompt_template": "Use {nums} to make {target}"},
        "rewards": [{"name": "eq", "function": "countdown.equation"}],
        "max_steps": 2,
        **extra,
    }


def _assert_4xx(r: httpx.Response, *words: str) -> str:
    assert 400 <= r.status_code < 500, (
        r.request.method,
        str(r.request.url)[:200],
        r.status_code,
        r.text[:300],
    )
    message = r.json()["error"]["message"]
    assert "\n" not in message and "Traceback" not in r.text
    for word in words:
        assert word in message, message
    return str(message)


def _corpus(client: TestClient, ds: str) -> list[tuple[httpx.Response, tuple[str, ...]]]:
    """(response, words its message must contain) for each malformed request."""
    deep_row = ('{"a": ' + DEEP + "}\n").encode()
    huge = str(10**30)

    def upload(filename: str, content: bytes = ROWS) -> httpx.Response:
        return client.post("/v1/datasets", params={"filename": filename}, content=content)

    def job_with_reward(function: str) -> httpx.Response:
        return client.post("/v1/jobs", json={"config": _config(ds, rewards=[_ref(function)])})

    return [
        (upload("a\x00b.jsonl"), ("?filename",)),
        (upload("x" * 300 + ".jsonl"), ("?filename",)),
        (upload("deep.jsonl", deep_row), ("deep.jsonl:1",)),
        (upload("deep.json", b"[" + deep_row + b"]"), ()),
        (client.get(f"/v1/jobs/{ds}/logs", params={"offset": "1e20"}), ("offset",)),
        (client.get("/v1/jobs/job-x/logs", params={"offset": str(10**20)}), ("offset",)),
        (client.get("/v1/jobs/job-x/logs", params={"limit": "-1"}), ("limit",)),
        (client.get("/v1/jobs", params={"limit": str(10**20)}), ("limit",)),
        (client.get("/v1/jobs", params={"limit": "-5"}), ("limit",)),
        (client.get("/v1/runs", params={"limit": "1e20"}), ("limit",)),
        (client.get(f"/v1/datasets/{ds}/preview", params={"limit": str(10**20)}), ("limit",)),
        (client.get("/v1/runs/job-x/metrics", params={"since": str(-(10**30))}), ("since",)),
        (client.get("/v1/rewards/close/versions/1e30"), ("version",)),
        (client.get(f"/v1/rewards/close/versions/{huge}"), ("not found",)),
        (client.get(f"/v1/rewards/close/versions/{'9' * 5000}"), ()),
        (client.post("/v1/rewards/close/test", json={"version": 10**30}), ("not found",)),
        (client.post("/v1/rewards", json={"name": "close\n", "source": REWARD}), ("reward name",)),
        (client.post("/v1/rewards", json={"name": "a/../b", "source": REWARD}), ("reward name",)),
        (job_with_reward("reward:close@1e30"), ("reward",)),
        (job_with_reward(f"reward:close@{huge}"), ("no such registered reward",)),
        (job_with_reward("reward:close\nx"), ("reward",)),
        (job_with_reward("reward:close@" + "9" * 5000), ("no such registered reward",)),
        (_post_raw(client, "/v1/jobs", '{"config": ' + DEEP + "}"), ()),
        (client.post("/v1/jobs", json={"config": _config(ds, seed=_nested(900))}), ("nested",)),
        (client.post("/v1/rewards", json={"name": "deep", "source": REWARD, "tests": [_nested(900)]}), ()),
        (client.post("/v1/rewards/close/test", json={"kwargs": {"k": _nested(900)}}), ()),
        (client.get("/v1/no/such/route"), ()),
        (client.get("/v1/jobs", headers={"X-Padding": "p" * (MAX_HEADER_BYTES + 1)}), ("headers",)),
    ]


def _ref(function: str) -> dict[str, str]:
    return {"name": "r", "function": function}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


def _post_raw(client: TestClient, path: str, body: str) -> httpx.Response:
    return client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


def test_every_malformed_request_gets_a_one_line_4xx(
    app_data: tuple[TestClient, Path], dataset_id: str
) -> None:
    client, data = app_data
    assert client.post("/v1/rewards", json={"name": "close", "source": REWARD}).status_code == 201
    for response, words in _corpus(client, dataset_id):
        _assert_4xx(response, *words)
        assert str(data) not in response.text
    assert client.get("/v1/jobs").json()["data"] == []  # nothing was queued
    assert not any((data / "rewards").glob("close?*"))  # no 'close\n' folder


def _job_config(client: TestClient, ds: str, **extra: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"config": _config(ds, **extra)})


def test_model_name_must_be_known_or_under_an_allowed_dir_without_saying_what_exists(
    app_data: tuple[TestClient, Path], dataset_id: str, allowed_models: Path
) -> None:
    client, data = app_data
    messages = {}
    probes = ["/etc", "/no/such/dir", "HuggingFaceTB/x", "../x"]
    probes += [str(allowed_models / "escape"), str(allowed_models / "linked")]  # links leading out
    for probe in probes:
        message = _assert_4xx(_job_config(client, dataset_id, model={"name": probe}), "model.name")
        messages[probe] = message.replace(repr(probe), "NAME")
    assert len(set(messages.values())) == 1, messages  # existing and missing paths read the same
    in_data = _job_config(client, dataset_id, model={"name": str(data / "runs")})
    assert str(data) not in _assert_4xx(in_data, "model.name = 'runs' is not a model this server offers")
    stage = {"name": "s", "method": "grpo", "overrides": {"model.name": "/etc"}}
    _assert_4xx(_job_config(client, dataset_id, stages=[stage]), "stages[0].overrides: model.name")
    judge = {"name": "j", "function": "llm_judge", "kwargs": {"rubric": "r", "local_model": "/etc"}}
    _assert_4xx(_job_config(client, dataset_id, rewards=[judge]), "rewards[0].kwargs.local_model")

    ok = _job_config(client, dataset_id, model={"name": str(allowed_models / "tiny"), "dtype": "float32"})
    assert ok.status_code == 201, ok.text
    job = client.get(f"/v1/jobs/{ok.json()['id']}").json()
    assert job["config"]["model"]["name"] == str((allowed_models / "tiny").resolve())
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_other_path_fields_of_a_job_config_cannot_reach_server_files(
    app_data: tuple[TestClient, Path], dataset_id: str
) -> None:
    client, data = app_data

    def stage(method: str, **overrides: Any) -> dict[str, Any]:
        return {"stages": [{"name": "s", "method": method, "overrides": overrides}]}

    cases = [
        ({"data": {"train": "/etc/passwd"}}, "data.train"),
        ({"data": {"train": dataset_id, "eval": str(data / "api_key")}}, "data.eval"),
        ({"lora": {"init_adapter": "/etc"}}, "lora.init_adapter"),
        ({"sft": {"completion_fn": "/etc/x.py:f"}}, "sft.completion_fn"),
        ({"rewards": [_ref("/etc/x.py:f")]}, "rewards[0].function"),
        (stage("sft", **{"data.train": "/etc/passwd"}), "stages[0].overrides sets data.train"),
        (stage("grpo", **{"lora.init_adapter": "/etc"}), "stages[0].overrides sets lora.init_adapter"),
        (stage("grpo", output_dir="/tmp/x"), "stages[0].overrides sets output_dir"),
        (stage("grpo", rewards=[_ref("/etc/x.py:f")]), "stages[0].overrides sets rewards"),
    ]
    for extra, where in cases:
        config = {**_config(dataset_id), **extra}
        if "data" in extra:
            config["data"] = {**_config(dataset_id)["data"], **extra["data"]}
        message = _assert_4xx(client.post("/v1/jobs", json={"config": config}), where)
        assert str(data) not in message


def test_no_response_shows_the_data_dir(app_data: tuple[TestClient, Path], dataset_id: str) -> None:
    client, data = app_data
    created = client.post("/v1/rewards", json={"name": "pathy", "source": REWARD})
    rewards = [_ref("reward:pathy"), {"name": "eq", "function": "countdown.equation"}]
    job = _job_config(client, dataset_id, rewards=rewards)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    store = Store(data)
    run_dir = store.runs_dir / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    queue.job_log_path(run_dir).write_text(f"loading {data / 'datasets' / 'x.jsonl'}\n")
    store.execute("UPDATE jobs SET status='running' WHERE id=?", (job_id,))
    queue.finish(store, job_id, "failed", f"{data}/runs/{job_id}/x.py:1: boom")
    bodies = [
        created.text,
        job.text,
        client.post("/v1/datasets", params={"filename": "again.jsonl"}, content=ROWS).text,
        *(client.get(path).text for path in _get_routes(dataset_id, job_id)),
        client.post("/v1/rewards/pathy/test", json={"cases": [{"completion": "x", "expected": 0.5}]}).text,
        client.post("/v1/rewards", json={"name": "bad", "source": "def f(:\n"}).text,
        _job_config(client, dataset_id, data={"train": dataset_id, "prompt_template": "{missing}"}).text,
    ]
    for body in bodies:
        assert str(data) not in body, body[:300]
    got = client.get(f"/v1/jobs/{job_id}").json()
    assert got["error"] == f"runs/{job_id}/x.py:1: boom"
    assert got["config"]["output_dir"] == f"runs/{job_id}"
    assert got["config"]["data"]["train"].startswith("datasets/")
    assert client.get(f"/v1/jobs/{job_id}/logs").json()["text"] == "loading datasets/x.jsonl\n"
    assert client.get(f"/v1/jobs/{job_id}/events").json()["data"][-1]["detail"] == got["error"]


def _get_routes(ds: str, job_id: str) -> list[str]:
    return [
        "/v1/datasets",
        f"/v1/datasets/{ds}",
        f"/v1/datasets/{ds}/preview",
        "/v1/rewards",
        "/v1/rewards/pathy",
        "/v1/rewards/pathy/versions/1",
        "/v1/jobs",
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/logs",
        f"/v1/jobs/{job_id}/events",
        "/v1/runs",
        f"/v1/runs/{job_id}/metrics",
        f"/v1/runs/{job_id}/samples",
        "/v1/adapters",
        "/v1/models",
    ]


def test_an_unexpected_exception_answers_a_generic_500_without_detail(tmp_path: Path) -> None:
    app = create_app(ServerSettings(data_dir=tmp_path, api_key=KEY, max_concurrent_jobs=0))

    @app.get("/v1/explode")
    def explode() -> None:
        raise RuntimeError(f"secret detail at {tmp_path}")

    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as client:
        r = client.get("/v1/explode")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "server_error"
    assert "secret" not in r.text and str(tmp_path) not in r.text and "Traceback" not in r.text


# -- on a real uvicorn: the header limit and the upload/delete race ---------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("malformed-live")
    with serve_in_background(ServerSettings(data_dir=data, api_key=KEY, max_concurrent_jobs=0)) as url:
        yield url, data


def _raw_request(url: str, chunks: list[bytes]) -> bytes:
    """Send a request in `chunks` (each its own write) and read the whole answer."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while block := sock.recv(65536):
            answer += block
    return answer


def test_headers_over_the_limit_get_431_from_uvicorn_and_from_the_app(live: tuple[str, Path]) -> None:
    url, _ = live
    head = f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode()
    padding = b"X-Padding: " + b"p" * (4 * MAX_HEADER_BYTES) + b"\r\n"
    # unfinished head over the limit: uvicorn's h11 parser stops it
    trickled = _raw_request(url, [head, padding[: MAX_HEADER_BYTES // 2], padding[MAX_HEADER_BYTES // 2 :]])
    # a head that arrives whole: the app's middleware measures it
    whole = _raw_request(url, [head + padding + b"\r\n"])
    for answer in (trickled, whole):
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert "headers" in json.loads(body)["error"]["message"]
    with httpx.Client(base_url=url, headers=AUTH) as http:
        big = http.get("/v1/jobs", headers={"X-Padding": "p" * (MAX_HEADER_BYTES * 2)})
        assert big.status_code == 431
        assert http.get("/v1/jobs").status_code == 200  # the server still answers


def test_uploads_racing_deletes_of_the_same_bytes_leave_rows_and_files_consistent(
    live: tuple[str, Path],
) -> None:
    url, data = live
    body = b'{"prompt": "race"}\n' * 50
    with httpx.Client(base_url=url, headers=AUTH) as http:
        ds_id = http.post("/v1/datasets", params={"filename": "race.jsonl"}, content=body).json()["id"]
    statuses: list[int | str] = []
    lock = threading.Lock()

    def request(http: httpx.Client, upload: bool, worker: int) -> int | str:
        try:
            if upload:
                params = {"filename": f"race-{worker}.jsonl"}
                return http.post("/v1/datasets", params=params, content=body).status_code
            return http.delete(f"/v1/datasets/{ds_id}").status_code
        except httpx.HTTPError as e:  # a dropped connection counts as a server error
            return type(e).__name__

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            for i in range(45):
                status = request(http, bool((i + worker) % 2), worker)
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 180
    assert set(statuses) <= {200, 201, 404}, sorted(map(str, set(statuses)))  # no 5xx, no dropped connection
    store = Store(data)
    for row in store.list_datasets():
        assert Path(row["path"]).is_file(), row
    assert list(store.tmp_dir.iterdir()) == []  # no upload left its temp folder behind
