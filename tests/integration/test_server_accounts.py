"""Accounts on the server: users' API keys (created and revoked by the admin key, stored hashed)
and ownership (a user sees only what that user created; another user's resources answer 404 on
every route; the admin sees everything). The route x credential matrix enumerates `app.routes`,
so a route added later is checked too. In-process (TestClient), no worker: jobs stay queued."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import openrft
from openrft.cli.main import app as cli_app
from openrft.client import APIError
from openrft.server import ServerSettings, create_app
from openrft.server.auth import is_public
from openrft.server.background import free_port, serve_in_background
from openrft.server.store import Store, dataset_id

ADMIN_KEY = "admin-key-for-accounts-tests"
REWARD = "def mine(prompt, completion, example):\n    return 0.5\n"
LOCAL_RUN = "trained-locally"
_counter = itertools.count()


def _rows(tag: str) -> bytes:
    return "".join(
        f'{{"nums": [{i}, {i + 1}], "target": {i + 3}, "tag": "{tag}"}}\n' for i in range(4)
    ).encode()


def _config(ds_id: str, reward: str = "mine", **extra: Any) -> dict[str, Any]:
    return {
        "model": {"name": "tiny-random-llama", "dtype": "float32"},
        "data": {"train": ds_id, "prompt_template": "Use {nums} to make {target}"},
        "rewards": [{"name": "r", "function": f"reward:{reward}"}],
        "max_steps": 2,
        **extra,
    }


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class World:
    """A user's resources: a dataset, a reward, a queued job with an adapter on disk."""

    key: str
    reward: str
    ds_id: str
    sha256: str
    job_id: str


class Server:
    """An app on a temp data dir, with the admin key and helpers to make users and their resources."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        runs_dir = data_dir.parent / "local-runs"  # the operator's `openrft train` runs: the admin's only
        (runs_dir / LOCAL_RUN).mkdir(parents=True)
        (runs_dir / LOCAL_RUN / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
        self.app = create_app(
            ServerSettings(data_dir=data_dir, api_key=ADMIN_KEY, max_concurrent_jobs=0, runs_dir=runs_dir)
        )
        self.http = TestClient(self.app)

    def request(self, key: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = _bearer(key) if key is not None else {}
        return self.http.request(method, path, headers=headers, **kwargs)

    def new_key(self, user: str) -> tuple[str, str]:
        """(key id, key) of a new key for `user`, made with the admin key."""
        resp = self.request(ADMIN_KEY, "POST", "/v1/keys", json={"user": user})
        assert resp.status_code == 201, resp.text
        return resp.json()["id"], resp.json()["key"]

    def world(self, key: str) -> World:
        """Fresh resources of the key's user (new dataset bytes each time)."""
        tag = f"w{next(_counter)}"
        up = self.request(key, "POST", f"/v1/datasets?filename={tag}.jsonl", content=_rows(tag))
        assert up.status_code == 201, up.text
        reward = self.request(key, "POST", "/v1/rewards", json={"name": f"r-{tag}", "source": REWARD})
        assert reward.status_code == 201, reward.text
        config = _config(up.json()["id"], reward=f"r-{tag}")
        job = self.request(key, "POST", "/v1/jobs", json={"config": config, "name": tag})
        assert job.status_code == 201, job.text
        adapter = self.data_dir / "runs" / job.json()["id"] / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text('{"r": 8}')
        (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
        report = self.data_dir / "runs" / job.json()["id"] / "compare" / "report.md"
        report.parent.mkdir(parents=True)
        report.write_text("# comparison\n")
        return World(key, f"r-{tag}", up.json()["id"], up.json()["sha256"], job.json()["id"])


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path / "data")


# -- the route x credential matrix ------------------------------------------------------------------


def _routes(routes: list[Any]) -> list[tuple[str, str, APIRoute]]:
    """(method, path, route) of every API route, descending into included routers."""
    out = []
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            out.extend(_routes(original.routes))
        elif isinstance(route, APIRoute):
            out.extend((m, route.path, route) for m in sorted(route.methods - {"HEAD"}))
    return out


