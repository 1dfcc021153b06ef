"""Countdown task: solver, generator, safe evaluator, answer extraction, rewards, demonstrations."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from openrft.errors import DataError
from openrft.tasks import countdown as cd
from openrft.tasks.countdown import _Node, _render

EX = {"nums": [2, 3, 4], "target": 10}  # 2 * 3 + 4 = 10


def wrap(answer: str, think: str = "some reasoning") -> str:
    """A full assistant message: the engine's prefix, reasoning, then the answer."""
    return f"{cd.ASSISTANT_PREFIX}\n{think}\n</think>\n<answer>{answer}</answer>"


def uses_exactly(expression: str, nums: list[int]) -> bool:
    return Counter(cd.numbers_in(expression)) == Counter(nums)


# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------


def test_solve_known_case() -> None:
    assert cd.solve([95, 21, 3], 88) == "95 - 21 / 3"


@pytest.mark.parametrize(
    ("nums", "target"),
    [([3, 3, 8, 8], 24), ([1, 3, 4, 6], 24), ([10, 5, 3], 8), ([7, 2], 3.5), ([5, 0], 0), ([4], 4)],
)
def test_solve_returns_equation_using_each_number_once(nums: list[int], target: float) -> None:
    equation = cd.solve(nums, target)
    assert equation is not None
    assert cd.evaluate_expression(equation) == Fraction(str(target))
    assert uses_exactly(equation, nums)


@pytest.mark.parametrize(
    ("nums", "target"),
    [([1, 2, 3], 100), ([4], 5), ([0, 0], 1), ([1, 1, 1], 50), ([2, 3, 4], 10.5)],
)
def test_solve_unsolvable_returns_none(nums: list[int], target: float) -> None:
    # [1, 2, 3] reaches at most (1 + 2) * 3 = 9; [0, 0] only 0 (divisions by zero skipped).
    assert cd.solve(nums, target) is None


def test_solve_accepts_float_and_string_targets_exactly() -> None:
    assert cd.solve([95, 21, 3], 88.0) == "95 - 21 / 3"
    assert cd.solve([1, 3], "1/3") == "1 / 3"
    assert cd.solve([1, 10], 0.1) == "1 / 10"  # 0.1 read as 1/10, not its binary float


def test_solve_prefers_non_negative_integer_steps() -> None:
    # 8 = 10 - (5 - 3) = 10 - 5 + 3; either way no step goes negative or fractional.
    assert cd.solve([10, 5, 3], 8) in {"10 - 5 + 3", "10 - (5 - 3)", "10 + 3 - 5", "3 + 10 - 5"}


@pytest.mark.parametrize("nums", [[], [1.5, 2], "123", [True, 2], None])
def test_solve_rejects_bad_nums(nums: object) -> None:
    with pytest.raises(ValueError, match="nums"):
        cd.solve(nums, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [float("nan"), float("inf"), "abc", None, True])
def test_solve_rejects_bad_target(target: object) -> None:
    with pytest.raises(ValueError, match="target"):
        cd.solve([1, 2], target)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tree", "text"),
    [
        (_Node("-", 10, _Node("-", 5, 3)), "10 - (5 - 3)"),
        (_Node("+", 10, _Node("-", 5, 3)), "10 + 5 - 3"),
        (_Node("/", 8, _Node("*", 2, 2)), "8 / (2 * 2)"),
        (_Node("*", 8, _Node("/", 6, 2)), "8 * 6 / 2"),
        (_Node("*", _Node("+", 1, 2), 3), "(1 + 2) * 3"),
        (_Node("-", _Node("-", 9, 2), 3), "9 - 2 - 3"),
        (_Node("/", _Node("-", 9, 3), _Node("+", 1, 1)), "(9 - 3) / (1 + 1)"),
    ],
)
def test_render_uses_only_needed_parentheses(tree: _Node, text: str) -> None:
    assert _render(tree) == text


