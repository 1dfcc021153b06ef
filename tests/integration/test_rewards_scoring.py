"""RewardSet end to end: signatures, loading forms, weights, error-rate stop, overlap, golden tests."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from openrft.errors import RewardError
from openrft.rewards import GoldenCase, RewardSet, RewardSpec, run_golden_tests

USER_REWARDS = """
import asyncio, time

def per_sample(prompt, completion, example):
    return float(completion == example["answer"])

def batched(prompts, completions, answer, **columns):
    return [float(c == a) for c, a in zip(completions, answer)]

async def async_sample(prompt, completion, example):
    await asyncio.sleep(0.05)
    return 0.5

async def async_batched(prompts, completions, **columns):
    await asyncio.sleep(0.01)
    return [len(c) / 10 for c in completions]

def only_some(prompt, completion, example):
    return None if example.get("skip") else 1.0

def big(prompt, completion, example):
    return 7.0

def scaled(prompt, completion, example, *, factor):
    return factor * len(completion)

def numpy_column(prompt, completion, example):
    return float(example["vec"].sum())

def slow(prompt, completion, example):
    time.sleep(0.3)
    return 1.0

def boom(prompt, completion, example):
    raise ValueError("boom " + completion)

def flaky(prompt, completion, example):
    if completion.startswith("bad"):
        raise RuntimeError("flaky failure")
    return 1.0

def hang(prompt, completion, example):
    time.sleep(100)