def _path(template: str, world: World, key_id: str) -> str:
    values = {
        "dataset_id": world.ds_id,
        "job_id": world.job_id,
        "run_id": world.job_id,
        "adapter_id": world.job_id,
        "filename": "report.md" if template.startswith("/v1/jobs") else "adapter_config.json",
        "name": world.reward,
        "version": "1",
        "key_id": key_id,
        "run_name": LOCAL_RUN,
    }
    unknown = set(re.findall(r"\{([^}]+)\}", template)) - set(values)
    assert not unknown, f"{template}: say in _path which resource the parameters {unknown} name"
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template)


def _body(method: str, template: str, world: World) -> dict[str, Any]:
    """The request body (and query) a route needs to succeed for the owner of `world`."""
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/datasets"): {"content": _rows("again"), "params": {"filename": "again.jsonl"}},
        ("POST", "/v1/rewards"): {"json": {"name": world.reward, "source": REWARD}},
        ("POST", "/v1/jobs"): {"json": {"config": _config(world.ds_id, reward=world.reward)}},
        ("POST", "/v1/rewards/{name}/test"): {"json": {"cases": [{"completion": "x", "expected": 0.5}]}},
        ("POST", "/v1/keys"): {"json": {"user": "dave"}},
    }
    return bodies.get((method, template), {})


# Requests the owner makes first so that the route can succeed (a queued job's dataset and adapter
# cannot be deleted; only a paused job can be resumed).
PREPARE = {
    ("DELETE", "/v1/datasets/{dataset_id}"): "cancel",
    ("DELETE", "/v1/adapters/{adapter_id}"): "cancel",
    ("POST", "/v1/jobs/{job_id}/resume"): "pause",
}


def _changes_state(method: str, template: str) -> bool:
    return method != "GET" and "{" in template


def test_every_route_answers_each_credential_as_it_should(server: Server) -> None:
    _, alice_key = server.new_key("alice")
    _, bob_key = server.new_key("bob")
    carol_id, carol_key = server.new_key("carol")
    assert server.request(carol_key, "GET", "/v1/jobs").status_code == 200
    assert server.request(ADMIN_KEY, "DELETE", f"/v1/keys/{carol_id}").status_code == 200
    alice, bob = server.world(alice_key), server.world(bob_key)
    routes = _routes(server.app.routes)
    owned = [(m, p) for m, p, _ in routes if "{" in p and not p.startswith("/v1/keys")]
    assert len(owned) >= 18, owned  # datasets, rewards, jobs, runs, adapters
    checked = set()
    for method, template, route in routes:
        if is_public(template):
            continue
        spare_key_id, _ = server.new_key("spare")
        url = _path(template, alice, spare_key_id)
        for key in (None, "wrong-" + ADMIN_KEY, carol_key):
            resp = server.request(key, method, url, **_body(method, template, alice))
            assert resp.status_code == 401, (method, template, key, resp.status_code)
            assert resp.json()["error"]["code"] == "invalid_api_key"
        if template.startswith("/v1/keys"):
            for key in (alice_key, bob_key):
                resp = server.request(key, method, url, **_body(method, template, alice))
                assert resp.status_code == 403, (method, template, resp.status_code, resp.text)
            resp = server.request(ADMIN_KEY, method, url, **_body(method, template, alice))
            assert resp.status_code in (200, 201), (method, template, resp.text)
        elif template.startswith("/v1/local-runs"):
            # the server's --runs-dir is the operator's: a user's key finds nothing there (404)
            for key in (alice_key, bob_key):
                resp = server.request(key, method, url)
                assert resp.status_code == 404, (method, template, resp.status_code, resp.text)
                assert resp.json()["error"]["code"] == "not_found"
            resp = server.request(ADMIN_KEY, method, url)
            assert resp.status_code == 200, (method, template, resp.status_code, resp.text)
            assert "{" in template or LOCAL_RUN in resp.text, (method, template, resp.text)
        elif "{" in template:
            # another user's resource: 404, exactly as if it did not exist, and nothing changes
            resp = server.request(bob_key, method, url, **_body(method, template, bob))
            assert resp.status_code == 404, (method, template, resp.status_code, resp.text)
            assert resp.json()["error"]["code"] == "not_found"
            for key in (alice_key, ADMIN_KEY):
                world = server.world(alice_key) if _changes_state(method, template) else alice
                if (method, template) in PREPARE:
                    action = PREPARE[method, template]
                    assert (
                        server.request(alice_key, "POST", f"/v1/jobs/{world.job_id}/{action}").status_code
                        == 200
                    )
                resp = server.request(
                    key, method, _path(template, world, spare_key_id), **_body(method, template, world)
                )
                assert resp.status_code == 200, (
                    method,
                    template,
                    key == ADMIN_KEY,
                    resp.status_code,
                    resp.text,
                )
        else:
            # collections: each user sees (and creates) only their own; the admin sees everyone's
            for key, world in ((bob_key, bob), (alice_key, alice), (ADMIN_KEY, alice)):
                resp = server.request(key, method, url, **_body(method, template, world))
                assert resp.status_code in (200, 201), (method, template, resp.status_code, resp.text)
                if key == bob_key:
                    assert alice.job_id not in resp.text and alice.ds_id not in resp.text, (method, template)
                if key == ADMIN_KEY and method == "GET" and "meta" not in route.tags:
                    assert alice.job_id in resp.text or alice.ds_id in resp.text or '"alice"' in resp.text
        checked.add((method, template))
    assert checked == {(m, p) for m, p, _ in routes if not is_public(p)}