def test_solve_agrees_with_exhaustive_enumeration() -> None:
    # Two independent algorithms: depth-first search (solve) and the set of every reachable value.
    for nums in ([2, 3, 4], [1, 1, 5], [6, 6, 9], [7, 7, 7, 7], [1, 2, 3, 9]):
        reachable = cd._reachable(tuple(sorted(nums)))
        for target in range(-5, 60):
            assert (cd.solve(nums, target) is not None) == (Fraction(target) in reachable), (nums, target)


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


def test_generate_rows_are_solvable_in_range_and_distinct() -> None:
    rows = cd.generate(300, num_count=3, min_num=1, max_num=50, min_target=10, max_target=60, seed=3)
    assert len(rows) == 300
    keys = {(tuple(sorted(r["nums"])), r["target"]) for r in rows}
    assert len(keys) == 300
    for row in rows:
        assert set(row) == {"nums", "target"}
        assert len(row["nums"]) == 3
        assert all(type(n) is int and 1 <= n <= 50 for n in row["nums"])
        assert type(row["target"]) is int and 10 <= row["target"] <= 60
        equation = cd.solve(row["nums"], row["target"])
        assert equation is not None
        assert cd.evaluate_expression(equation) == row["target"]
        assert uses_exactly(equation, row["nums"])


def test_generate_is_deterministic_per_seed() -> None:
    assert cd.generate(50, seed=1) == cd.generate(50, seed=1)
    assert cd.generate(50, seed=1) != cd.generate(50, seed=2)
    assert cd.generate(0) == []


@pytest.mark.parametrize("num_count", [1, 2, 4, 5, 6])
def test_generate_other_sizes_are_solvable(num_count: int) -> None:
    rows = cd.generate(8, num_count=num_count, seed=0)
    assert len(rows) == 8
    for row in rows:
        assert len(row["nums"]) == num_count
        assert 1 <= row["target"] <= 100
        assert cd.solve(row["nums"], row["target"]) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must be >= 0"),
        ({"n": 2.5}, "n must be an integer"),
        ({"n": True}, "n must be an integer"),
        ({"n": 5, "num_count": 0}, "num_count must be >= 1"),
        ({"n": 5, "num_count": 7}, "num_count must be <= 6"),
        ({"n": 5, "min_num": 0}, "min_num must be >= 1"),
        ({"n": 5, "min_num": 10, "max_num": 9}, r"max_num \(9\) must be >= min_num \(10\)"),
        ({"n": 5, "min_target": 5, "max_target": 4}, r"max_target \(4\) must be >= min_target \(5\)"),
        ({"n": 5, "seed": "abc"}, "seed must be an integer"),
    ],
)
def test_generate_validates_arguments(kwargs: dict, message: str) -> None:
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=message):
        cd.generate(n, **kwargs)


def test_generate_says_when_the_ranges_are_too_small() -> None:
    # One number drawn from 1..3 can only make the 3 rows ([k], k).
    assert len(cd.generate(3, num_count=1, min_num=1, max_num=3)) == 3
    with pytest.raises(ValueError, match="found only 3 distinct solvable rows"):
        cd.generate(4, num_count=1, min_num=1, max_num=3)


# ---------------------------------------------------------------------------------------------
# Safe evaluation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("95 - 21 / 3", Fraction(88)),
        (" (95-7)*3 ", Fraction(264)),
        ("2 + 3 * 4", Fraction(14)),
        ("(2 + 3) * 4", Fraction(20)),
        ("10 - 4 - 3", Fraction(3)),
        ("64 / 4 / 2", Fraction(8)),
        ("1/3 + 1/6", Fraction(1, 2)),
        ("-3 + 5", Fraction(2)),
        ("-(-(2))", Fraction(2)),
        ("2 * -3", Fraction(-6)),
        ("2.5 * 2", Fraction(5)),
        ("3 x 4 ÷ 2", Fraction(6)),
        ("3 × 4", Fraction(12)),
        ("7", Fraction(7)),
    ],
)
def test_evaluate_expression_values(text: str, value: Fraction) -> None:
    assert cd.evaluate_expression(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('echo hi')",
        "2**999999",
        "2 ** 3",
        "a + 1",
        "lambda: 1",
        "abs(-1)",
        "1 % 2",
        "1 // 2",
        "1e5",
        "1_000",
        "2(3)",
        "1 2",
        "(1 + 2",
        "1 + 2)",
        "1 +",
        "",
        "   ",
        "1 / 0",
        "1 / (2 - 2)",
        "[1, 2]",
        "٣ + 1",  # non-ASCII digits
        "1 + " * 60 + "1",  # longer than 200 characters
        "(" * 40 + "1" + ")" * 40,  # nested too deep
        "-" * 40 + "1",  # unary chain too deep
    ],
)
def test_evaluate_expression_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        cd.evaluate_expression(text)


