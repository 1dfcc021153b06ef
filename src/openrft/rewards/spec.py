"""Reward specs: how a config names a reward function, weights it and bounds its run.

A spec only *names* a function; nothing here imports or runs user code. The string forms:

- a built-in name: ``countdown.format``, ``regex``, ``numeric_match`` ... (see `BUILTIN_NAMES`);
- ``package.module:function``: an importable module (searched on the trainer's ``sys.path``,
  the config file's folder and the current directory);
- ``path/to/file.py:function``: a Python file, relative to the config file's folder.

Example (YAML)::

    rewards:
      - name: format
        function: countdown.format
      - name: mine
        function: rewards.py:score     # file next to the config
        weight: 0.5
        range: [0, 1]                  # values are clipped into this range
        timeout_s: 5
      - name: judge                    # an LLM judge (network built-in: allow_network is implied)
        function: llm_judge
        kwargs: {rubric: "Is the answer polite?", url: "http://127.0.0.1:8000/v1",
                 model: gpt-4o-mini, api_key_env: OPENAI_API_KEY, min_score: 0, max_score: 10}

Secrets: reward workers start with a scrubbed environment. A variable reaches a function's
worker only when its spec names it: in `env`, or as the `api_key_env` / `auth_env` kwarg of the
`llm_judge` / `remote` built-ins. Functions that name no variable run in workers that never see it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openrft.rewards.builtin import BUILTIN_NAMES
from openrft.rewards.http_graders import network_defaults, secret_env_names

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class GoldenCase(BaseModel):
    """A hand-written check of a reward: this completion (and example) must score `expected`.

    Run with `openrft.rewards.run_golden_tests(specs)`; `expected: null` means the function must
    return None (not applicable).
    """

    model_config = ConfigDict(extra="forbid")

    completion: str = Field(description="The completion to score.")
    example: dict[str, Any] = Field(default_factory=dict, description="The dataset row (all columns).")
    prompt: str = Field("", description="The prompt text the function receives.")
    expected: float | None = Field(description="Expected value; null = the function returns None.")
    tolerance: float = Field(1e-6, ge=0, description="Allowed absolute difference from `expected`.")


class RewardSpec(BaseModel):
    """One reward function of a run: what to call, its weight, and the limits it runs under."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Metric name: logged as rewards/<name>/mean, .../std, .../errors.")
    function: str = Field(
        description="Built-in name (e.g. 'countdown.format', 'regex'), 'package.module:function', "
        "or 'path/to/file.py:function' (relative to the config file's folder)."
    )
    weight: float = Field(1.0, description="Weight of this function in the summed reward.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments bound to the function (e.g. a regex `pattern`)."
    )
    range: tuple[float, float] | None = Field(
        None, description="[low, high]: valid values are clipped into this range."
    )
    timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Wall-clock limit per call (per sample, or per batched call)."
    )
    allow_network: bool = Field(
        False,
        description="Let this function open network connections (its worker keeps the host's network "
        "namespace, so loopback servers are reachable). Implied for the llm_judge (with a url) and "
        "remote built-ins.",
    )
    env: list[str] = Field(
        default_factory=list,
        description="Environment variables passed from the trainer into this function's worker (e.g. "
        "an API key); all others are scrubbed. A listed variable that is not set stops the run at start.",
    )
    memory_mb: int = Field(2048, ge=256, description="Address-space cap of the worker process running it.")
    tests: list[GoldenCase] = Field(default_factory=list, description="Golden cases checked before training.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"reward name {value!r} must be letters, digits, '_', '.' or '-' (it becomes the metric "
                f"rewards/{value}/mean); rename it"
            )
        return value

    @field_validator("function")
    @classmethod
    def _check_function(cls, value: str) -> str:
        value = value.strip()
        if ":" in value:
            target, _, attr = value.rpartition(":")
            if not target or not attr.isidentifier():
                raise ValueError(
                    f"function {value!r}: write 'package.module:function' or 'path/file.py:function' "
                    "with a Python identifier after the last ':'"
                )
            return value
        if value not in BUILTIN_NAMES:
            close = difflib.get_close_matches(value, BUILTIN_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"function {value!r} is not a built-in reward ({hint}built-ins: {', '.join(BUILTIN_NAMES)}); "
                "for your own code write 'package.module:function' or 'path/file.py:function'"
            )
        return value

    @field_validator("range")
    @classmethod
    def _check_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range {list(value)}: write [low, high] with low < high")
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"env: {name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _check_weight(self) -> RewardSpec:
        if self.weight != self.weight or abs(self.weight) == float("inf"):
            raise ValueError(f"reward {self.name!r}: weight must be a finite number")
        return self

    @model_validator(mode="after")
    def _network_builtins(self) -> RewardSpec:
        """Defaults of the network built-ins (llm_judge, remote): network on, a timeout that
        covers their retries, more memory for a local judge model. Explicit values are kept."""
        defaults = network_defaults(self.function, self.kwargs)
        for key, value in defaults.items():
            if key not in self.model_fields_set:
                setattr(self, key, value)
        if defaults.get("allow_network") and not self.allow_network:
            raise ValueError(
                f"reward {self.name!r}: {self.function} calls an HTTP endpoint, so it needs network; "
                "remove `allow_network: false`"
            )
        return self

    def required_env(self) -> tuple[str, ...]:
        """Variables this function's worker must receive (`env` plus the built-ins' key names)."""
        return tuple(dict.fromkeys([*self.env, *secret_env_names(self.function, self.kwargs)]))

    def worker_env(self) -> tuple[str, ...]:
        """All variables passed into this function's worker (sorted): the required ones, plus
        the model cache variables a `local_model` judge needs when they are set."""
        extra = ("OPENRFT_HOME", "HF_HOME", "HF_HUB_OFFLINE") if self.kwargs.get("local_model") else ()
        return tuple(sorted({*self.required_env(), *extra}))
