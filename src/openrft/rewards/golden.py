"""Golden tests of reward functions: the `tests:` cases of each spec, scored in the workers.

Example (YAML)::

    rewards:
      - name: fmt
        function: regex
        kwargs: {pattern: '<answer>.*</answer>'}
        tests:
          - {completion: '<answer>4</answer>', expected: 1.0}
          - {completion: 'four', expected: 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.errors import RewardError
from openrft.rewards.scoring import RewardSet
from openrft.rewards.spec import RewardSpec

_CHUNK = 5  # RewardScores keeps the last 5 error details per batch: score cases 5 at a time


@dataclass(frozen=True)
class GoldenFailure:
    """A golden case whose score is not the expected one."""

    reward: str
    case: int
    expected: float | None
    got: float | None
    detail: str = ""

    @property
    def message(self) -> str:
        """One line (plus the error's traceback when the function failed)."""
        head = f"reward {self.reward!r} test #{self.case}: expected {self.expected!r}, got {self.got!r}"
        return f"{head}\n{self.detail}" if self.detail else head

    @property
    def short(self) -> str:
        """One line: what was expected and what came back (or the error's last line)."""
        if self.detail:
            last = [line for line in self.detail.strip().splitlines() if line.strip()]
            got = f"an error ({last[-1].strip()[:160] if last else 'no detail'})"
        else:
            got = repr(self.got)
        return f"{self.reward!r} #{self.case}: expected {self.expected!r}, got {got}"


@dataclass(frozen=True)
class GoldenResult:
    """The outcome of one golden case (`passed`, or why not)."""

    reward: str
    case: int
    completion: str
    expected: float | None
    got: float | None
    passed: bool
    detail: str = ""  # the error (traceback) when the function failed

    def failure(self) -> GoldenFailure:
        return GoldenFailure(self.reward, self.case, self.expected, self.got, self.detail)


def _judge(spec: RewardSpec, k: int, got: float, detail: str | None) -> GoldenResult:
    case = spec.tests[k]
    value = None if math.isnan(got) else got
    if detail is not None:
        return GoldenResult(spec.name, k, case.completion, case.expected, None, False, detail)
    if case.expected is None or value is None:
        passed = case.expected is None and value is None
    else:
        passed = abs(value - case.expected) <= case.tolerance
    return GoldenResult(spec.name, k, case.completion, case.expected, value, passed)


def _results_with(rs: RewardSet, specs: Sequence[RewardSpec]) -> list[GoldenResult]:
    results: list[GoldenResult] = []
    for spec in specs:
        cases = spec.tests
        for start in range(0, len(cases), _CHUNK):
            chunk = cases[start : start + _CHUNK]
            scores = rs.score(
                [c.prompt for c in chunk],
                [c.completion for c in chunk],
                [c.example for c in chunk],
                [spec.name],
            )
            errors = [tb.split(": ", 1) for tb in scores.tracebacks[spec.name]]
            details = {int(k.split()[1]): v for k, v in errors if k.startswith("sample ")}
            for j, got in enumerate(scores.column(spec.name)):
                results.append(_judge(spec, start + j, got, details.get(j)))
    return results


def golden_results(
    specs: Sequence[RewardSpec],
    base_dir: str | Path | None = None,
    *,
    reward_set: RewardSet | None = None,
    **reward_set_kwargs: Any,
) -> list[GoldenResult]:
    """Score every spec's `tests` in isolated workers; one result per case, in order.

    `reward_set`: score with these (already started) workers instead of starting new ones; it
    must hold every spec with tests under the same name. A function that raises, times out or
    returns a non-number fails its case, whatever the expected value.
    """
    with_tests = [s for s in specs if s.tests]
    if not with_tests:
        return []
    if reward_set is not None:
        return _results_with(reward_set, with_tests)
    reward_set_kwargs.setdefault("max_error_rate", 1.0)
    reward_set_kwargs.setdefault("pool_size", 1)
    with RewardSet(with_tests, base_dir, **reward_set_kwargs) as rs:
        return _results_with(rs, with_tests)


def run_golden_tests(
    specs: Sequence[RewardSpec], base_dir: str | Path | None = None, **reward_set_kwargs: Any
) -> list[GoldenFailure]:
    """Score every spec's `tests` in isolated workers; the cases that do not match (empty = all pass)."""
    results = golden_results(specs, base_dir, **reward_set_kwargs)
    return [r.failure() for r in results if not r.passed]


def check_golden_or_raise(cfg: Any, reward_set: RewardSet | None = None) -> list[GoldenResult]:
    """Run the golden cases of a run config's rewards; raise when one fails (training must not start).

    Args:
        cfg: a `RunConfig` (its `rewards` and `base_dir` are used).
        reward_set: the run's started `RewardSet`, to reuse its workers (recommended in the trainer).

    Returns:
        Every case's result (empty when no reward has `tests`).

    Raises:
        RewardError: one line naming each failing case (reward, case number, expected, got).
    """
    results = golden_results(cfg.rewards, cfg.base_dir, reward_set=reward_set)
    failed = [r.failure() for r in results if not r.passed]
    if failed:
        listed = "; ".join(f.short for f in failed[:5]) + ("; ..." if len(failed) > 5 else "")
        raise RewardError(
            f"reward golden tests failed ({len(failed)} of {len(results)} cases): {listed}. Fix the function "
            "or the case (rewards[].tests); `openrft rewards test CONFIG` shows every case"
        )
    return results
