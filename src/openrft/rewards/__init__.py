"""Reward functions: the contract, built-in graders, and an isolated runner.

Public API (imported lazily, so ``import openrft.rewards.worker`` stays light in the workers):

- `RewardSpec`, `GoldenCase` (spec): how a config names and bounds a function.
- `RewardSet`, `RewardScores` (scoring): score batches in warm isolated worker processes.
- `BUILTINS`, `BUILTIN_NAMES` (builtin): the built-in graders by name.
- `run_golden_tests`, `GoldenFailure`, `golden_results`, `check_golden_or_raise` (golden): check
  specs against hand-written cases; refuse to train when one fails.
- `apply_pending_updates` (live): swap reward functions of a running job between steps.
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
    "GoldenResult": "golden",
    "golden_results": "golden",
    "check_golden_or_raise": "golden",
    "check_function": "loader",
    "apply_pending_updates": "live",
    "Outcome": "outcomes",
    "VALUE_CAP": "outcomes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"openrft.rewards.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'openrft.rewards' has no attribute {name!r}")
