"""Built-in graders that execute model-written code: Python unit tests and SQL queries.

`python_tests` runs the code in a *further* child process (started from the reward worker, so it
inherits the worker's sandbox, limits and scrubbed environment) with its own audit hook that
refuses processes, sockets and signals, a wall-clock timeout, and stdout/stderr sent to
/dev/null; the result comes back on a private file descriptor, tagged with a random nonce.

`sql_match` runs queries on an in-memory SQLite database built from the example's schema, in
read-only mode, with ATTACH refused and a time budget enforced by SQLite's progress handler.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from openrft.rewards.graders import _answers, extract_text
from openrft.rewards.sandbox import CHILD_HOOK_SOURCE, trusted_spawn

_RUNNER = (
    """
import json as _json, os as _os, sys as _sys
_data = _json.loads(_sys.stdin.read())
_out = _os.dup(1)
_null = _os.open(_os.devnull, _os.O_RDWR)
_os.dup2(_null, 0); _os.dup2(_null, 1); _os.dup2(_null, 2)
"""
    + CHILD_HOOK_SOURCE
    + """
def _run(data, out):
    tag = data.pop("nonce")
    res = {"loaded": False, "passed": 0, "total": len(data["tests"])}
    ns = {"__name__": "__solution__"}
    try:
        exec(compile(data["code"], "<solution>", "exec"), ns)
        res["loaded"] = True
    except BaseException as e:
        res["error"] = type(e).__name__
    if res["loaded"]:
        for test in data["tests"]:
            try:
                exec(compile(test, "<test>", "exec"), ns)
                res["passed"] += 1
            except BaseException:
                pass
    _os.write(out, (tag + _json.dumps(res) + "\\n").encode())
_run(_data, _out)
del _data
_os._exit(0)
"""
)


def run_python_tests(code: str, tests: list[str], timeout_s: float = 5.0) -> tuple[int, int]:
    """Run `code`, then each test snippet, in an isolated child; (passed, total). A timeout, crash
    or code that does not load counts every test as failed.

    >>> code = "def add(a, b):\\n    return a + b"
    >>> run_python_tests(code, ["assert add(1, 2) == 3", "assert add(1, 1) == 3"])
    (1, 2)
    """
    nonce = secrets.token_hex(16)
    payload = json.dumps({"code": code, "tests": tests, "nonce": nonce})
    with tempfile.TemporaryDirectory(prefix="pytests-") as work, trusted_spawn():
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _RUNNER],
                input=payload.encode(),
                capture_output=True,
                timeout=timeout_s,
                cwd=work,
                env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")} | {"HOME": work},
            )
        except subprocess.TimeoutExpired:
            return 0, len(tests)
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(nonce):
            res = json.loads(line[len(nonce) :])
            return int(res["passed"]), len(tests)
    return 0, len(tests)


def python_tests(
    prompt: str,
    completion: str,
    example: dict,
    *,
    tests_column: str = "tests",
    extract: str | None = "fenced",
    timeout_s: float = 5.0,
    all_or_nothing: bool = False,
) -> float:
    """Fraction of the unit tests the completion's code passes (``all_or_nothing``: 1.0 only if
    all pass). The code is the last ```` ``` ```` block (or the whole completion); the tests are
    the example's `tests_column`: one snippet of Python (asserts) or a list of snippets, run one
    after another in the code's namespace. Give the reward spec a `timeout_s` above this one.

    YAML: ``{name: tests, function: python_tests, timeout_s: 20, kwargs: {timeout_s: 5}}``

    >>> ex = {"tests": ["assert square(3) == 9", "assert square(-2) == 4"]}
    >>> python_tests("", "```python\\ndef square(x):\\n    return x * x\\n```", ex)
    1.0
    >>> python_tests("", "def square(x): return x + x", ex)
    0.0
    """
    raw = _answers(example, tests_column)
    tests = [str(t) for t in raw]
    if not tests:
        raise ValueError(f"python_tests: column {tests_column!r} holds no tests")
    code = extract_text(completion, extract)
    if code is None:
        return 0.0
    passed, total = run_python_tests(code, tests, timeout_s)
    if all_or_nothing:
        return 1.0 if passed == total else 0.0
    return passed / total


def _canonical(value: Any, float_digits: int) -> Any:
    if isinstance(value, float):
        return round(value, float_digits) if math.isfinite(value) else value
    return value


def _rows(conn: sqlite3.Connection, query: str, float_digits: int) -> list[tuple]:
    return [tuple(_canonical(v, float_digits) for v in row) for row in conn.execute(query).fetchall()]


def _deny_attach(action: int, *_: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def sql_match(
    prompt: str,
    completion: str,
    example: dict,
    *,
    schema_column: str = "schema",
    answer_column: str = "answer",
    extract: str | None = "fenced",
    ordered: bool = False,
    float_digits: int = 6,
    timeout_s: float = 2.0,
) -> float:
    """1.0 if the completion's SQL query returns the same rows as the gold query, else 0.0.

    The database is built in memory from the example's `schema_column` (CREATE/INSERT script);
    the gold query is in `answer_column`. Rows are compared as a multiset (``ordered=True``: as
    a list), floats rounded to `float_digits`; column names do not matter. A query that fails,
    writes, or runs longer than `timeout_s` scores 0.0.

    YAML: ``{name: sql, function: sql_match, kwargs: {schema_column: db, answer_column: gold}}``

    >>> ex = {"schema": "CREATE TABLE t(x INT); INSERT INTO t VALUES (1), (2), (3);",
    ...       "answer": "SELECT x FROM t WHERE x > 1"}
    >>> sql_match("", "```sql\\nSELECT x FROM t WHERE x >= 2 ORDER BY x DESC\\n```", ex)
    1.0
    >>> sql_match("", "SELECT x FROM t", ex)
    0.0
    """
    schema = _answers(example, schema_column)[0]
    gold = _answers(example, answer_column)[0]
    query = extract_text(completion, extract)
    if query is None or not query.strip():
        return 0.0
    conn = sqlite3.connect(":memory:")
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.executescript(str(schema))
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_deny_attach)
        want = _rows(conn, str(gold), float_digits)  # a broken gold query raises: a setup error
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            got = _rows(conn, query.strip().rstrip(";"), float_digits)
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError):
            return 0.0
    finally:
        conn.close()
    if ordered:
        return 1.0 if got == want else 0.0
    return 1.0 if Counter(got) == Counter(want) else 0.0
