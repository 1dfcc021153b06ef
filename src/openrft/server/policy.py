"""What a tenant's reward specs may ask of this server: the operator's allow-lists.

A reward spec can ask for secrets (`env`, and the `api_key_env` / `auth_env` kwargs of the
network built-ins), for the network (`allow_network`, implied by `llm_judge` with a url and by
`remote`) and for URLs (`kwargs.url` and other URL kwargs). On a user's own machine
(`openrft train`) the user is the operator and all of that is theirs to ask. On a server, the
operator decides:

    openrft server --allow-reward-env JUDGE_API_KEY --allow-reward-host api.openai.com

- an env name must be allow-listed (``--allow-reward-env``);
- network access needs at least one allow-listed host (``--allow-reward-host``);
- a URL's host must be allow-listed (a name, ``*.domain``, an IP/CIDR, or ``*`` for any public
  host), and must not be, or resolve to, a loopback, link-local, metadata, private or other
  non-public address unless listed (`openrft.rewards.url_guard`; the same rules are enforced
  again by the graders at every connection, so a later DNS answer cannot get around them).

`RewardPolicy.check_config` / `check_specs` raise `RewardPolicyError` (answered 422, the message
names the field) from the service layer (`services.resolve_job_config`, `services.run_reward_tests`).

Tenants' own code (registered rewards, their golden tests) runs only in the bubblewrap sandbox
(`openrft.rewards.jail`), required: where the sandbox does not work, the server refuses such code
(`RewardCodeRefused`, answered 403, saying why) unless the operator started it with
``--trust-reward-code`` (then it runs with the weaker isolation, as `openrft train` does there).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openrft.errors import ConfigError
from openrft.rewards import jail
from openrft.rewards.http_graders import network_defaults
from openrft.rewards.url_guard import BlockedURL, NetworkPolicy, literal_ip

if TYPE_CHECKING:
    from openrft.config import RunConfig
    from openrft.rewards.spec import RewardSpec
    from openrft.server.settings import ServerSettings

_URL_KEY = re.compile(r"(?:^|_)(?:url|urls|endpoint|api_base)$", re.IGNORECASE)
_SECRET_KWARGS = {"llm_judge": "api_key_env", "remote": "auth_env"}


class RewardPolicyError(ConfigError):
    """A reward spec asks for something this server's operator did not allow."""


class RewardCodeRefused(ConfigError):
    """This server does not run tenants' code: no sandbox here, and the operator did not trust it."""


@dataclass(frozen=True)
class RewardPolicy:
    """The operator's allow-lists for tenants' reward specs (see the module docstring)."""

    allow_env: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    trust_code: bool = False  # --trust-reward-code: run tenants' code even without the sandbox

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> RewardPolicy:
        return cls(
            tuple(settings.allow_reward_env), tuple(settings.allow_reward_hosts), settings.trust_reward_code
        )

    @property
    def isolation(self) -> str:
        """The reward workers' isolation mode (`openrft.rewards.pool`) for this server's jobs and
        golden tests: the sandbox, required, where it works; elsewhere 'auto', which runs only
        built-ins unless the operator trusts tenants' code (`check_code` refuses the rest)."""
        return "sandbox" if jail.available() is None else "auto"

    def check_code(self, what: str) -> None:
        """`RewardCodeRefused` naming `what` when tenants' code may not run on this server."""
        why = jail.available()
        if why is None or self.trust_code:
            return
        raise RewardCodeRefused(
            f"{what}: this server does not run submitted reward code: the reward sandbox is unavailable "
            f"here ({why}); the operator can install bubblewrap, or start the server with "
            "--trust-reward-code to run it with weaker isolation (its own uid, the whole file system "
            "readable)"
        )

    @property
    def network(self) -> NetworkPolicy:
        """The outbound rules the graders of this server's jobs run under."""
        return NetworkPolicy(self.allow_hosts)

    def check_config(self, cfg: RunConfig) -> None:
        """Check the rewards of a run config and of each of its stages."""
        from openrft.config import stage_config

        self.check_specs(cfg.rewards)
        for i in range(len(cfg.stages)):
            stage = stage_config(cfg, i)
            if stage.rewards != cfg.rewards:
                self.check_specs(stage.rewards, f"stages[{i}].rewards")

    def check_specs(self, specs: Sequence[RewardSpec], where: str = "rewards") -> None:
        """RewardPolicyError naming the first field of `specs` that asks for more than allowed."""
        for i, spec in enumerate(specs):
            self.check_spec(spec, f"{where}[{i}].")

    def check_spec(self, spec: RewardSpec, label: str = "") -> None:
        """`check_specs` for one spec; `label` prefixes the field names (e.g. 'rewards[0].')."""
        if ":" in spec.function:  # not a built-in: the tenant's own code
            self.check_code(f"{label}function")
        self._check_env(spec, label)
        self._check_network(spec, label)
        for key, url in url_kwargs(spec.kwargs):
            self.check_url(url, f"{label}kwargs.{key}")

    def _check_env(self, spec: RewardSpec, label: str) -> None:
        secret_key = _SECRET_KWARGS.get(spec.function)
        for name in spec.required_env():
            if name in self.allow_env:
                continue
            field = "env" if name in spec.env else f"kwargs.{secret_key}"
            raise RewardPolicyError(
                f"{label}{field}: {name} is not allowed by this server; the operator can allow it with "
                f"--allow-reward-env {name}"
            )

    def _check_network(self, spec: RewardSpec, label: str) -> None:
        if not spec.allow_network or self.allow_hosts:
            return
        implied = bool(network_defaults(spec.function, spec.kwargs).get("allow_network"))
        what = f"{spec.function} calls an HTTP endpoint; drop that reward" if implied else "remove it"
        raise RewardPolicyError(
            f"{label}allow_network: this server allows rewards no network access ({what}), or the "
            "operator can allow hosts with --allow-reward-host HOST"
        )

    def check_url(self, url: str, field: str) -> None:
        """RewardPolicyError if `url` is not http(s) or its host is refused (checked as the
        grader's client will parse it, and, for a name allowed by ``*``, after resolving it)."""
        import httpx

        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise RewardPolicyError(f"{field}: {url!r} is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise RewardPolicyError(f"{field}: {url!r} must be an http:// or https:// URL with a host")
        host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            self.network.check_host(host)
            ip = literal_ip(host)
            if ip is not None:
                addresses = [str(ip)]
            else:  # a name listed by the operator is trusted wherever it resolves
                addresses = [] if self.network.host_listed(host) else _addresses_now(host, port)
            if addresses:  # a name that does not resolve yet is checked by the graders when they connect
                self.network.check_addresses(host, addresses)
        except BlockedURL as e:
            why = str(e).removeprefix("reward network policy: ")
            raise RewardPolicyError(f"{field}: {url!r}: {why}") from None


def _addresses_now(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now; none when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def url_kwargs(kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, URL) for the kwargs that name URLs: ``url``, ``*_url``, ``urls``, ``endpoint``,
    ``api_base`` (a text or a list of texts)."""
    found: list[tuple[str, str]] = []
    for key, value in kwargs.items():
        if not _URL_KEY.search(str(key)):
            continue
        if isinstance(value, list):
            found += [(f"{key}[{j}]", str(v)) for j, v in enumerate(value) if v is not None]
        elif value is not None:
            found.append((key, str(value)))
    return found
