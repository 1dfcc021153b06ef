"""The outbound URL guard of the HTTP graders: address classes, allow-list entries, resolution
against hand-written address lists, and the pinned httpx transports against a loopback server."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from openrft.rewards import http_graders
from openrft.rewards.pool import worker_env
from openrft.rewards.url_guard import (
    POLICY_ENV,
    BlockedURL,
    NetworkPolicy,
    blocked_reason,
    guarded_async_transport,
    guarded_transport,
    literal_ip,
    normalize_host_entry,
)

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    "169.254.169.254",
    "169.254.1.1",
    "fe80::1",
    "fd00:ec2::254",
    "100.100.100.200",
    "100.64.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456::1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "255.255.255.255",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "2002:a9fe:a9fe::1",
]
PUBLIC = ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_have_a_reason(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_have_no_reason(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_metadata_addresses_are_named_as_such() -> None:
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"):
        assert "metadata" in str(blocked_reason(ipaddress.ip_address(address)))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("169.254.169.254.", "169.254.169.254"),
    ],
)
def test_ip_literals_in_every_resolver_form_are_recognised(host: str, address: str) -> None:
    assert str(literal_ip(host)) == address


def test_host_names_are_not_ip_literals() -> None:
    for name in ("example.com", "deadbeef", "1.2.3.4 x"):
        assert literal_ip(name) is None


def test_allow_list_entries_are_normalised_and_urls_are_refused() -> None:
    assert normalize_host_entry("Judge.Example.COM.") == "judge.example.com"
    assert normalize_host_entry("10.1.2.3/16") == "10.1.0.0/16"
    assert normalize_host_entry("*.example.com") == "*.example.com"
    assert normalize_host_entry("2130706433") == "127.0.0.1"
    for bad in ("http://example.com", "example.com:8000", "a b", "/16"):
        with pytest.raises(ValueError, match="host name"):
            normalize_host_entry(bad)


def resolver(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


TABLE = {
    "api.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "rebound.example.com": ["93.184.216.34", "127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:10.0.0.7"],
    "judge.internal": ["10.0.0.5"],
    "lab.example.com": ["10.9.0.4"],
}


def test_any_public_host_is_allowed_with_star_but_never_a_non_public_address() -> None:
    policy = NetworkPolicy(("*",))
    assert policy.resolve("api.example.com", 443, resolver(TABLE)) == TABLE["api.example.com"]
    for host, shown in (
        ("rebound.example.com", "loopback"),
        ("metadata.example.com", "metadata"),
        ("mapped.example.com", "private"),
    ):
        with pytest.raises(BlockedURL, match=shown):
            policy.resolve(host, 443, resolver(TABLE))
    for literal in ("127.0.0.1", "2130706433", "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1"):
        with pytest.raises(BlockedURL, match="--allow-reward-host"):
            policy.resolve(literal, 80, resolver(TABLE))


def test_a_host_not_on_the_list_is_refused_before_it_is_resolved() -> None:
    policy = NetworkPolicy(("api.example.com",))

    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"resolved {host}")

    with pytest.raises(BlockedURL, match=r"'other\.example\.com' is not allowed by this server"):
        policy.resolve("other.example.com", 443, no_dns)


def test_a_host_listed_by_name_may_resolve_to_a_private_address() -> None:
    policy = NetworkPolicy(("judge.internal", "*.example.com"))
    assert policy.resolve("judge.internal", 80, resolver(TABLE)) == ["10.0.0.5"]
    assert policy.resolve("lab.example.com", 80, resolver(TABLE)) == ["10.9.0.4"]
    with pytest.raises(BlockedURL):
        policy.resolve("example.com", 80, resolver(TABLE))


def test_a_listed_network_admits_its_addresses_under_any_name() -> None:
    policy = NetworkPolicy(("*", "10.0.0.0/24"))
    assert policy.resolve("judge.internal", 80, resolver(TABLE)) == ["10.0.0.5"]
    assert policy.resolve("10.0.0.9", 80, resolver(TABLE)) == ["10.0.0.9"]
    assert policy.resolve("mapped.example.com", 80, resolver(TABLE)) == ["::ffff:10.0.0.7"]
    with pytest.raises(BlockedURL, match="private"):
        policy.resolve("lab.example.com", 80, resolver(TABLE))


def test_an_empty_policy_refuses_everything_and_round_trips_through_the_environment() -> None:
    policy = NetworkPolicy(("*.example.com", "10.0.0.0/8"))
    assert NetworkPolicy.from_env({POLICY_ENV: policy.to_env()}) == policy
    assert NetworkPolicy.from_env({}) is None
    assert NetworkPolicy.from_env({POLICY_ENV: "not json"}) == NetworkPolicy(())
    with pytest.raises(BlockedURL):
        NetworkPolicy(()).resolve("api.example.com", 443, resolver(TABLE))


def test_reward_workers_receive_the_policy_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLICY_ENV, NetworkPolicy(("*",)).to_env())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    env = worker_env("/tmp")
    assert env[POLICY_ENV] == NetworkPolicy(("*",)).to_env() and "AWS_SECRET_ACCESS_KEY" not in env


# -- the transports, against a real server on loopback ----------------------------------------------


class Server:
    """127.0.0.1:<port>; POST /redirect answers 307 to `redirect_to`, other paths echo the Host."""

    def __init__(self) -> None:
        self.redirect_to = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/redirect":
                    self.send_response(307)
                    self.send_header("Location", outer.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps({"host": self.headers.get("Host")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_the_transport_connects_to_the_checked_address_and_keeps_the_host_name(server: Server) -> None:
    """`judge.test` resolves (by our resolver) to 127.0.0.1: the request reaches the loopback
    server by that address, once, with Host: judge.test."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    transport = guarded_transport(NetworkPolicy(("judge.test",)), resolve)
    with httpx.Client(transport=transport, trust_env=False) as client:
        reply = client.post(f"http://judge.test:{server.port}/x", json={})
    assert reply.json() == {"host": f"judge.test:{server.port}"} and calls == ["judge.test"]


