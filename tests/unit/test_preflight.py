"""Pre-flight report: statistics and advice against hand-computed values."""

from __future__ import annotations

import doctest
import math

import pytest

from openrft.evaluation import preflight as pf
from openrft.evaluation.preflight import Scored

NAN = float("nan")


def test_docstring_examples() -> None:
    result = doctest.testmod(pf)
    assert result.attempted >= 12 and result.failed == 0


def test_basic_statistics() -> None:
    assert pf.zero_variance_fraction([1, 1, 0, 1, 0, 0], 2) == pytest.approx(2 / 3)
    assert pf.zero_variance_fraction([1.0, 1.0 + 1e-9, 0.0, NAN], 2) == 1.0  # tiny diffs and single values
    with pytest.raises(ValueError, match="groups of 4"):
        pf.groups([1, 2, 3], 4)


def test_correlations_pair_every_two_functions() -> None:
    names = ["a", "b", "c"]
    cols = [[1, 2, 3], [3, 2, 1], [1, 1, 1]]
    assert pf.correlations(names, cols) == {"a~b": pytest.approx(-1.0), "a~c": None, "b~c": None}


def test_variance_shares_hand_values() -> None:
    cols = [[1, 0, 1, 0], [1, 0, 0, 0]]
    # centred: f1 (.5,-.5,.5,-.5), f2 (.5,-.5,0,0); d = (1,-1,.5,-.5), sum d^2 = 2.5
    assert pf.variance_shares(cols, [1.0, 1.0], 2) == pytest.approx([1.5 / 2.5, 1.0 / 2.5])
    # weight 2 on f1: c1 = (1,-1,1,-1), d = (1.5,-1.5,1,-1), sum d^2 = 6.5
    assert pf.variance_shares(cols, [2.0, 1.0], 2) == pytest.approx([5 / 6.5, 1.5 / 6.5])
    assert pf.variance_shares([[1, 1, 0, 0]], [1.0], 2) is None  # no within-group differences
    # f0 varies 4x as much (squared) as f1: weight 1 * sqrt(1/4)
    assert pf.balancing_weight([[0, 2, 0, 2], [0, 1, 0, 1]], [1.0, 1.0], 2, 0) == pytest.approx(0.5)


def test_group_size_math() -> None:
    assert pf.p_variance(0.5, 5) == pytest.approx(1 - 2 / 32)
    assert pf.p_variance(0.1, 8) == pytest.approx(1 - 0.1**8 - 0.9**8)
    assert pf.p_variance(0.3, 1) == 0.0
    assert pf.group_size_needed([0.5]) == 5  # 0.875 at 4, 0.9375 at 5
    assert pf.group_size_needed([0.1]) == 22  # 1 - 0.9^21 = 0.891, 1 - 0.9^22 = 0.902
    assert pf.group_size_needed([0.0, 0.5]) is None
    assert pf.group_size_needed([0.0, 0.5], target=0.45) == 5
    assert pf.group_size_needed([]) is None
    assert pf.shrunk_rates([0, 2], 2) == [0.25, 0.75]  # pooled 0.5, two pseudo-samples
    assert pf.shrunk_rates([0, 0], 4) == [0.0, 0.0]
    assert pf.success_counts([1.0, NAN, 0.99, 2.0], 2, 1.0) == [1, 1]


def scored() -> Scored:
    # 2 prompts x 2 samples; fmt = [1,0 | 1,1], eq = [0,0 | 1,0], weights 1 and 2
    return Scored(
        names=["fmt", "eq"],
        weights=[1.0, 2.0],
        k=2,
        values=[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]],
        errors={"fmt": 0, "eq": 0},
        tracebacks={"fmt": [], "eq": []},
        lengths=[10, 20, 30, 40],
        truncated=[False, False, False, True],
        prompts=["p0", "p1"],
        completions=["a", "b", "c", "d"],
    )