def test_evaluate_expression_limits_are_not_too_tight() -> None:
    assert cd.evaluate_expression("(" * 20 + "1" + ")" * 20) == 1
    assert cd.evaluate_expression("+".join(["1"] * 100)[:199]) == 100


def test_evaluate_expression_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        cd.evaluate_expression(12)  # type: ignore[arg-type]


def test_numbers_in() -> None:
    assert cd.numbers_in("(95 - 7) * 3") == [95, 7, 3]
    assert cd.numbers_in("3 + 3 - 007") == [3, 3, 7]
    assert cd.numbers_in("2.5 * 2") == [2]
    assert cd.numbers_in("-(4)") == [4]
    with pytest.raises(ValueError):
        cd.numbers_in("x = 1")


# ---------------------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("<think>x</think><answer> 95 - 21 / 3 </answer>", "95 - 21 / 3"),
        ("<answer>1 + 2</answer> then <answer>\n2 * 3 + 4\n</answer>", "2 * 3 + 4"),
        ("<answer>95 - 21 / 3 = 88</answer>", "95 - 21 / 3"),
        ("<answer>7 / 2 = 3.5</answer>", "7 / 2"),
        ("<answer><answer>1 + 1</answer>", "1 + 1"),
        ("<answer>2 * 3 + 4</answer> trailing", "2 * 3 + 4"),
        ("no tags at all", None),
        ("<answer>unclosed", None),
        ("</answer><answer>", None),
        ("<answer>   </answer>", None),
        ("<answer>= 10</answer>", None),
    ],
)
def test_extract_answer(completion: str, answer: str | None) -> None:
    assert cd.extract_answer(completion) == answer


# ---------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------


def test_prompt_template_renders_nums_as_a_list() -> None:
    text = cd.PROMPT_TEMPLATE.format(nums=[95, 21, 3], target=88)
    assert "[95, 21, 3]" in text and "equals 88" in text
    assert "<answer>" in text and "<think>" in text
    assert cd.ASSISTANT_PREFIX == "<think>"
    assert cd.SYSTEM_PROMPT.startswith("You are a helpful assistant.")


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------


def test_rewards_registry() -> None:
    expected = {
        "format": cd.format_reward,
        "soft_format": cd.soft_format_reward,
        "equation": cd.equation_reward,
        "partial_equation": cd.partial_equation_reward,
    }
    assert expected == cd.REWARDS