def test_the_transport_refuses_loopback_unless_listed(server: Server) -> None:
    with (
        httpx.Client(transport=guarded_transport(NetworkPolicy(("*",))), trust_env=False) as client,
        pytest.raises(BlockedURL, match="loopback"),
    ):
        client.post(f"http://127.0.0.1:{server.port}/x", json={})
    with httpx.Client(transport=guarded_transport(NetworkPolicy(("127.0.0.1",))), trust_env=False) as client:
        assert client.post(f"http://127.0.0.1:{server.port}/x", json={}).status_code == 200


def test_a_redirect_to_a_refused_address_is_refused(server: Server) -> None:
    server.redirect_to = "http://169.254.169.254/latest/meta-data/"
    transport = guarded_transport(NetworkPolicy(("127.0.0.1",)))
    with (
        httpx.Client(transport=transport, trust_env=False, follow_redirects=True) as client,
        pytest.raises(BlockedURL, match=r"169\.254\.169\.254"),
    ):
        client.post(f"http://127.0.0.1:{server.port}/redirect", json={})


def test_the_async_transport_obeys_the_policy(server: Server) -> None:
    async def post(policy: NetworkPolicy, url: str) -> int:
        async with httpx.AsyncClient(transport=guarded_async_transport(policy), trust_env=False) as client:
            return (await client.post(url, json={})).status_code

    url = f"http://localhost:{server.port}/x"
    assert asyncio.run(post(NetworkPolicy(("localhost",)), url)) == 200
    with pytest.raises(BlockedURL, match="'localhost' resolves to"):
        asyncio.run(post(NetworkPolicy(("*",)), url))


def test_the_graders_use_the_policy_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{server.port}/x"
    assert http_graders.post_json(url, {}, retries=0) == {"host": f"127.0.0.1:{server.port}"}
    monkeypatch.setenv(POLICY_ENV, NetworkPolicy(("*",)).to_env())
    with pytest.raises(BlockedURL, match="loopback"):
        http_graders.post_json(url, {}, retries=3, backoff_s=5)  # refused at once, never retried
    with pytest.raises(BlockedURL, match="loopback"):
        asyncio.run(http_graders.apost_json(url, {}, retries=0))