def test_build_report_hand_values() -> None:
    r = pf.build_report(scored(), success_reward="eq", threshold=1.0, group_size=8, max_error_rate=0.5)
    fmt, eq = r["functions"]["fmt"], r["functions"]["eq"]
    assert (fmt["mean"], eq["mean"]) == (0.75, 0.25)
    assert fmt["std"] == pytest.approx(math.sqrt(0.1875), abs=1e-4)
    assert (fmt["zero_variance_fraction"], eq["zero_variance_fraction"]) == (0.5, 0.5)
    # totals (1, 0 | 3, 1): both groups vary
    assert r["total"] == {"mean": 1.25, "std": pytest.approx(1.0897, abs=1e-4), "zero_variance_fraction": 0.0}
    # centred: fmt (.5,-.5,0,0), 2*eq (0,0,1,-1): shares .5/2.5 and 2/2.5
    assert (fmt["variance_share"], eq["variance_share"]) == (0.2, 0.8)
    assert r["correlations"] == {"fmt~eq": pytest.approx(1 / 3, abs=1e-3)}
    assert r["completions"] == {"mean_length": 25.0, "max_length": 40, "clipped_ratio": 0.25}
    s = r["success"]
    assert (s["successes"], s["rate"], s["per_prompt_successes"]) == (1, 0.25, [0, 1])
    assert (s["prompts_never"], s["prompts_mixed"], s["prompts_always"]) == (1, 1, 0)
    # shrunk rates (0 + .5)/4 = .125 and (1 + .5)/4 = .375
    expected_pv = (pf.p_variance(0.125, 8) + pf.p_variance(0.375, 8)) / 2
    assert s["p_variance_at_group_size"] == pytest.approx(expected_pv, abs=1e-4)
    assert s["group_size_needed"] == pf.group_size_needed([0.125, 0.375])
    assert pf.first_binary(scored()) == "fmt"


def report_with(**changes: object) -> dict:
    r = pf.build_report(scored(), success_reward="eq", threshold=1.0, group_size=8, max_error_rate=0.5)
    for key, value in changes.items():
        r[key] = value
    return r


def codes(report: dict) -> dict[str, str]:
    return {a["code"]: a["level"] for a in pf.advise(report, max_error_rate=0.5, max_new_tokens=64)}


def test_advice_for_a_healthy_setup() -> None:
    data = Scored(
        names=["ok"],
        weights=[1.0],
        k=4,
        values=[[v] for v in [1, 0, 1, 0, 0, 1, 1, 0]],
        errors={"ok": 0},
        tracebacks={"ok": []},
        lengths=[5] * 8,
        truncated=[False] * 8,
    )
    r = pf.build_report(data, success_reward="ok", threshold=1.0, group_size=8, max_error_rate=0.5)
    found = codes(r)
    assert found == {"group_size": "ok", "ready": "ok"}


def test_advice_no_success_means_sft_warm_start() -> None:
    data = scored()
    data.values = [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    r = pf.build_report(data, success_reward="eq", threshold=1.0, group_size=8, max_error_rate=0.5)
    found = codes(r)
    assert found["sft_warm_start"] == "error"
    assert "function_constant" not in found  # the success reward's own case is the SFT advice
    assert "group_size" not in found


def test_advice_errors_constant_clipping_dominance_and_correlation() -> None:
    data = Scored(
        names=["big", "small", "const", "broken", "twin", "anti"],
        weights=[10.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        k=2,
        values=[
            [1.0, 0.0, 0.5, 0.0, 1.0, 0.0],
            [0.0, 0.5, 0.5, 0.0, 0.0, 1.0],
            [1.0, 0.5, 0.5, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.5, 0.0, 0.0, 1.0],
        ],
        errors={"big": 0, "small": 0, "const": 0, "broken": 3, "twin": 0, "anti": 0},
        tracebacks={"broken": ["sample 3: exception: Traceback...\nKeyError: 'answer'"]},
        lengths=[64, 64, 64, 10],
        truncated=[True, True, True, False],
    )
    r = pf.build_report(data, success_reward="big", threshold=1.0, group_size=2, max_error_rate=0.5)
    advice = pf.advise(r, max_error_rate=0.5, max_new_tokens=64)
    found = {a["code"]: a for a in advice}
    assert found["function_errors"]["level"] == "error"
    assert "KeyError: 'answer'" in found["function_errors"]["message"]
    assert "training would stop" in found["function_errors"]["message"]
    assert found["function_constant"]["message"].startswith("'const' returned 0.5")
    assert found["dominated"]["level"] == "warn" and "'big'" in found["dominated"]["message"]
    assert found["redundant"]["message"].startswith("'big' and 'twin'")
    assert found["conflict"]["level"] == "warn"
    assert "75% of completions hit grpo.max_new_tokens=64" in found["clipped"]["message"]
    assert "ready" not in found
    assert [a["level"] for a in advice] == sorted(
        (a["level"] for a in advice), key=["error", "warn", "info", "ok"].index
    )


def test_advice_difficulty_and_group_size() -> None:
    easy = report_with()
    easy["success"] = dict(easy["success"], rate=0.95, prompts_always=2, per_prompt_successes=[2, 2])
    assert codes(easy)["too_easy"] == "warn"
    hard = report_with()
    hard["success"] = dict(hard["success"], rate=0.05, group_size_needed=40, p_variance_at_group_size=0.3)
    found = codes(hard)
    assert found["too_hard"] == "warn" and found["group_size"] == "warn"
    stuck = report_with()
    stuck["success"] = dict(stuck["success"], group_size_needed=None)
    assert codes(stuck)["group_size"] == "warn"
    none = report_with(success=None)
    assert codes(none)["no_success_reward"] == "info"
