"""Which hosts and addresses the HTTP graders (``llm_judge``, ``remote``) may reach.

On the user's own machine (`openrft train`) no policy is set: the graders reach any URL, a
judge served on ``127.0.0.1`` included. A server sets a `NetworkPolicy` for the jobs it runs:
the job worker puts `NetworkPolicy.to_env()` into the training process's environment under
`POLICY_ENV`, the reward workers receive it (`openrft.rewards.pool.worker_env`), and the graders
then connect through `guarded_transport` / `guarded_async_transport`, which at every connection
(redirects included):

1. refuse a host the operator did not allow-list (``openrft server --allow-reward-host``);
2. resolve it once, and refuse when any address is loopback, link-local, a cloud metadata
   address, private, CGNAT, unspecified, multicast or otherwise not globally routable (also in
   their IPv4-mapped / NAT64 / 6to4 IPv6 forms), unless the operator listed that host by name or
   listed the address (an IP or a CIDR);
3. connect to the checked address itself (TLS SNI and certificate checks keep the host name), so
   a second DNS answer (DNS rebinding) cannot swap it.

Allow-list entries: a host name (``judge.example.com``), a subdomain wildcard
(``*.example.com``), an IP or CIDR (``10.0.0.5``, ``10.1.0.0/16``), or ``*``: any host whose
addresses are all public. A host listed by name is trusted wherever it resolves (an internal
judge at 10.0.0.5); ``*`` never lets a request reach a non-public address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

POLICY_ENV = "OPENRFT_REWARD_NETWORK_POLICY"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_BLOCKED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible IPv6 address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a private (unique local) address"),
    ("ff00::/8", "a multicast address"),
)
_BLOCKED_NETS = tuple((ipaddress.ip_network(net), why) for net, why in _BLOCKED)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_V4 = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)
_LABEL = r"[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?"
_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_ENTRY_HELP = "write a host name, *.domain, an IP or a CIDR (no URL, no port)"


# Addresses the guarded transports resolved and checked for a host listed by name (a reward
# worker's audit hook lets connections to them through; see `openrft.rewards.sandbox`).
approved: set[str] = set()


class BlockedURL(PermissionError):
    """A grader's request goes to a host or address the server's network policy refuses."""


def literal_ip(host: str) -> IPAddress | None:
    """The address a host written as an IP stands for, in any form the C resolver accepts
    (``127.0.0.1``, ``[::1]``, ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``); None for a name.

    >>> str(literal_ip("2130706433")), str(literal_ip("[::ffff:127.0.0.1]")), literal_ip("example.com")
    ('127.0.0.1', '::ffff:7f00:1', None)
    """
    host = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_V4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a request must not reach `ip` unless the operator allowed it; None for a public address.

    >>> blocked_reason(ipaddress.ip_address("169.254.169.254"))
    'a cloud metadata address'
    >>> blocked_reason(ipaddress.ip_address("1.1.1.1")) is None
    True
    """
    inner = _embedded_v4(ip)
    if inner is not None:
        why = blocked_reason(inner)
        return f"{why} (as IPv6 {ip})" if why else None
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for net, why in _BLOCKED_NETS:
        if ip.version == net.version and ip in net:
            return why
    if ip.is_multicast:
        return "a multicast address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def normalize_host_entry(entry: str) -> str:
    """One allow-list entry, checked and normalised (lower case; IPs and CIDRs canonical).

    Raises:
        ValueError: not a host name, ``*.domain``, IP, CIDR or ``*``.
    """
    text = entry.strip().lower().rstrip(".")
    if text == "*":
        return text
    if "/" in text:
        try:
            return str(ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            raise ValueError(f"allowed reward host {entry!r}: {_ENTRY_HELP}") from None
    ip = literal_ip(text)
    if ip is not None:
        return str(ip)
    if not _NAME.match(text):
        raise ValueError(f"allowed reward host {entry!r}: {_ENTRY_HELP}")
    return text


def _hint(host: str) -> str:
    return f"; the operator can allow it with --allow-reward-host {host.strip('[]')}"


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system resolver (getaddrinfo), in its order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise BlockedURL(f"reward network policy: cannot resolve {host!r} ({e})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class NetworkPolicy:
    """The outbound rule set of a server's jobs: the operator's allowed hosts (see the module doc)."""

    allow_hosts: tuple[str, ...] = ()
    _networks: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        normal = tuple(dict.fromkeys(normalize_host_entry(h) for h in self.allow_hosts))
        networks, names = [], []
        for entry in normal:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.append(entry)
        object.__setattr__(self, "allow_hosts", normal)
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_names", tuple(n for n in names if n != "*"))

    @property
    def any_public(self) -> bool:
        return "*" in self.allow_hosts

    def _address_listed(self, ip: IPAddress) -> bool:
        inner = _embedded_v4(ip)
        candidates = [ip] if inner is None else [ip, inner]
        return any(c.version == n.version and c in n for c in candidates for n in self._networks)

    def _name_listed(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return any(e == name or (e.startswith("*.") and name.endswith(e[1:])) for e in self._names)

    def host_listed(self, host: str) -> bool:
        """The operator named this host (or its IP / a network containing it)."""
        ip = literal_ip(host)
        return self._address_listed(ip) if ip is not None else self._name_listed(host)

    def host_allowed(self, host: str) -> bool:
        """Requests to `host` may be tried (its addresses are checked at connection time)."""
        return self.any_public or self.host_listed(host)

    def refusal(self, host: str) -> str | None:
        """Why `host` is refused before resolving it (not allowed, or a non-public IP); None if not."""
        if not self.host_allowed(host):
            return f"host {host!r} is not allowed by this server"
        ip = literal_ip(host)
        if ip is not None and not self.host_listed(host):
            why = blocked_reason(ip)
            return f"{host!r} is {why}, which this server refuses" if why else None
        return None

    def check_host(self, host: str) -> None:
        """BlockedURL if `host` is refused before resolving it (not allowed, or a non-public IP)."""
        why = self.refusal(host)
        if why is not None:
            raise BlockedURL(f"reward network policy: {why}{_hint(host)}")

    def check_addresses(self, host: str, addresses: list[str]) -> None:
        """BlockedURL if any address `host` resolved to is refused."""
        if not addresses:
            raise BlockedURL(f"reward network policy: {host!r} has no address")
        trusted = literal_ip(host) is None and self._name_listed(host)
        for address in addresses:
            try:
                resolved = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                raise BlockedURL(f"reward network policy: {host!r} resolved to {address!r}") from None
            reason = blocked_reason(resolved)
            if reason and not trusted and not self._address_listed(resolved):
                raise BlockedURL(
                    f"reward network policy: {host!r} resolves to {address}, {reason}{_hint(host)}"
                )

    def resolve(self, host: str, port: int, resolver: Resolver = system_resolver) -> list[str]:
        """The addresses to connect to for `host`, all checked; BlockedURL when any is refused."""
        self.check_host(host)
        ip = literal_ip(host)
        addresses = [str(ip)] if ip is not None else resolver(host, port)
        self.check_addresses(host, addresses)
        return addresses

    def to_env(self) -> str:
        """The value of `POLICY_ENV` that carries this policy into a training process."""
        return json.dumps({"allow_hosts": list(self.allow_hosts)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NetworkPolicy | None:
        """The policy set for this process (None: the user's own machine, no policy)."""
        raw = (os.environ if environ is None else environ).get(POLICY_ENV)
        if raw is None:
            return None
        try:
            hosts = json.loads(raw)["allow_hosts"]
        except (ValueError, KeyError, TypeError):
            return cls(())  # unreadable: refuse everything rather than nothing
        return cls(tuple(str(h) for h in hosts))


# ----------------------------------------------------------------------------------------------
# httpx transports that connect only to checked addresses
# ----------------------------------------------------------------------------------------------


def _guarded_backends() -> tuple[type, type]:
    import anyio
    import httpcore

    class GuardedBackend(httpcore.NetworkBackend):
        """Resolves and checks the host, then connects to the checked address itself."""

        def __init__(self, policy: NetworkPolicy, resolver: Resolver) -> None:
            self.policy, self.resolver, self.inner = policy, resolver, httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, **kw: Any) -> Any:
            last: Exception | None = None
            addresses = self.policy.resolve(host, port, self.resolver)
            approved.update(addresses)
            for address in addresses:
                try:
                    return self.inner.connect_tcp(address, port, **kw)
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                    last = e
            assert last is not None
            raise last

        def connect_unix_socket(self, path: str, **kw: Any) -> Any:
            raise BlockedURL("reward network policy: Unix sockets are not allowed")

        def sleep(self, seconds: float) -> None:
            self.inner.sleep(seconds)

    class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
        """`GuardedBackend` for async clients (the name is resolved in a thread)."""

        def __init__(self, policy: NetworkPolicy, resolver: Resolver) -> None:
            self.policy, self.resolver, self.inner = policy, resolver, httpcore.AnyIOBackend()

        async def connect_tcp(self, host: str, port: int, **kw: Any) -> Any:
            addresses = await anyio.to_thread.run_sync(self.policy.resolve, host, port, self.resolver)
            approved.update(addresses)
            last: Exception | None = None
            for address in addresses:
                try:
                    return await self.inner.connect_tcp(address, port, **kw)
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                    last = e
            assert last is not None
            raise last

        async def connect_unix_socket(self, path: str, **kw: Any) -> Any:
            raise BlockedURL("reward network policy: Unix sockets are not allowed")

        async def sleep(self, seconds: float) -> None:
            await self.inner.sleep(seconds)

    return GuardedBackend, AsyncGuardedBackend


def _pool_options() -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    return {
        "ssl_context": httpx.create_ssl_context(trust_env=False),
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


def guarded_transport(policy: NetworkPolicy, resolver: Resolver = system_resolver) -> Any:
    """An ``httpx.HTTPTransport`` whose every connection obeys `policy` (no proxy from the
    environment: a proxy would connect on our behalf, unchecked)."""
    import httpcore
    import httpx

    backend, _ = _guarded_backends()
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(network_backend=backend(policy, resolver), **_pool_options())
    return transport


def guarded_async_transport(policy: NetworkPolicy, resolver: Resolver = system_resolver) -> Any:
    """`guarded_transport` for ``httpx.AsyncClient``."""
    import httpcore
    import httpx

    _, backend = _guarded_backends()
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        network_backend=backend(policy, resolver), **_pool_options()
    )
    return transport


def client_options(policy: NetworkPolicy | None, asynchronous: bool = False) -> dict[str, Any]:
    """Extra ``httpx.Client`` / ``AsyncClient`` arguments for `policy` (none without a policy)."""
    if policy is None:
        return {}
    transport = guarded_async_transport(policy) if asynchronous else guarded_transport(policy)
    return {"transport": transport, "trust_env": False}