"""


@pytest.fixture(scope="module")
def rewards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_rewards.py").write_text(USER_REWARDS)
    pkg = folder / "acme_rewards_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "grading.py").write_text(
        "def has_x(prompt, completion, example):\n    return float('x' in completion)\n"
    )
    return folder


@pytest.fixture(scope="module")
def mixed(rewards_dir: Path) -> Iterator[RewardSet]:
    specs = [
        {"name": "per_sample", "function": "user_rewards.py:per_sample"},
        {"name": "batched", "function": "user_rewards.py:batched", "weight": 2.0},
        {"name": "async_sample", "function": "user_rewards.py:async_sample"},
        {"name": "async_batched", "function": "user_rewards.py:async_batched"},
        {"name": "only_some", "function": "user_rewards.py:only_some"},
        {"name": "big", "function": "user_rewards.py:big", "range": (0.0, 1.0)},
        {"name": "scaled", "function": "user_rewards.py:scaled", "kwargs": {"factor": 0.1}},
        {"name": "module", "function": "acme_rewards_pkg.grading:has_x", "weight": 0.0},
        {"name": "builtin", "function": "exact_match_ci", "weight": 0.0},
    ]
    with RewardSet(specs, rewards_dir) as rs:
        yield rs


def test_signatures_are_detected(mixed: RewardSet) -> None:
    styles = mixed.call_styles()
    assert styles["per_sample"] == {"batched": False, "is_async": False}
    assert styles["batched"] == {"batched": True, "is_async": False}
    assert styles["async_sample"] == {"batched": False, "is_async": True}
    assert styles["async_batched"] == {"batched": True, "is_async": True}


def test_all_forms_score_and_combine(mixed: RewardSet) -> None:
    completions = ["x", "yy", "Z", "x"]
    examples = [{"answer": "x"}, {"answer": "no", "skip": True}, {"answer": "z"}, {"answer": "X"}]
    scores = mixed.score(["p"] * 4, completions, examples)
    assert scores.column("per_sample") == [1.0, 0.0, 0.0, 0.0]
    assert scores.column("batched") == [1.0, 0.0, 0.0, 0.0]
    assert scores.column("async_sample") == [0.5] * 4
    assert scores.column("async_batched") == pytest.approx([0.1, 0.2, 0.1, 0.1])
    assert scores.column("only_some")[1] != scores.column("only_some")[1]  # NaN: not applicable
    assert scores.none["only_some"] == 1
    assert scores.column("big") == [1.0] * 4  # clipped to the declared range
    assert scores.column("scaled") == pytest.approx([0.1, 0.2, 0.1, 0.1])
    assert scores.column("module") == [1.0, 0.0, 0.0, 1.0]
    assert scores.column("builtin") == [1.0, 0.0, 1.0, 1.0]
    # total = weighted sum over the functions with a value (only_some's NaN is skipped)
    expected0 = 1 + 2 * 1 + 0.5 + 0.1 + 1 + 1 + 0.1
    expected1 = 0 + 0 + 0.5 + 0.2 + 1 + 0.2
    assert scores.total[0] == pytest.approx(expected0)
    assert scores.total[1] == pytest.approx(expected1)
    assert sum(scores.errors.values()) == 0 and scores.time_s > 0


def test_subset_of_functions_and_empty_batch(mixed: RewardSet) -> None:
    scores = mixed.score(["p"], ["x"], [{"answer": "x"}], functions=["per_sample"])
    assert scores.column("per_sample") == [1.0]
    assert math.isnan(scores.column("batched")[0])
    empty = mixed.score([], [], [])
    assert empty.values == [] and empty.total == []
    with pytest.raises(ValueError, match="2 prompts, 1 completions"):
        mixed.submit(["p", "p"], ["x"], [{}])


def test_columns_of_any_type_reach_the_function(rewards_dir: Path) -> None:
    spec = RewardSpec(name="np", function="user_rewards.py:numpy_column")
    with RewardSet([spec], rewards_dir, pool_size=1) as rs:
        scores = rs.score(["p"], ["c"], [{"vec": np.arange(4.0)}])
    assert scores.column("np") == [6.0]


def test_submit_overlaps_with_the_caller(rewards_dir: Path) -> None:
    with RewardSet([{"name": "slow", "function": "user_rewards.py:slow"}], rewards_dir, pool_size=2) as rs:
        t0 = time.perf_counter()
        future = rs.submit(["p"] * 4, ["c"] * 4, [{}] * 4)
        submitted = time.perf_counter() - t0
        assert not future.done()
        scores = future.result(timeout=30)
        elapsed = time.perf_counter() - t0
    assert submitted < 0.1
    assert scores.column("slow") == [1.0] * 4
    assert elapsed < 4 * 0.3  # two workers in parallel


def test_error_rate_stops_the_run_with_tracebacks(rewards_dir: Path) -> None:
    specs = [
        {"name": "boom", "function": "user_rewards.py:boom"},
        {"name": "fine", "function": "regex", "kwargs": {"pattern": "."}},
    ]
    with RewardSet(specs, rewards_dir, max_error_rate=0.5, min_samples_for_error_rate=4) as rs:
        with pytest.raises(RewardError) as err:
            rs.score(["p"] * 6, [f"c{i}" for i in range(6)], [{}] * 6)
        text = str(err.value)
        assert text.startswith(
            "reward 'boom' (user_rewards.py:boom): 4 of 6 calls failed "
            "(67%, over max_error_rate 0.5; the rest of this batch was skipped); fix the function"
        )
        assert "ValueError: boom c" in text and 'user_rewards.py", line' in text
        assert rs.stats()["boom"]["errors"] == 4


def test_error_rate_is_cumulative_and_respects_min_samples(rewards_dir: Path) -> None:
    spec = {"name": "flaky", "function": "user_rewards.py:flaky"}
    with RewardSet([spec], rewards_dir, max_error_rate=0.5, min_samples_for_error_rate=8) as rs:
        first = rs.score(["p"] * 4, ["bad", "bad", "bad", "ok"], [{}] * 4)  # 75%, but only 4 calls
        assert first.errors["flaky"] == 3
        assert sorted(tb.split(":")[0] for tb in first.tracebacks["flaky"]) == [
            "sample 0",
            "sample 1",
            "sample 2",
        ]
        assert all(
            "exception: Traceback" in tb and "RuntimeError: flaky" in tb for tb in first.tracebacks["flaky"]
        )
        second = rs.score(["p"] * 4, ["ok"] * 4, [{}] * 4)  # 3 / 8 = 37.5%
        assert second.errors["flaky"] == 0
        with pytest.raises(
            RewardError, match=r"reward 'flaky' .*: 7 of 12 calls failed \(58%, over max_error_rate 0.5"
        ):
            rs.score(["p"] * 4, ["bad"] * 4, [{}] * 4)  # 7 / 12


def test_a_doomed_batch_stops_early(rewards_dir: Path) -> None:
    spec = {"name": "hang", "function": "user_rewards.py:hang", "timeout_s": 0.3}
    with RewardSet([spec], rewards_dir, max_error_rate=0.1, min_samples_for_error_rate=4, pool_size=1) as rs:
        t0 = time.perf_counter()
        with pytest.raises(RewardError, match="timeout"):
            rs.score(["p"] * 40, ["c"] * 40, [{}] * 40)  # 40 timeouts would take 12 s
        assert time.perf_counter() - t0 < 5


def test_load_errors_are_reported_at_construction(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "import math\nimport not_a_real_module_xyz\n\ndef f(a, b, c):\n    return 1\n"
    )
    with pytest.raises(RewardError) as err:
        RewardSet([{"name": "b", "function": "broken.py:f"}], tmp_path, pool_size=1)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path / 'broken.py'}:2: reward 'b' (broken.py:f) cannot be loaded")
    assert "ModuleNotFoundError" in text
    (tmp_path / "odd.py").write_text("def f(x):\n    return 1\n")
    with pytest.raises(RewardError, match="cannot tell how to call"):
        RewardSet([{"name": "o", "function": "odd.py:f"}], tmp_path, pool_size=1)
    with pytest.raises(RewardError, match="file not found"):
        RewardSet([{"name": "m", "function": "missing.py:f"}], tmp_path)


def test_golden_tests(rewards_dir: Path) -> None:
    specs = [
        RewardSpec(
            name="fmt",
            function="regex",
            kwargs={"pattern": "^<answer>.*</answer>$"},
            tests=[
                GoldenCase(completion="<answer>1</answer>", expected=1.0),
                GoldenCase(completion="1", expected=1.0),
            ],
        ),
        RewardSpec(
            name="some",
            function="user_rewards.py:only_some",
            tests=[
                GoldenCase(completion="c", example={"skip": True}, expected=None),
                GoldenCase(completion="c", expected=None),
            ],
        ),
        RewardSpec(
            name="boom", function="user_rewards.py:boom", tests=[GoldenCase(completion="c", expected=0.0)]
        ),
    ]
    failures = run_golden_tests(specs, rewards_dir)
    assert [(f.reward, f.case) for f in failures] == [("fmt", 1), ("some", 1), ("boom", 0)]
    assert failures[0].got == 0.0 and failures[1].got == 1.0
    assert "ValueError: boom c" in failures[2].message


def test_close_stops_workers_and_refuses_more_work(rewards_dir: Path) -> None:
    rs = RewardSet([{"name": "p", "function": "user_rewards.py:per_sample"}], rewards_dir, pool_size=2)
    pids = rs.worker_pids()
    assert len(pids) >= 1
    rs.close()
    with pytest.raises(RuntimeError, match="closed"):
        rs.submit(["p"], ["c"], [{"answer": "c"}])
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
