"""Countdown: the showcase task (TinyZero-style).

Given numbers such as ``[95, 21, 3]`` and a target such as ``88``, the model writes an
equation that uses each number exactly once with ``+ - * /`` and parentheses and equals the
target (``95 - 21 / 3``). Everything here is pure Python (no torch):

- ``generate``: solvable rows ``{"nums": [...], "target": int}`` with difficulty knobs,
- ``solve``: an exact (``fractions.Fraction``) solver returning an equation string,
- ``evaluate_expression`` / ``numbers_in``: a safe hand-written parser (never ``eval``),
- the prompt (``SYSTEM_PROMPT``, ``PROMPT_TEMPLATE``, ``ASSISTANT_PREFIX``),
- reward functions ``(prompt, completion, example) -> float`` collected in ``REWARDS``,
- ``demonstration``: a solver-written completion used for SFT baselines.

Convention: the ``completion`` passed to every reward function is the FULL assistant
message, i.e. it starts with ``ASSISTANT_PREFIX`` ("<think>") followed by the generated text.
"""

from __future__ import annotations

import json
import math
import numbers
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from openrft.errors import DataError

__all__ = [
    "ASSISTANT_PREFIX",
    "PROMPT_TEMPLATE",
    "REWARDS",
    "SYSTEM_PROMPT",
    "demonstration",
    "equation_reward",
    "evaluate_expression",
    "extract_answer",
    "format_reward",
    "generate",
    "numbers_in",
    "partial_equation_reward",
    "soft_format_reward",
    "solve",
]

# ---------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------

SYSTEM_PROMPT: str = (
    "You are a helpful assistant. You first think about the reasoning process in the mind "
    "and then provide the user with the answer."
)