def test_correct_completion_scores_one_everywhere() -> None:
    completion = wrap("2 * 3 + 4")
    for name, reward in cd.REWARDS.items():
        assert reward("prompt", completion, EX) == 1.0, name


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        (wrap("2 * 3 + 4"), 1.0),
        ("  " + wrap("2 * 3 + 4") + "\n", 1.0),  # surrounding whitespace is fine
        ("<think>\n</think>\n\n<answer></answer>", 1.0),
        ("<answer>2 * 3 + 4</answer>", 0.0),  # no think
        ("<think>x</think>", 0.0),  # no answer
        (wrap("2 * 3 + 4") + " and more", 0.0),  # text after the answer
        ("Sure! " + wrap("2 * 3 + 4"), 0.0),  # text before think
        (wrap("2 * 3 + 4") + "<answer>1</answer>", 0.0),  # answer twice
        ("<think>a<think>b</think><answer>1</answer>", 0.0),  # think twice
        ("<think>a</think> x <answer>1</answer>", 0.0),  # text between the blocks
        ("<answer>1</answer><think>a</think>", 0.0),  # wrong order
    ],
)
def test_format_reward(completion: str, score: float) -> None:
    assert cd.format_reward("p", completion, EX) == score


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        (wrap("1"), 1.0),
        ("<answer>1</answer>", 0.5),
        ("<think>a</think>", 0.5),
        ("<think>a", 0.25),
        ("plain text", 0.0),
        (wrap("1") + "<answer>2</answer>", 0.5),  # answer tags twice: no credit for them
        ("</answer><answer></think><think>", 1.0),  # counts only, order is format_reward's job
    ],
)
def test_soft_format_reward(completion: str, score: float) -> None:
    assert cd.soft_format_reward("p", completion, EX) == score


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("2 * 3 + 4", 1.0),
        ("4 + 3 * 2", 1.0),
        ("(4 + 3 * 2)", 1.0),
        ("2 * 3 + 4 = 10", 1.0),
        ("2 x 3 + 4", 1.0),
        ("3 + 3 + 4", 0.0),  # reuses 3, misses 2
        ("2 * 3 * 4 / 4 + 4", 0.0),  # reuses 4
        ("6 + 4", 0.0),  # 6 is not given
        ("2 + 3 + 4", 0.0),  # wrong value (9)
        ("2 * 3 + 4 + 0", 0.0),  # an extra number
        ("2.0 * 3 + 4", 0.0),  # a decimal literal is not a given number
        ("10", 0.0),
        ("2 * 3 + 4 + x", 0.0),  # does not parse
        ("", 0.0),
    ],
)
def test_equation_reward(answer: str, score: float) -> None:
    assert cd.equation_reward("p", wrap(answer), EX) == score


def test_equation_reward_missing_number() -> None:
    assert cd.equation_reward("p", wrap("3 + 4"), {"nums": [2, 3, 4], "target": 7}) == 0.0


def test_equation_reward_ignores_format_and_uses_last_answer() -> None:
    assert cd.equation_reward("p", "<answer>2 * 3 + 4</answer>", EX) == 1.0
    assert cd.equation_reward("p", wrap("2 + 3 + 4") + "<answer>2 * 3 + 4</answer>", EX) == 1.0
    assert cd.equation_reward("p", wrap("2 * 3 + 4") + "<answer>2 + 3 + 4</answer>", EX) == 0.0
    assert cd.equation_reward("p", "<think>2 * 3 + 4</think>", EX) == 0.0


@pytest.mark.parametrize(
    "example",
    [
        {"nums": "[2, 3, 4]", "target": "10"},  # CSV: JSON string and numeric string
        {"nums": "[4, 3, 2]", "target": 10.0},
        {"nums": (2, 3, 4), "target": 10},
        {"nums": np.array([2, 3, 4]), "target": np.int64(10)},  # a pandas/parquet row
        {"nums": [2.0, 3.0, 4.0], "target": " 10 "},
        {"nums": [2, 3, 4], "target": 10, "other": "columns are ignored"},
    ],
)
def test_rewards_accept_column_variants(example: dict) -> None:
    assert cd.equation_reward("p", wrap("2 * 3 + 4"), example) == 1.0
    assert cd.partial_equation_reward("p", wrap("2 * 3 + 4"), example) == 1.0


def test_equation_reward_tolerance() -> None:
    third = {"nums": [1, 3], "target": "0.3333333"}  # |1/3 - 0.3333333| = 3.3e-8
    assert cd.equation_reward("p", wrap("1 / 3"), third) == 1.0
    off = {"nums": [1, 3], "target": "0.33333"}  # |1/3 - 0.33333| = 3.3e-6
    assert cd.equation_reward("p", wrap("1 / 3"), off) == 0.0


