"""LLM judge and remote grader: score parsing, judge messages, retry schedule, spec defaults."""

from __future__ import annotations

import doctest

import pytest

from openrft.errors import RewardError
from openrft.rewards import http_graders as hg
from openrft.rewards.loader import check_function
from openrft.rewards.spec import RewardSpec


def test_docstring_examples() -> None:
    result = doctest.testmod(hg)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.parametrize(
    ("text", "lo", "hi", "expected"),
    [
        ("7", 0, 10, 7.0),
        ("  7.5.  ", 0, 10, 7.5),
        ("**8**", 0, 10, 8.0),
        ("Score: 7/10", 0, 10, 7.0),
        ("The response is fine.\nScore: 6", 0, 10, 6.0),
        ("score = 3", 1, 5, 3.0),
        ("Rating: 4 out of 5", 0, 10, 8.0),  # rescaled onto the declared range
        ("4/5", 1, 5, 4.0),
        ("2/4", 0, 10, 5.0),
        ("**Score:** 9", 0, 10, 9.0),
        ("Score (0-10): 2", 0, 10, 2.0),
        ("The score is 4.", 0, 10, 4.0),
        ("First I thought Score: 2, but on reflection Score: 5", 0, 10, 5.0),  # the last one
        ('{"score": 7}', 0, 10, 7.0),
        ('{"Score": "6.5", "reason": "ok"}', 0, 10, 6.5),
        ('Reasoning here.\n```json\n{"score": 3, "why": "x"}\n```', 0, 10, 3.0),
        ("blah <score>1</score> blah", 0, 1, 1.0),
        ("-2", -5, 5, -2.0),
        ("Score: 0", 0, 10, 0.0),
    ],
)
def test_parse_score_forms(text: str, lo: float, hi: float, expected: float) -> None:
    assert hg.parse_score(text, lo, hi) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("This is a good answer.", "could not parse a score"),
        ("I would give it a high mark", "could not parse a score"),
        ("Score: 12", "outside the declared range [0, 10]"),
        ('{"score": -1}', "outside the declared range"),
        ("11/10", "outside the declared range"),
        ("Score: 3/0", "non-positive denominator"),
    ],
)
def test_parse_score_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        hg.parse_score(text, 0, 10)


def test_json_bool_score_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="could not parse"):
        hg.parse_score('{"score": true}', 0, 1)


def test_judge_messages_fill_columns_and_reference() -> None:
    msgs = hg.judge_messages(
        'Correct answer: {answer}. Keep {"json": 1} as is.', "2+2?", "4", {"answer": 4}, 0, 10, "answer"
    )
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "from 0 to 10" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert 'Correct answer: 4. Keep {"json": 1} as is.' in user
    assert "## Reference answer\n4" in user
    assert user.index("## Prompt\n2+2?") < user.index("## Response to grade\n4")
    with pytest.raises(KeyError, match="no column 'gold'"):
        hg.judge_messages("r", "p", "c", {"answer": 4}, 0, 10, "gold")


def test_retry_schedule_and_worst_case() -> None:
    assert hg.backoff_delays(0, 1.0) == []
    assert hg.backoff_delays(4, 0.25) == [0.25, 0.5, 1.0, 2.0]
    assert hg.worst_case_s(2.0, 3, 0.5) == 2.0 * 4 + 0.5 + 1.0 + 2.0


def test_spec_defaults_for_network_builtins() -> None:
    judge = RewardSpec(
        name="j",
        function="llm_judge",
        kwargs={"rubric": "r", "url": "http://x/v1", "model": "m", "api_key_env": "KEY", "timeout_s": 5},
    )
    assert judge.allow_network is True
    assert judge.timeout_s == 5 * 3 + 1 + 2 + 5  # one request with its 2 retries, + 5 s
    assert judge.required_env() == ("KEY",) and judge.worker_env() == ("KEY",)
    explicit = RewardSpec(name="r", function="remote", kwargs={"url": "http://x"}, timeout_s=7)
    assert explicit.timeout_s == 7 and explicit.allow_network
    local = RewardSpec(name="l", function="llm_judge", kwargs={"rubric": "r", "local_model": "tiny"})
    assert not local.allow_network and local.memory_mb == 8192
    assert {"OPENRFT_HOME", "HF_HOME"} <= set(local.worker_env()) and local.required_env() == ()
    plain = RewardSpec(name="p", function="regex", kwargs={"pattern": "x"}, env=["MY_TOKEN"])
    assert not plain.allow_network and plain.worker_env() == ("MY_TOKEN",)
    with pytest.raises(ValueError, match="needs network"):
        RewardSpec(name="r", function="remote", kwargs={"url": "http://x"}, allow_network=False)
    with pytest.raises(ValueError, match="not an environment variable name"):
        RewardSpec(name="p", function="regex", kwargs={"pattern": "x"}, env=["BAD-NAME"])


@pytest.mark.parametrize(
    ("function", "kwargs", "message"),
    [
        ("llm_judge", {"url": "http://x", "model": "m"}, "needs kwargs.rubric"),
        ("llm_judge", {"rubric": "r"}, "exactly one of kwargs.url"),
        ("llm_judge", {"rubric": "r", "url": "http://x", "local_model": "t"}, "exactly one of kwargs.url"),
        ("llm_judge", {"rubric": "r", "url": "ftp://x", "model": "m"}, "must start with http"),
        ("llm_judge", {"rubric": "r", "url": "http://x"}, "kwargs.model is required"),
        (
            "llm_judge",
            {"rubric": "r", "url": "http://x", "model": "m", "min_score": 5, "max_score": 5},
            "below",
        ),
        (
            "llm_judge",
            {"rubric": "r", "url": "http://x", "model": "m", "rubrik": "r"},
            "did you mean 'rubric'",
        ),
        ("remote", {"url": "localhost:80"}, "must start with http"),
        ("remote", {"url": "http://x", "retries": -1}, "kwargs.retries must be a number >= 0"),
        ("remote", {"url": "http://x", "batch_size": 0}, "kwargs.batch_size must be a number >= 1"),
        ("remote", {"url": "http://x", "headers": {"X": 1}}, "kwargs.headers"),
    ],
)
def test_builtin_kwargs_are_checked_before_start(function: str, kwargs: dict, message: str) -> None:
    with pytest.raises(RewardError, match=message):
        check_function(function, None, kwargs, "g")


def test_good_kwargs_pass() -> None:
    check_function("llm_judge", None, {"rubric": "r", "url": "http://x/v1", "model": "m"}, "g")
    check_function("llm_judge", None, {"rubric": "r", "local_model": "tiny-random-llama"}, "g")
    check_function("remote", None, {"url": "https://x", "headers": {"X-A": "b"}, "batch_size": 8}, "g")
