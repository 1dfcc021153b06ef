"""Reward functions: the contract, built-in graders, and an isolated runner.

Public API (imported lazily, so ``import openrft.rewards.worker`` stays light in the workers):

- `RewardSpec`, `GoldenCase` (spec): how a config names and bounds a function.
- `RewardSet`, `RewardScores` (scoring): score batches in warm isolated worker processes.
- `BUILTINS`, `BUILTIN_NAMES` (builtin): the built-in graders by name.
- `run_golden_tests`, `GoldenFailure` (golden): check specs against hand-written cases.
- `check_function` (loader): validate a function string without running user code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RewardSpec": "spec",
    "GoldenCase": "spec",
    "RewardSet": "scoring",
    "RewardScores": "scoring",
    "weighted_total": "scoring",
    "BUILTINS": "builtin",
    "BUILTIN_NAMES": "builtin",
    "run_golden_tests": "golden",
    "GoldenFailure": "golden",
    "check_function": "loader",
    "Outcome": "outcomes",
    "VALUE_CAP": "outcomes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"openrft.rewards.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'openrft.rewards' has no attribute {name!r}")