def test_a_revoked_key_gets_401_at_once(server: Server) -> None:
    key_id, key = server.new_key("alice")
    assert server.request(key, "GET", "/v1/datasets").status_code == 200
    revoked = server.request(ADMIN_KEY, "DELETE", f"/v1/keys/{key_id}").json()
    assert revoked["revoked_at"] is not None and "key" not in revoked
    assert server.request(key, "GET", "/v1/datasets").status_code == 401
    listed = {k["id"]: k for k in server.request(ADMIN_KEY, "GET", "/v1/keys").json()["data"]}
    assert listed[key_id]["revoked_at"] is not None and listed[key_id]["prefix"] == key[:12]
    assert server.request(ADMIN_KEY, "DELETE", "/v1/keys/key-nothere").status_code == 404


def test_a_new_key_for_the_same_user_reaches_that_users_resources(server: Server) -> None:
    first_id, first = server.new_key("alice")
    world = server.world(first)
    server.request(ADMIN_KEY, "DELETE", f"/v1/keys/{first_id}")
    _, second = server.new_key("alice")
    assert server.request(second, "GET", f"/v1/jobs/{world.job_id}").json()["owner"] == "alice"


def test_user_names_are_checked_and_admin_is_reserved(server: Server) -> None:
    for user in ("admin", "../x", "", "a b"):
        resp = server.request(ADMIN_KEY, "POST", "/v1/keys", json={"user": user})
        assert resp.status_code == 422, (user, resp.text)


def test_keys_are_stored_hashed_never_in_plaintext(server: Server) -> None:
    keys = [server.new_key(f"user{i}")[1] for i in range(3)]
    for key in keys:
        assert server.request(key, "GET", "/v1/jobs").status_code == 200
    stored = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    db = sqlite3.connect(server.data_dir / "openrft.db")
    hashes = {r[0] for r in db.execute("SELECT key_hash FROM api_keys")}
    db.close()
    import hashlib

    for key in keys:
        assert key.encode() not in stored
        assert key.split("-", 1)[1].encode() not in stored
        assert hashlib.sha256(key.encode()).hexdigest() in hashes


# -- ownership details ----------------------------------------------------------------------------


