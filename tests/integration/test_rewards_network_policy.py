"""A server's network policy inside real reward workers: the policy variable reaches them, the
`remote` grader is refused a loopback URL at call time unless the host is allow-listed, and a
tenant's own function with network is refused loopback and Unix sockets by the audit hook."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from openrft.rewards import RewardScores, RewardSet
from openrft.rewards.url_guard import POLICY_ENV, NetworkPolicy

OWN_CODE = """
import socket

def connect(prompt, completion, example):
    with socket.create_connection(("127.0.0.1", example["port"]), timeout=2):
        return 1.0

def by_name(prompt, completion, example):
    with socket.create_connection(("localhost", example["port"]), timeout=2):
        return 1.0

def unix(prompt, completion, example):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(example["unix"])
    return 1.0
"""


@pytest.fixture(scope="module")
def grader_port() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps({"scores": [1.0] * len(body["completions"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def unix_socket() -> Iterator[str]:
    folder = tempfile.mkdtemp()
    path = str(Path(folder) / "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)
    yield path
    server.close()


def _score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: NetworkPolicy | None, port: int, unix: str
) -> tuple[RewardScores, str]:
    """The scores, and the isolation mode the workers ran in."""
    if policy is None:
        monkeypatch.delenv(POLICY_ENV, raising=False)
    else:
        monkeypatch.setenv(POLICY_ENV, policy.to_env())
    code = tmp_path / "own.py"
    code.write_text(OWN_CODE)
    url = f"http://127.0.0.1:{port}/grade"
    specs = [
        {"name": "remote", "function": "remote", "kwargs": {"url": url, "retries": 0}},
        {"name": "connect", "function": f"{code}:connect", "allow_network": True, "timeout_s": 5},
        {"name": "unix", "function": f"{code}:unix", "allow_network": True, "timeout_s": 5},
        {"name": "by_name", "function": f"{code}:by_name", "allow_network": True, "timeout_s": 5},
    ]
    with RewardSet(specs, max_error_rate=1.0, pool_size=1) as rs:
        return rs.score(["p"], ["c"], [{"port": port, "unix": unix}]), rs.isolation()[0]["mode"]


def test_without_a_policy_everything_local_is_reachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grader_port: int, unix_socket: str
) -> None:
    scores, mode = _score(tmp_path, monkeypatch, None, grader_port, unix_socket)
    # A Unix socket is a file: the bubblewrap sandbox shows no host file outside its view.
    unix = [0.0] if mode == "sandbox" else [1.0]
    assert [scores.column(n) for n in ("remote", "connect", "unix")] == [[1.0], [1.0], unix], (
        scores.tracebacks
    )


def test_under_a_server_policy_loopback_and_unix_sockets_are_refused_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grader_port: int, unix_socket: str
) -> None:
    scores, _ = _score(tmp_path, monkeypatch, NetworkPolicy(("*",)), grader_port, unix_socket)
    refused = (
        ("remote", "loopback"),
        ("connect", "loopback"),
        ("by_name", "loopback"),
        ("unix", "Unix sockets"),
    )
    for name, why in refused:
        assert scores.column(name) == [0.0] and scores.errors[name] == 1, name
        assert why in scores.tracebacks[name][-1], scores.tracebacks[name]


def test_an_allow_listed_loopback_host_is_reachable_under_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grader_port: int, unix_socket: str
) -> None:
    scores, _ = _score(tmp_path, monkeypatch, NetworkPolicy(("127.0.0.1",)), grader_port, unix_socket)
    assert scores.column("remote") == [1.0] and scores.column("connect") == [1.0], scores.tracebacks
    assert "Unix sockets" in scores.tracebacks["unix"][-1]


def test_a_tenant_function_may_connect_to_a_host_the_operator_listed_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grader_port: int, unix_socket: str
) -> None:
    """`localhost` is listed: the function's own lookup of it is approved; the remote grader's URL
    names 127.0.0.1, which is not listed, so it is still refused."""
    scores, _ = _score(tmp_path, monkeypatch, NetworkPolicy(("localhost",)), grader_port, unix_socket)
    assert scores.column("by_name") == [1.0], scores.tracebacks
    assert "'127.0.0.1' is not allowed" in scores.tracebacks["remote"][-1], scores.tracebacks