PROMPT_TEMPLATE: str = (
    "Using the numbers {nums}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. "
    "And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)

ASSISTANT_PREFIX: str = "<think>"
# The demo's prefill: the puzzle restated at the start of the answer keeps the numbers in view
# of a small model (see examples/countdown.yaml); demonstrations start with it too.
PREFIX_TEMPLATE = "<think>We need {target} from {nums}."

MAX_EXPRESSION_CHARS = 200
MAX_NESTING_DEPTH = 32
MIN_NUM_COUNT, MAX_NUM_COUNT = 1, 6
# Up to this many numbers, `generate` enumerates every reachable target exactly; above it,
# it draws targets uniformly and keeps those the solver can reach.
_ENUMERATE_UP_TO = 4
_TOLERANCE = 1e-6

# ---------------------------------------------------------------------------------------------
# Expression trees (solver output) and their rendering
# ---------------------------------------------------------------------------------------------


class _Node(NamedTuple):
    op: str  # one of + - * /
    left: _Expr
    right: _Expr


_Expr = int | _Node
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # caller guarantees b != 0


def _value(expr: _Expr) -> Fraction:
    if isinstance(expr, int):
        return Fraction(expr)
    return _apply(expr.op, _value(expr.left), _value(expr.right))


def _precedence(expr: _Expr) -> int:
    return 3 if isinstance(expr, int) else _PRECEDENCE[expr.op]


def _render(expr: _Expr) -> str:
    """Render with the fewest parentheses that keep the exact value under left-to-right rules."""
    if isinstance(expr, int):
        return str(expr)
    prec = _PRECEDENCE[expr.op]
    left = _render(expr.left)
    if _precedence(expr.left) < prec:
        left = f"({left})"
    right = _render(expr.right)
    right_prec = _precedence(expr.right)
    # a - (b + c) and a / (b * c) need parentheses; a + (b - c) and a * (b / c) do not.
    if right_prec < prec or (right_prec == prec and expr.op in "-/"):
        right = f"({right})"
    return f"{left} {expr.op} {right}"


# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------


def _combinations(a: tuple[Fraction, _Expr], b: tuple[Fraction, _Expr], nice: bool) -> Iterator[tuple]:
    """Every (value, expr) made from a and b with one operation.

    ``nice`` keeps only classic-Countdown steps: non-negative results and exact integer
    divisions, which read better in demonstrations.
    """
    (va, ea), (vb, eb) = a, b
    if nice and va < vb:
        (va, ea), (vb, eb) = (vb, eb), (va, ea)  # larger first: a - b >= 0
    yield va + vb, _Node("+", ea, eb)
    yield va * vb, _Node("*", ea, eb)
    if not nice or va >= vb:
        yield va - vb, _Node("-", ea, eb)
    if not nice:
        yield vb - va, _Node("-", eb, ea)
    if vb != 0 and (not nice or (va / vb).denominator == 1):
        yield va / vb, _Node("/", ea, eb)
    if va != 0 and (not nice or (vb / va).denominator == 1):
        yield vb / va, _Node("/", eb, ea)


def _search(
    items: list[tuple[Fraction, _Expr]], target: Fraction, nice: bool, failed: set[tuple[Fraction, ...]]
) -> _Expr | None:
    """Depth-first search: combine two items into one until one is left; memoise dead ends."""
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    key = tuple(sorted(v for v, _ in items))
    if key in failed:
        return None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = [item for k, item in enumerate(items) if k not in (i, j)]
            for combined in _combinations(items[i], items[j], nice):
                found = _search([*rest, combined], target, nice, failed)
                if found is not None:
                    return found
    failed.add(key)
    return None


def _solve_tree(nums: Sequence[int], target: Fraction) -> _Expr | None:
    items: list[tuple[Fraction, _Expr]] = [(Fraction(n), n) for n in nums]
    # First try classic Countdown steps (non-negative integers), then any exact arithmetic.
    for nice in (True, False):
        found = _search(items, target, nice, set())
        if found is not None:
            return found
    return None


def _check_nums(nums: object) -> list[int]:
    if isinstance(nums, str | bytes) or not isinstance(nums, Sequence):
        raise ValueError(f"nums must be a list of integers, got {type(nums).__name__}")
    if not nums:
        raise ValueError("nums must contain at least one integer, got an empty list")
    out = []
    for n in nums:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ValueError(f"nums must be a list of integers, got {n!r} in {list(nums)!r}")
        out.append(int(n))
    return out


def _to_fraction(value: object, what: str = "target") -> Fraction:
    """An int, a finite float or a numeric string as an exact Fraction (0.1 -> 1/10)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{what} must be a finite number, got {value!r}")
        return Fraction(repr(number))
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{what} must be a number, got the string {value!r}") from None
    raise ValueError(f"{what} must be a number, got {type(value).__name__} {value!r}")


def solve(nums: list[int], target: int | float) -> str | None:
    """An equation using each number of ``nums`` exactly once that equals ``target``, or None.

    Exact arithmetic (``Fraction``); divisions by zero are skipped. Solutions whose
    intermediate results are non-negative integers are preferred. Example:
    ``solve([95, 21, 3], 88) == "95 - 21 / 3"``.
    """
    tree = _solve_tree(_check_nums(nums), _to_fraction(target))
    return None if tree is None else _render(tree)


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


def _reachable(nums: tuple[int, ...]) -> frozenset[Fraction]:
    """Every value an expression using each of ``nums`` (sorted) exactly once can take.

    Only pairs are memoised: they recur across rows and are small (at most 6 values), while
    a cache of larger sets (hundreds to thousands of values each) would grow by gigabytes.
    """
    if len(nums) <= 2:
        return _reachable_small(nums)
    return _combine_splits(nums)


@lru_cache(maxsize=1 << 14)
def _reachable_small(nums: tuple[int, ...]) -> frozenset[Fraction]:
    if len(nums) == 1:
        return frozenset({Fraction(nums[0])})
    return _combine_splits(nums)


def _combine_splits(nums: tuple[int, ...]) -> frozenset[Fraction]:
    values: set[Fraction] = set()
    n = len(nums)
    for mask in range(1, 1 << n):
        if not mask & 1 or mask == (1 << n) - 1:
            continue  # each split once: the left part holds nums[0], the right part is non-empty
        left = tuple(nums[i] for i in range(n) if mask >> i & 1)
        right = tuple(nums[i] for i in range(n) if not mask >> i & 1)
        for a in _reachable(left):
            for b in _reachable(right):
                values.update((a + b, a - b, b - a, a * b))
                if b:
                    values.add(a / b)
                if a:
                    values.add(b / a)
    return frozenset(values)


def _check_int(name: str, value: object, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _pick_target(
    nums: list[int], rng: random.Random, min_target: int, max_target: int, tries: int = 8
) -> int | None:
    """A target in [min_target, max_target] reachable from ``nums``, or None.

    Up to ``_ENUMERATE_UP_TO`` numbers: uniform over every reachable integer in range (exact
    enumeration). Above, enumeration is too slow (5 numbers reach ~25,000 values), so the
    target is the value of a random classic-Countdown expression, if one of ``tries`` lands
    in range.
    """
    if len(nums) <= _ENUMERATE_UP_TO:
        reachable = _reachable(tuple(sorted(nums)))
        targets = sorted(int(v) for v in reachable if v.denominator == 1 and min_target <= v <= max_target)
        return rng.choice(targets) if targets else None
    for _ in range(tries):
        target = _random_nice_value(nums, rng)
        if min_target <= target <= max_target:
            return target
    return None


def _random_nice_value(nums: list[int], rng: random.Random) -> int:
    """The value of a random classic-Countdown expression (non-negative integer steps) of nums."""
    values = list(nums)
    while len(values) > 1:
        a = values.pop(rng.randrange(len(values)))
        b = values.pop(rng.randrange(len(values)))
        a, b = max(a, b), min(a, b)
        options = [a + b, a - b, a * b]
        if b and a % b == 0:
            options.append(a // b)
        values.append(rng.choice(options))
    return values[0]


def generate(
    n: int,
    *,
    num_count: int = 3,
    min_num: int = 1,
    max_num: int = 99,
    min_target: int = 1,
    max_target: int = 100,
    seed: int = 0,
) -> list[dict]:
    """``n`` distinct solvable Countdown rows ``{"nums": [int, ...], "target": int}``.

    Difficulty knobs: ``num_count`` numbers (1 to 6) drawn uniformly (with repetition) from
    ``[min_num, max_num]``; the target is an integer in ``[min_target, max_target]``. With up
    to 4 numbers the target is drawn uniformly among the reachable ones (exact enumeration);
    with 5 or 6 it is the value of a random expression with non-negative integer steps that
    lands in range (so small targets are more frequent).
    Every row is checked with ``solve``. Rows are distinct as (sorted nums, target), and the
    output depends only on the arguments (``random.Random(seed)``).

    Raises ValueError for invalid arguments, or when the ranges hold fewer than ``n``
    distinct solvable rows.
    """
    _check_int("n", n, 0)
    _check_int("num_count", num_count, MIN_NUM_COUNT)
    if num_count > MAX_NUM_COUNT:
        raise ValueError(f"num_count must be <= {MAX_NUM_COUNT} (the solver is exhaustive), got {num_count}")
    _check_int("min_num", min_num, 1)
    _check_int("max_num", max_num)
    _check_int("min_target", min_target)
    _check_int("max_target", max_target)
    _check_int("seed", seed)
    if max_num < min_num:
        raise ValueError(f"max_num ({max_num}) must be >= min_num ({min_num})")
    if max_target < min_target:
        raise ValueError(f"max_target ({max_target}) must be >= min_target ({min_target})")

    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    max_draws = 50 * n + 1000
    for _ in range(max_draws):
        if len(rows) == n:
            break
        nums = [rng.randint(min_num, max_num) for _ in range(num_count)]
        target = _pick_target(nums, rng, min_target, max_target)
        if target is None:
            continue
        key = (tuple(sorted(nums)), target)
        if key in seen:
            continue
        if _solve_tree(nums, Fraction(target)) is None:  # pragma: no cover - enumeration is exact
            raise AssertionError(f"generator produced an unsolvable row {nums} -> {target}")
        seen.add(key)
        rows.append({"nums": nums, "target": target})
    if len(rows) < n:
        raise ValueError(
            f"found only {len(rows)} distinct solvable rows out of n={n} after {max_draws} draws; "
            "widen [min_num, max_num] or [min_target, max_target], or lower n"
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Safe expression evaluation: tokenizer + recursive descent (never eval)
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?)|([-+*/()x×÷−]))")
_OPERATOR_ALIASES = {"x": "*", "×": "*", "÷": "/", "−": "-"}


def _tokenize(text: str) -> list[str]:
    if not isinstance(text, str):
        raise ValueError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters ({len(text)})")
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if match is None:
            raise ValueError(f"unexpected character {stripped[pos:].lstrip()[:1]!r} in expression {text!r}")
        number, op = match.groups()
        tokens.append(number if number is not None else _OPERATOR_ALIASES.get(op, op))
        pos = match.end()
    if not tokens:
        raise ValueError("expression is empty")
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := ('+'|'-') unary | NUMBER | '(' expr ')'"""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction:
        value = self._expr()
        if self.pos != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.pos]!r} at token {self.pos + 1}")
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = _apply(op, value, self._term())
        return value

    def _term(self) -> Fraction:
        value = self._unary()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self._unary()
            if op == "/" and right == 0:
                raise ValueError("division by zero")
            value = _apply(op, value, right)
        return value

    def _unary(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_NESTING_DEPTH:
            raise ValueError(f"expression is nested deeper than {MAX_NESTING_DEPTH} levels")
        try:
            token = self._peek()
            if token is None:
                raise ValueError("expression ends unexpectedly")
            self.pos += 1
            if token in ("+", "-"):
                value = self._unary()
                return -value if token == "-" else value
            if token == "(":
                value = self._expr()
                if self._peek() != ")":
                    raise ValueError("missing closing parenthesis")
                self.pos += 1
                return value
            if token[0].isdigit():
                return Fraction(token)
            raise ValueError(f"unexpected {token!r} at token {self.pos}")
        finally:
            self.depth -= 1


def evaluate_expression(text: str) -> Fraction:
    """The exact value of an arithmetic expression, parsed safely (no ``eval``).

    Accepts integers, decimals (``2.5``), ``+ - * /``, unary minus, parentheses and
    whitespace; ``x`` / ``×`` mean ``*`` and ``÷`` means ``/``. Raises ValueError for
    anything else (names, calls, ``**``, ``%``, ...), for division by zero, for inputs longer
    than 200 characters and for nesting deeper than 32 levels.
    """
    return _Parser(_tokenize(text)).parse()


def _literals(text: str) -> list[str]:
    return [t for t in _tokenize(text) if t[0].isdigit()]


def numbers_in(text: str) -> list[int]:
    """The integer literals of an expression, in order (``"(95 - 7) * 3"`` -> ``[95, 7, 3]``).

    Decimal literals such as ``2.5`` are not integers and are left out. Raises ValueError
    when the text contains characters that cannot appear in an expression.
    """
    return [int(t) for t in _literals(text) if "." not in t]


# ---------------------------------------------------------------------------------------------
# Answer extraction and reading the example's columns
# ---------------------------------------------------------------------------------------------

_TRAILING_EQUALS = re.compile(r"\s*=\s*[-−]?\s*[0-9]+(?:\.[0-9]+)?\s*$")


def extract_answer(completion: str) -> str | None:
    """The stripped content of the LAST ``<answer>...</answer>``, or None if absent or blank.

    A trailing ``= <number>`` is dropped: ``"95 - 21 / 3 = 88"`` -> ``"95 - 21 / 3"``.
    """
    end = completion.rfind("</answer>")
    if end < 0:
        return None
    start = completion.rfind("<answer>", 0, end)
    if start < 0:
        return None
    answer = completion[start + len("<answer>") : end].strip()
    answer = _TRAILING_EQUALS.sub("", answer).strip()
    return answer or None


def _example_nums(example: dict) -> list[int]:
    """``example["nums"]`` as a list of ints: a list/array of ints or a JSON string "[95, 21, 3]"."""
    if "nums" not in example:
        raise DataError(
            "the example has no 'nums' column", column="nums", hint="Countdown needs nums and target"
        )
    raw = example["nums"]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise DataError(
                f"cannot read {example['nums']!r} as a list",
                column="nums",
                hint='write it like "[95, 21, 3]"',
            ) from None
    try:
        values = list(raw)
    except TypeError:
        raise DataError(f"expected a list of integers, got {raw!r}", column="nums") from None
    out = []
    for v in values:
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer():
            out.append(int(v))
        else:
            raise DataError(f"expected a list of integers, got {example['nums']!r}", column="nums")
    return out


def _example_target(example: dict) -> Fraction:
    if "target" not in example:
        raise DataError("the example has no 'target' column", column="target")
    try:
        return _to_fraction(example["target"])
    except ValueError as err:
        raise DataError(str(err), column="target") from None


class _Graded(NamedTuple):
    parsed: bool  # the answer is a valid arithmetic expression
    only_given: bool  # every literal is one of nums, each used at most as often as given
    all_once: bool  # the literals are exactly nums (multiset equality)
    used_fraction: float  # share of the given numbers the answer uses (when only_given)
    closeness: float  # 1 - |value - target| / max(|target|, 1), clipped to [0, 1]
    correct: bool


def _grade(completion: str, example: dict) -> _Graded | None:
    """None when there is no answer; otherwise the properties the equation rewards use."""
    nums, target = _example_nums(example), _example_target(example)
    answer = extract_answer(completion)
    if answer is None:
        return None
    try:
        value = evaluate_expression(answer)
        literals = _literals(answer)
    except ValueError:
        return _Graded(False, False, False, 0.0, 0.0, False)
    used = Counter(int(t) for t in literals if "." not in t)
    given = Counter(nums)
    only_given = all("." not in t for t in literals) and not (used - given)
    all_once = only_given and used == given
    error = abs(value - target)  # exact: a 200-character expression can exceed float range
    closeness = float(max(Fraction(0), 1 - error / max(abs(target), Fraction(1))))
    used_fraction = sum(used.values()) / max(1, sum(given.values())) if only_given else 0.0
    return _Graded(True, only_given, all_once, used_fraction, closeness, all_once and error <= _TOLERANCE)


# ---------------------------------------------------------------------------------------------
# Rewards: (prompt, completion, example) -> float
# ---------------------------------------------------------------------------------------------

_FORMAT = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(prompt: str, completion: str, example: dict) -> float:
    """1.0 if the completion is ``<think>...</think>`` then ``<answer>...</answer>`` and nothing
    else (surrounding whitespace aside), each tag exactly once; else 0.0."""
    text = completion.strip()
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    return 1.0 if _FORMAT.match(text) else 0.0


def soft_format_reward(prompt: str, completion: str, example: dict) -> float:
    """0.25 for each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` present exactly once."""
    return 0.25 * sum(completion.count(tag) == 1 for tag in _TAGS)


def equation_reward(prompt: str, completion: str, example: dict) -> float:
    """1.0 if the last answer parses, uses each number of ``nums`` exactly once (and no other
    number) and equals ``target`` within 1e-6; else 0.0."""
    graded = _grade(completion, example)
    return 1.0 if graded is not None and graded.correct else 0.0


def partial_equation_reward(prompt: str, completion: str, example: dict) -> float:
    """Dense shaping in [0, 1] for small models; 1.0 exactly when the equation is correct.

    - 0.0: no ``<answer>`` or an answer that is not an arithmetic expression;
    - +0.1: the answer parses;
    - +0.4 * (share of the given numbers used), when it uses only given numbers, each at most
      as often as given: every extra number earns more, so there is a gradient from one
      number to all of them;
    - +0.4 * closeness, where closeness = max(0, 1 - |value - target| / max(|target|, 1)),
      counted only when the answer uses every given number exactly once.

    Measured in the demo: when closeness counted for any subset, SmolLM2-135M collapsed onto
    answering with the single given number nearest the target ("<answer>16</answer>" for 14
    earned 0.6); with a flat bonus for "all numbers" it had no signal to add a second number.

    A wrong answer scores at most 0.9, a correct one 1.0; for 3 numbers, one number used
    scores 0.23, two 0.37, all three 0.5 plus closeness.
    """
    graded = _grade(completion, example)
    if graded is None or not graded.parsed:
        return 0.0
    if graded.correct:
        return 1.0
    score = 0.1 + 0.4 * graded.used_fraction
    if graded.all_once:
        score += 0.4 * graded.closeness
    return min(score, 0.9)


REWARDS: dict[str, Callable[[str, str, dict], float]] = {
    "format": format_reward,
    "soft_format": soft_format_reward,
    "equation": equation_reward,
    "partial_equation": partial_equation_reward,
}

# ---------------------------------------------------------------------------------------------
# Demonstrations (SFT)
# ---------------------------------------------------------------------------------------------


def _show(value: Fraction) -> str:
    """A value as text: ``7``, ``7/2``, ``-3``."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _operand(value: Fraction) -> str:
    text = _show(value)
    return f"({text})" if value.denominator != 1 or value < 0 else text


def _steps(expr: _Expr) -> list[str]:
    """One line per operation, innermost first: ``21 / 3 = 7``."""
    if isinstance(expr, int):
        return []
    a, b = _value(expr.left), _value(expr.right)
    line = f"{_operand(a)} {expr.op} {_operand(b)} = {_show(_apply(expr.op, a, b))}"
    return [*_steps(expr.left), *_steps(expr.right), line]


def demonstration(example: dict) -> str:
    """A correct completion written from the solver, in the task's format.

    Starts with ``PREFIX_TEMPLATE`` rendered for the row (so a config that prefills the answer
    with it trains on exactly the rest); the reasoning lists the solver's intermediate steps and
    the answer is the equation. Raises DataError if the example has no solution.
    """
    nums, target = _example_nums(example), _example_target(example)
    tree = _solve_tree(nums, target)
    if tree is None:
        raise DataError(f"no equation of {nums} reaches {_show(target)}", column="target")
    equation = _render(tree)
    lines = _steps(tree) or [f"{equation} is already {_show(target)}."]
    lines.append(f"So the equation is {equation} = {_show(target)}.")
    body = "\n".join(lines)
    head = PREFIX_TEMPLATE.format(target=_show(target), nums=nums)
    return f"{head}\n{body}\n</think>\n<answer>{equation}</answer>"