def test_two_users_uploading_the_same_bytes_get_their_own_datasets_sharing_one_file(server: Server) -> None:
    _, alice = server.new_key("alice")
    _, bob = server.new_key("bob")
    body = _rows("same")
    a = server.request(alice, "POST", "/v1/datasets?filename=a.jsonl", content=body).json()
    b = server.request(bob, "POST", "/v1/datasets?filename=b.jsonl", content=body).json()
    assert a["sha256"] == b["sha256"] and a["id"] != b["id"]
    assert (a["owner"], b["owner"], a["name"], b["name"]) == ("alice", "bob", "a.jsonl", "b.jsonl")
    assert b["id"] == dataset_id(b["sha256"], "bob")
    files = list((server.data_dir / "datasets").iterdir())
    assert [f.name for f in files] == [f"{a['sha256']}.jsonl"]
    # bob's copy is bob's, whichever id form he uses; alice cannot reach it by its sha256 either
    assert server.request(bob, "GET", f"/v1/datasets/{a['sha256']}").json()["id"] == b["id"]
    assert server.request(alice, "GET", f"/v1/datasets/{b['id']}").status_code == 404
    assert server.request(alice, "DELETE", f"/v1/datasets/{a['id']}").status_code == 200
    assert files[0].is_file()  # bob still uses the bytes
    preview = server.request(bob, "GET", f"/v1/datasets/{b['id']}/preview?limit=1").json()
    assert preview["rows"][0]["tag"] == "same"
    assert server.request(bob, "DELETE", f"/v1/datasets/{b['id']}").status_code == 200
    assert not files[0].exists()


def test_reward_names_are_per_user(server: Server) -> None:
    _, alice = server.new_key("alice")
    _, bob = server.new_key("bob")
    a = server.request(alice, "POST", "/v1/rewards", json={"name": "mine", "source": REWARD})
    other = "def mine(prompt, completion, example):\n    return 1.0\n"
    b = server.request(bob, "POST", "/v1/rewards", json={"name": "mine", "source": other})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["version"] == b.json()["version"] == 1
    assert server.request(alice, "GET", "/v1/rewards/mine/versions/1").json()["source"] == REWARD
    assert server.request(bob, "GET", "/v1/rewards/mine/versions/1").json()["source"] == other
    sources = sorted(p.read_text() for p in (server.data_dir / "rewards").rglob("v1.py"))
    assert sources == sorted([REWARD, other])
    # bob's `?owner=alice` does not reach alice's; the admin names the owner when the name is shared
    assert server.request(bob, "GET", "/v1/rewards/mine?owner=alice").status_code == 404
    assert server.request(ADMIN_KEY, "GET", "/v1/rewards/mine").status_code == 409
    got = server.request(ADMIN_KEY, "GET", "/v1/rewards/mine/versions/1?owner=alice").json()
    assert (got["owner"], got["source"]) == ("alice", REWARD)
    listed = server.request(ADMIN_KEY, "GET", "/v1/rewards").json()["data"]
    assert sorted(r["owner"] for r in listed) == ["alice", "bob"]


def test_job_config_references_to_another_users_resources_are_refused_as_absent(server: Server) -> None:
    _, alice_key = server.new_key("alice")
    _, bob_key = server.new_key("bob")
    alice = server.world(alice_key)
    bob = server.world(bob_key)
    server.request(alice_key, "POST", "/v1/rewards", json={"name": "alices", "source": REWARD})
    cases = [
        (_config(alice.ds_id, bob.reward), "is not an uploaded dataset"),
        (_config(alice.sha256, bob.reward), "is not an uploaded dataset"),
        (
            _config(bob.ds_id, bob.reward, data={"train": bob.ds_id, "eval": alice.ds_id}),
            "is not an uploaded",
        ),
        (_config(bob.ds_id, "alices"), "no such registered reward"),
        (_config(bob.ds_id, alice.reward), "no such registered reward"),
        (
            _config(bob.ds_id, bob.reward, lora={"init_adapter": f"adapter:{alice.job_id}"}),
            "no adapter of that",
        ),
    ]
    for config, message in cases:
        resp = server.request(bob_key, "POST", "/v1/jobs", json={"config": config})
        assert resp.status_code == 422 and message in resp.json()["error"]["message"], (config, resp.text)
    # bob's own `reward:alices` is bob's: the pinned file is under his folder, not alice's
    server.request(bob_key, "POST", "/v1/rewards", json={"name": "alices", "source": REWARD})
    mine = server.request(bob_key, "POST", "/v1/jobs", json={"config": _config(bob.ds_id, "alices")}).json()
    config = server.request(bob_key, "GET", f"/v1/jobs/{mine['id']}").json()["config"]
    assert config["rewards"][0]["function"].startswith(
        "rewards/@bob/alices/v1.py:"
    )  # relative to the data dir
    # the admin may use anyone's dataset and adapter
    admin_job = _config(alice.ds_id, alice.reward)
    admin_job["lora"] = {"init_adapter": f"adapter:{alice.job_id}"}
    assert server.request(ADMIN_KEY, "POST", "/v1/jobs", json={"config": admin_job}).status_code == 201


