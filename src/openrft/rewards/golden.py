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

from openrft.rewards.scoring import RewardSet
from openrft.rewards.spec import RewardSpec


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


def run_golden_tests(
    specs: Sequence[RewardSpec], base_dir: str | Path | None = None, **reward_set_kwargs: Any
) -> list[GoldenFailure]:
    """Score every spec's `tests` in isolated workers; the cases that do not match (empty = all pass)."""
    with_tests = [s for s in specs if s.tests]
    if not with_tests:
        return []
    failures: list[GoldenFailure] = []
    reward_set_kwargs.setdefault("max_error_rate", 1.0)
    reward_set_kwargs.setdefault("pool_size", 1)
    with RewardSet(with_tests, base_dir, **reward_set_kwargs) as rs:
        for spec in with_tests:
            cases = spec.tests
            prompts, completions = [c.prompt for c in cases], [c.completion for c in cases]
            scores = rs.score(prompts, completions, [c.example for c in cases], [spec.name])
            column = scores.column(spec.name)
            errors = [tb.split(": ", 1) for tb in scores.tracebacks[spec.name]]
            details = {int(k.split()[1]): v for k, v in errors if k.startswith("sample ")}
            for k, (case, got) in enumerate(zip(cases, column, strict=True)):
                if k in details:
                    failures.append(GoldenFailure(spec.name, k, case.expected, None, details[k]))
                elif case.expected is None or math.isnan(got):
                    if not (case.expected is None and math.isnan(got)):
                        failures.append(
                            GoldenFailure(spec.name, k, case.expected, None if math.isnan(got) else got)
                        )
                elif abs(got - case.expected) > case.tolerance:
                    failures.append(GoldenFailure(spec.name, k, case.expected, got))
    return failures
