"""Built-in graders that run model-written code, inside the reward workers' sandbox."""

from __future__ import annotations

import time

from openrft.rewards import RewardSet

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
GOOD = "```python\ndef add(a, b):\n    return a + b\n```"
HALF = "```python\ndef add(a, b):\n    return 3\n```"
LOOP = "```python\nwhile True:\n    pass\n```"
NET = "```python\nimport socket\nsocket.socket()\ndef add(a, b):\n    return a + b\n```"
FORK = "```python\nimport os\nos.fork()\ndef add(a, b):\n    return a + b\n```"
SQL_ROW = {
    "schema": "CREATE TABLE p(name TEXT, age INT); INSERT INTO p VALUES ('ann', 31), ('bob', 17);",
    "gold": "SELECT name FROM p WHERE age >= 18",
}


def test_code_graders_in_the_sandbox() -> None:
    specs = [
        {"name": "tests", "function": "python_tests", "timeout_s": 20, "kwargs": {"timeout_s": 1.0}},
        {"name": "sql", "function": "sql_match", "kwargs": {"answer_column": "gold"}},
        {"name": "schema", "function": "json_schema", "kwargs": {"schema": {"type": "object"}}},
    ]
    completions = [GOOD, HALF, LOOP, NET, FORK]
    examples = [{"tests": TESTS, **SQL_ROW} for _ in completions]
    with RewardSet(specs) as rs:
        t0 = time.perf_counter()
        scores = rs.score([""] * len(completions), completions, examples, ["tests"])
        assert time.perf_counter() - t0 < 15
        assert scores.column("tests") == [1.0, 0.5, 0.0, 0.0, 0.0]
        assert scores.errors["tests"] == 0  # a bad completion is a low score, not a user error
        sql = rs.score(
            ["", ""],
            ["```sql\nSELECT name FROM p WHERE age > 17\n```", "DROP TABLE p"],
            [SQL_ROW, SQL_ROW],
            ["sql", "schema"],
        )
        assert sql.column("sql") == [1.0, 0.0]
        assert sql.column("schema") == [0.0, 0.0]