@pytest.mark.parametrize(
    ("example", "match"),
    [
        ({"target": 10}, "no 'nums' column"),
        ({"nums": [2, 3, 4]}, "no 'target' column"),
        ({"nums": "2, 3, 4", "target": 10}, "column 'nums'"),
        ({"nums": "[2, 3.5]", "target": 10}, "list of integers"),
        ({"nums": 7, "target": 10}, "list of integers"),
        ({"nums": [2, 3], "target": "ten"}, "column 'target'"),
    ],
)
def test_rewards_raise_data_error_on_bad_columns(example: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        cd.equation_reward("p", wrap("2 * 3 + 4"), example)


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("<think>no answer</think>", 0.0),
        (wrap("two times three"), 0.0),  # not an expression
        (wrap("10"), 0.1),  # parses; 10 is not a given number, so no closeness credit
        (wrap("3 + 3 + 4"), 0.1),  # reuses 3
        (wrap("4"), 0.1 + 0.4 / 3),  # one of three given numbers: no closeness credit
        (wrap("3 + 4"), 0.1 + 0.4 * 2 / 3),  # two of three: more, still no closeness credit
        (wrap("2 + 3 + 4"), 0.1 + 0.4 + 0.4 * (1 - 1 / 10)),  # all numbers, value 9
        (wrap("2 * 3 * 4"), 0.5),  # all numbers, value 24: too far for closeness credit
        (wrap("2 * 3 + 4"), 1.0),
    ],
)
def test_partial_equation_reward_values(completion: str, score: float) -> None:
    assert cd.partial_equation_reward("p", completion, EX) == pytest.approx(score)


def test_partial_equation_reward_is_monotone_in_progress() -> None:
    ladder = ["", "x", "10", "3 + 4", "2 + 3 + 4", "2 * 3 + 4"]
    scores = [cd.partial_equation_reward("p", wrap(a) if a else "<think></think>", EX) for a in ladder]
    assert scores == sorted(scores) and len(set(scores)) == 5  # "" and "x" both score 0
    # With every number used once, a value closer to 10 scores higher: 9, then 3, then 24.
    by_value = [cd.partial_equation_reward("p", wrap(a), EX) for a in ("2 + 3 + 4", "4 - 3 + 2", "2 * 3 * 4")]
    assert by_value[0] > by_value[1] > by_value[2] == 0.5


def test_partial_equation_reward_stays_below_one_unless_correct() -> None:
    off = {"nums": [1, 3], "target": "0.33333"}  # 1 / 3 misses by 3.3e-6
    score = cd.partial_equation_reward("p", wrap("1 / 3"), off)
    assert 0.89 < score < 0.9
    for answer in ["2 + 3 + 4", "4 + 3 * 2 + 0", "10", "3 + 3 + 4", "2 * 3 + 4 + 2 - 2"]:
        assert 0.0 <= cd.partial_equation_reward("p", wrap(answer), EX) <= 0.9


# ---------------------------------------------------------------------------------------------
# Demonstrations
# ---------------------------------------------------------------------------------------------


def test_demonstration_text() -> None:
    assert cd.demonstration({"nums": [95, 21, 3], "target": 88}) == (
        "<think>We need 88 from [95, 21, 3].\n"
        "21 / 3 = 7\n"
        "95 - 7 = 88\n"
        "So the equation is 95 - 21 / 3 = 88.\n"
        "</think>\n"
        "<answer>95 - 21 / 3</answer>"
    )


def test_demonstration_shows_fraction_steps() -> None:
    text = cd.demonstration({"nums": "[1, 3, 4, 6]", "target": "24"})
    assert "3 / 4 = 3/4\n1 - (3/4) = 1/4\n6 / (1/4) = 24\n" in text
    assert text.endswith("<answer>6 / (1 - 3 / 4)</answer>")


@pytest.mark.parametrize("num_count", [1, 3, 4])
def test_demonstrations_score_one(num_count: int) -> None:
    for row in cd.generate(40, num_count=num_count, seed=7):
        text = cd.demonstration(row)
        assert text.startswith(cd.ASSISTANT_PREFIX)
        for name, reward in cd.REWARDS.items():
            assert reward("p", text, row) == 1.0, (name, row, text)


def test_demonstration_of_unsolvable_row_raises() -> None:
    with pytest.raises(DataError, match="no equation"):
        cd.demonstration({"nums": [1, 2, 3], "target": 100})