# -- migration of a database older than accounts ----------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE datasets (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    path TEXT NOT NULL, format TEXT NOT NULL, bytes INTEGER NOT NULL, num_rows INTEGER NOT NULL,
    columns TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE reward_versions (name TEXT NOT NULL, version INTEGER NOT NULL, function TEXT NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, tests TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, method TEXT NOT NULL,
    base_model TEXT NOT NULL, dataset_id TEXT, config TEXT NOT NULL, trackers TEXT NOT NULL DEFAULT '[]',
    run_dir TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, requested TEXT, worker TEXT, pid INTEGER,
    pid_start TEXT, heartbeat REAL, error TEXT, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, updated_at REAL NOT NULL);
CREATE INDEX jobs_status ON jobs(status, created_at);
CREATE TABLE job_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, at REAL NOT NULL,
    event TEXT NOT NULL, detail TEXT);
"""


def _old_database(data_dir: Path) -> tuple[str, str]:
    """A data dir as a server before accounts left it: one dataset, one reward, one job."""
    (data_dir / "datasets").mkdir(parents=True)
    (data_dir / "rewards" / "old").mkdir(parents=True)
    body = _rows("old")
    import hashlib

    sha = hashlib.sha256(body).hexdigest()
    ds_path = data_dir / "datasets" / f"{sha}.jsonl"
    ds_path.write_bytes(body)
    reward_path = data_dir / "rewards" / "old" / "v1.py"
    reward_path.write_text(REWARD)
    db = sqlite3.connect(data_dir / "openrft.db")
    db.executescript(OLD_SCHEMA)
    now = time.time()
    db.execute(
        "INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?,?)",
        ("ds-" + sha[:16], sha, "old.jsonl", str(ds_path), "jsonl", len(body), 4, '["nums"]', now),
    )
    db.execute(
        "INSERT INTO reward_versions VALUES (?,?,?,?,?,?,?)",
        ("old", 1, "mine", str(reward_path), "x", "[]", now),
    )
    db.execute(
        "INSERT INTO jobs (id, status, method, base_model, config, run_dir, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (
            "job-old",
            "succeeded",
            "grpo",
            "tiny-random-llama",
            json.dumps({"data": {}}),
            str(data_dir / "runs/job-old"),
            now,
            now,
        ),
    )
    db.commit()
    db.close()
    return "ds-" + sha[:16], sha


def test_an_old_database_is_migrated_and_its_rows_belong_to_the_admin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ds_id, sha = _old_database(data)
    server = Server(data)
    Store(data).init()  # a second start: the migration is idempotent
    admin = server.request(ADMIN_KEY, "GET", "/v1/datasets").json()["data"]
    assert [(d["id"], d["owner"]) for d in admin] == [(ds_id, "admin")]
    assert server.request(ADMIN_KEY, "GET", "/v1/jobs/job-old").json()["owner"] == "admin"
    assert server.request(ADMIN_KEY, "GET", "/v1/rewards/old/versions/1").json()["source"] == REWARD
    _, alice = server.new_key("alice")
    for path in ("/v1/datasets", "/v1/jobs", "/v1/rewards"):
        assert server.request(alice, "GET", path).json()["data"] == []
    assert server.request(alice, "GET", "/v1/jobs/job-old").status_code == 404
    # the same bytes uploaded by alice: her own row beside the admin's
    mine = server.request(alice, "POST", "/v1/datasets?filename=copy.jsonl", content=_rows("old")).json()
    assert mine["sha256"] == sha and mine["id"] != ds_id
    db = sqlite3.connect(data / "openrft.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert not any(t.endswith("_before_owner") for t in tables)


# -- the CLI and the SDK ----------------------------------------------------------------------------


def test_cli_keys_create_list_revoke_work_on_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner()
    made = runner.invoke(cli_app, ["server", "keys", "create", "--user", "alice", "--data-dir", str(data)])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("ork-")
    server = Server(data)  # the server started after the key was made accepts it
    assert server.request(key, "GET", "/v1/jobs").status_code == 200
    listed = runner.invoke(cli_app, ["server", "keys", "list", "--data-dir", str(data)])
    assert listed.exit_code == 0 and "alice" in listed.stdout and key not in listed.stdout
    key_id = listed.stdout.split()[0]
    assert key_id.startswith("key-")
    revoked = runner.invoke(cli_app, ["server", "keys", "revoke", key_id, "--data-dir", str(data)])
    assert revoked.exit_code == 0, revoked.output
    assert server.request(key, "GET", "/v1/jobs").status_code == 401  # the running server sees it at once
    bad = runner.invoke(cli_app, ["server", "keys", "create", "--user", "admin", "--data-dir", str(data)])
    assert bad.exit_code != 0


def test_openrft_server_with_options_still_starts_the_server(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "openrft.cli.main", "server", "--port", str(port), "--max-jobs", "0"]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(tmp_path / "data")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("`openrft server --port` did not start the server")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (tmp_path / "data" / "api_key").is_file()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[str]:
    with serve_in_background(
        ServerSettings(data_dir=tmp_path / "data", api_key=ADMIN_KEY, max_concurrent_jobs=0)
    ) as url:
        yield url


def test_the_sdk_works_with_a_users_key(live_server: str, tmp_path: Path) -> None:
    admin = openrft.Client(live_server, ADMIN_KEY)
    made = admin.keys.create("alice")
    assert made["user"] == "alice" and made["key"].startswith(made["prefix"])
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_rows("sdk"))
    with openrft.Client(live_server, made["key"]) as alice:
        ds = alice.datasets.upload(path)
        job = alice.finetune(
            base_model="tiny-random-llama",
            dataset=ds,
            reward_functions={"mine": REWARD},
            data={"prompt_template": "Use {nums} to make {target}"},
            max_steps=2,
        )
        assert [j.id for j in alice.jobs.list()] == [job.id]
        assert [d.id for d in alice.datasets.list()] == [ds.id]
        assert alice.rewards.versions("mine")[0].version == 1
        with pytest.raises(APIError) as err:
            alice.keys.list()
        assert err.value.status == 403
        assert job.cancel().status == "cancelled"
    assert [k["user"] for k in admin.keys.list()] == ["alice"]
    assert job.id in [j.id for j in admin.jobs.list()]
    admin.keys.revoke(made["id"])
    with openrft.Client(live_server, made["key"]) as gone, pytest.raises(APIError) as err:
        gone.jobs.list()
    assert err.value.status == 401
    admin.close()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_the_dashboard_works_with_a_users_key(live_server: str) -> None:
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download)"
    )
    with openrft.Client(live_server, ADMIN_KEY) as admin:
        alice_key = admin.keys.create("alice")["key"]
        bob_key = admin.keys.create("bob")["key"]
    jobs = {}
    for user, key in (("alice", alice_key), ("bob", bob_key)):
        http = httpx.Client(base_url=live_server, headers=_bearer(key))
        ds = http.post(f"/v1/datasets?filename={user}.jsonl", content=_rows(user)).json()
        http.post("/v1/rewards", json={"name": "mine", "source": REWARD})
        jobs[user] = http.post("/v1/jobs", json={"config": _config(ds["id"]), "name": f"{user}-run"}).json()[
            "id"
        ]
        http.close()
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{live_server}/#/")
            page.fill("#key-input", alice_key)
            page.click("#key-save")
            page.wait_for_selector(f"tr[data-run='{jobs['alice']}']")
            assert page.query_selector(f"tr[data-run='{jobs['bob']}']") is None
            page.goto(f"{live_server}/#/run/{jobs['alice']}")
            page.wait_for_function(
                "() => (document.querySelector('h1') || {}).textContent?.startsWith('alice-run')"
            )
            assert page.inner_text("#run-status") == "queued"
            assert not errors, errors
        finally:
            browser.close()
