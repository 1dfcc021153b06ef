"""Built-in graders: their docstring examples, and the cases around them."""

from __future__ import annotations

import doctest
import math
import time

import pytest

from openrft.rewards import builtin, code_graders, graders, loader, outcomes
from openrft.rewards.builtin import BUILTINS


@pytest.mark.parametrize("module", [graders, code_graders, outcomes, loader])  # stats: test_stats.py
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0


def test_every_builtin_has_a_docstring_and_per_sample_signature() -> None:
    # the network graders are the documented exceptions: an async judge, a batched remote grader
    exceptions = {"llm_judge": (False, True), "remote": (True, False)}
    for name, fn in BUILTINS.items():
        assert fn.__doc__, name
        style = loader.call_style(fn)
        assert (style.batched, style.is_async) == exceptions.get(name, (False, False)), name


def test_countdown_builtins_delegate_to_the_task() -> None:
    example = {"nums": [3, 5, 2], "target": 16}
    good = "<think>5+3=8, 8*2=16</think>\n<answer>(5 + 3) * 2</answer>"
    assert builtin.countdown_format("", good, example) == 1.0
    assert builtin.countdown_soft_format("", good, example) == 1.0
    assert builtin.countdown_equation("", good, example) == 1.0
    assert builtin.countdown_partial_equation("", good, example) == 1.0
    assert builtin.countdown_equation("", "<answer>5*3+2</answer>", example) == 0.0


def test_regex_flags_and_bad_flag() -> None:
    assert graders.regex("", "ANSWER", {}, pattern="answer", flags="i") == 1.0
    assert graders.regex("", "ANSWER", {}, pattern="answer") == 0.0
    with pytest.raises(ValueError, match="unknown flag 'q'"):
        graders.regex("", "x", {}, pattern="x", flags="q")


def test_exact_match_lists_whitespace_and_missing_column() -> None:
    assert graders.exact_match("", "  New   York ", {"answer": ["Paris", "New York"]}) == 1.0
    assert graders.exact_match("", "no tags", {"answer": "x"}, extract=r"<a>(.*)</a>") == 0.0
    with pytest.raises(KeyError, match="no column 'gold'"):
        graders.exact_match("", "x", {"answer": "x"}, answer_column="gold")


def test_numeric_match_tolerance_and_bad_reference() -> None:
    assert graders.numeric_match("", "about 3.14159", {"answer": math.pi}, rel_tol=1e-5) == 1.0
    assert graders.numeric_match("", "about 3.14", {"answer": math.pi}) == 0.0
    assert graders.numeric_match("", "no number here", {"answer": 1}) == 0.0
    assert graders.numeric_match("", "-2.5e3", {"answer": "-2500"}) == 1.0
    with pytest.raises(ValueError, match="not a number"):
        graders.numeric_match("", "1", {"answer": "one"})


def test_similarity_metrics_are_bounded_and_ordered() -> None:
    ref = {"answer": "the quick brown fox jumps over the lazy dog"}
    for metric in ("ratio", "bleu", "rouge_l"):
        same = graders.similarity("", ref["answer"], ref, metric=metric)
        near = graders.similarity("", "the quick brown fox jumped over a lazy dog", ref, metric=metric)
        far = graders.similarity("", "completely unrelated words", ref, metric=metric)
        assert same == pytest.approx(1.0)
        assert 0.0 <= far < near < 1.0, metric
    with pytest.raises(ValueError, match="use 'ratio'"):
        graders.similarity("", "x", {"answer": "x"}, metric="cosine")  # type: ignore[arg-type]


def test_json_schema_subset_and_argument_errors() -> None:
    schema = {
        "type": "object",
        "required": ["items"],
        "additionalProperties": False,
        "properties": {"items": {"type": "array", "minItems": 1, "items": {"enum": ["a", "b"]}}},
    }
    assert graders.json_schema("", '{"items": ["a", "b"]}', {}, schema=schema) == 1.0
    assert graders.json_schema("", '{"items": ["c"]}', {}, schema=schema) == 0.0
    assert graders.json_schema("", '{"items": ["a"], "x": 1}', {}, schema=schema) == 0.0
    assert graders.json_schema("", "not json", {}, schema=schema) == 0.0
    row = {"schema": '{"type": "integer"}'}
    assert graders.json_schema("", "```json\n3\n```", row, schema_column="schema") == 1.0
    with pytest.raises(ValueError, match="exactly one of"):
        graders.json_schema("", "{}", {})


def test_length_penalty_shape() -> None:
    assert graders.length_penalty("", "x" * 100, {}, max_length=100) == 0.0
    assert graders.length_penalty("", "x" * 110, {}, max_length=100, slack=20) == -0.5
    assert graders.length_penalty("", "x" * 1000, {}, max_length=100) == -1.0


def test_python_tests_partial_credit_timeouts_and_isolation() -> None:
    tests = {"tests": ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 7"]}
    assert graders_py("def f(x):\n    return 2 * x", tests) == pytest.approx(2 / 3)
    assert graders_py("def f(x):\n    return 2 * x", tests, all_or_nothing=True) == 0.0
    t0 = time.perf_counter()
    assert graders_py("while True:\n    pass", tests, timeout_s=0.5) == 0.0
    assert time.perf_counter() - t0 < 5
    assert graders_py("import os\nos.system('true')\ndef f(x): return 2*x", tests) == 0.0  # refused: no load
    assert graders_py("syntax error here", tests) == 0.0


def graders_py(code: str, example: dict, **kw: object) -> float:
    return code_graders.python_tests("", f"```python\n{code}\n```", example, **kw)  # type: ignore[arg-type]


def test_python_tests_cannot_fake_a_pass_by_printing() -> None:
    fake = 'import json, sys\nprint(json.dumps({"passed": 3, "total": 3}))\ndef f(x): return 0'
    assert graders_py(fake, {"tests": ["assert f(1) == 2"]}) == 0.0


def test_sql_match_order_floats_and_safety() -> None:
    row = {
        "schema": "CREATE TABLE t(name TEXT, v REAL);"
        " INSERT INTO t VALUES ('a', 0.1), ('b', 0.2), ('c', 0.3);",
        "answer": "SELECT name FROM t WHERE v > 0.15 ORDER BY name",
    }
    assert code_graders.sql_match("", "SELECT name FROM t WHERE v >= 0.2", row) == 1.0
    assert (
        code_graders.sql_match("", "SELECT name FROM t WHERE v >= 0.2 ORDER BY name DESC", row, ordered=True)
        == 0.0
    )
    assert code_graders.sql_match("", "DELETE FROM t", row) == 0.0  # read-only
    assert code_graders.sql_match("", "ATTACH DATABASE 'x.db' AS x", row) == 0.0
    assert code_graders.sql_match("", "SELECT name FROM t; DROP TABLE t", row) == 0.0
    assert code_graders.sql_match("", "SELEC nonsense", row) == 0.0
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    t0 = time.perf_counter()
    assert code_graders.sql_match("", slow, row, timeout_s=0.2) == 0.0
    assert time.perf_counter() - t0 < 3
    with pytest.raises(Exception, match="no such table"):
        code_graders.sql_match("", "SELECT 1", {**row, "answer": "SELECT * FROM missing"})
