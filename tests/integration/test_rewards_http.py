"""LLM judge and remote grader against real HTTP servers on loopback (started by the tests),
in isolated reward workers, and scoring a real two-step GRPO run on the tiny model."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from openrft.config import load_config
from openrft.engine.train import train
from openrft.errors import RewardError
from openrft.rewards import RewardSet

KEY = "sk-test-judge-123"

Reply = tuple[int, Any, float]  # status, JSON body (or text), seconds to wait first


class Loopback:
    """A real HTTP server on 127.0.0.1:<free port>, answering POSTs with `respond`."""

    def __init__(self, respond: Callable[[str, dict[str, str], Any], Reply]) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append({"path": self.path, "headers": headers, "body": body})
                status, reply, delay = respond(self.path, headers, body)
                time.sleep(delay)
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the judge: an OpenAI-compatible chat endpoint with deterministic scores --------------------


def graded_text(user_message: str) -> str:
    """The completion inside the judge prompt (see `http_graders.judge_messages`)."""
    after = user_message.split("## Response to grade\n", 1)[1]
    return after.rsplit("\n\nGrade the response from", 1)[0]


def judge_score(completion: str) -> int:
    return min(10, completion.count("a"))


def judge_answer(completion: str) -> str:
    if "GIBBERISH" in completion:
        return "What a lovely answer, I like it a lot."
    if "TOOHIGH" in completion:
        return "Score: 99"
    if "JSONFMT" in completion:
        return json.dumps({"score": judge_score(completion), "reason": "counted"})
    return f"It has some a's.\nScore: {judge_score(completion)}/10"


def judge_respond(path: str, headers: dict[str, str], body: Any) -> Reply:
    if path != "/v1/chat/completions":
        return 404, {"error": "not found"}, 0.0
    if headers.get("authorization") != f"Bearer {KEY}":
        return 401, {"error": "bad key"}, 0.0
    if body.get("model") != "judge-1" or body["messages"][0]["role"] != "system":
        return 400, {"error": "bad request"}, 0.0
    completion = graded_text(body["messages"][1]["content"])
    delay = 0.5 if "SLOW" in completion else 0.0
    choice = {"index": 0, "message": {"role": "assistant", "content": judge_answer(completion)}}
    return 200, {"id": "x", "object": "chat.completion", "choices": [choice]}, delay


@pytest.fixture
def judge() -> Iterator[Loopback]:
    server = Loopback(judge_respond)
    yield server
    server.close()


def judge_spec(url: str, **extra: Any) -> dict[str, Any]:
    kwargs = {
        "rubric": "Count the letter a.",
        "url": url + "/v1",
        "model": "judge-1",
        "api_key_env": "JUDGE_KEY",
    }
    return {"name": "judge", "function": "llm_judge", "kwargs": {**kwargs, **extra}}


PEEK = """
import os
def peek(prompt, completion, example):
    return 1.0 if "JUDGE_KEY" in os.environ or "GRADER_TOKEN" in os.environ else 0.0
"""


def test_judge_scores_parses_and_counts_errors(
    judge: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    (tmp_path / "peek.py").write_text(PEEK)
    completions = ["banana", "JSONFMT aaa", "GIBBERISH", "TOOHIGH", "xyz", "a" * 30]
    specs = [judge_spec(judge.url), {"name": "peek", "function": "peek.py:peek"}]
    with RewardSet(specs, base_dir=tmp_path, max_error_rate=1.0) as rs:
        scores = rs.score([""] * 6, completions, [{}] * 6)
        assert all(p["namespaces"] for p in rs.isolation())  # PID namespace, host network kept
    assert scores.column("judge")[:2] == [3.0, 3.0]
    assert scores.column("judge")[4:] == [0.0, 10.0]
    assert scores.errors["judge"] == 2  # GIBBERISH (unparseable) and TOOHIGH (out of range)
    assert scores.column("judge")[2:4] == [0.0, 0.0]
    text = "\n".join(scores.tracebacks["judge"])
    assert "could not parse a score" in text and "outside the declared range [0, 10]" in text
    assert scores.column("peek") == [0.0] * 6, "a function that names no variable must not see the key"
    assert len(judge.requests) == 6


def test_judge_normalize_reference_and_concurrency(
    judge: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    spec = judge_spec(judge.url, normalize=True, reference_column="answer", rubric="Gold: {answer}")
    with RewardSet([spec], base_dir=tmp_path, pool_size=1) as rs:
        rs.score(["p"], ["aa"], [{"answer": "42"}])  # warm: the worker imports httpx
        t0 = time.perf_counter()
        scores = rs.score(["p"] * 8, ["SLOW aa"] * 8, [{"answer": "42"}] * 8)
        elapsed = time.perf_counter() - t0
    assert scores.column("judge") == [0.2] * 8
    assert elapsed < 2.5, f"8 judge calls of 0.5 s each took {elapsed:.2f}s: not concurrent"
    user = judge.requests[-1]["body"]["messages"][1]["content"]
    assert "Gold: 42" in user and "## Reference answer\n42" in user


def test_judge_failures_are_counted_user_errors(
    judge: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "wrong-key")
    down = Loopback(judge_respond)
    down.close()  # nothing listens there any more: connection refused
    specs = [
        judge_spec(judge.url),
        {**judge_spec(down.url, retries=1, backoff_s=0.05), "name": "down"},
    ]
    with RewardSet(specs, base_dir=tmp_path, max_error_rate=1.0) as rs:
        scores = rs.score(["p", "p"], ["aa", "a"], [{}, {}])
    assert scores.errors == {"judge": 2, "down": 2}
    assert "HTTP 401" in scores.tracebacks["judge"][0] and "not retried" in scores.tracebacks["judge"][0]
    assert "failed after 2 attempts" in scores.tracebacks["down"][0]
    assert len(judge.requests) == 2  # a 401 is not retried


def test_missing_key_variable_stops_before_start(judge: Loopback, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with pytest.raises(RewardError, match="environment variable JUDGE_KEY is not set"):
        RewardSet([judge_spec(judge.url)])


def test_local_model_judge_runs_in_the_worker(tiny_model_dir: Path, openrft_home_dir: Path) -> None:
    """A model loaded by OpenRFT inside the worker; the random tiny model cannot write a score,
    so each sample is a counted parse error (the plumbing is what is tested)."""
    spec = {
        "name": "local",
        "function": "llm_judge",
        "kwargs": {"rubric": "Score it.", "local_model": "tiny-random-llama", "max_tokens": 8},
    }
    with RewardSet([spec], max_error_rate=1.0, pool_size=1) as rs:
        scores = rs.score(["p", "p"], ["x", "y"], [{}, {}])
    assert scores.errors["local"] == 2, scores.tracebacks
    for tb in scores.tracebacks["local"]:
        assert "could not parse a score" in tb or "answer is empty; no score to parse" in tb, tb


# -- the remote grader --------------------------------------------------------------------------


class RemoteLogic:
    """Scores = id + len(completion) / 1000; /flaky fails twice with 503; /slow never answers in time."""

    def __init__(self) -> None:
        self.flaky_calls = 0

    def __call__(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        if path == "/auth" and headers.get("x-api-key") != "Token tok-9":
            return 403, {"error": "forbidden"}, 0.0
        if path == "/flaky":
            self.flaky_calls += 1
            if self.flaky_calls <= 2:
                return 503, "busy", 0.0
        if path == "/slow":
            return 200, {"scores": []}, 2.0
        if path == "/short":
            return 200, {"scores": [1.0]}, 0.0
        scores = [
            None if ex.get("skip") else float(ex["id"]) + len(c) / 1000
            for c, ex in zip(body["completions"], body["examples"], strict=True)
        ]
        assert len(body["prompts"]) == len(scores)
        return 200, {"scores": scores}, 0.0


@pytest.fixture
def remote_server() -> Iterator[Loopback]:
    server = Loopback(RemoteLogic())
    yield server
    server.close()


def remote_spec(name: str, url: str, **kwargs: Any) -> dict[str, Any]:
    return {"name": name, "function": "remote", "kwargs": {"url": url, **kwargs}}


def test_remote_batches_retries_auth_and_timeouts(
    remote_server: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADER_TOKEN", "tok-9")
    (tmp_path / "peek.py").write_text(PEEK)
    url = remote_server.url
    specs = [
        remote_spec("batched", url + "/score", batch_size=3),
        remote_spec("flaky", url + "/flaky", retries=3, backoff_s=0.05),
        remote_spec(
            "auth", url + "/auth", auth_env="GRADER_TOKEN", auth_header="X-Api-Key", auth_scheme="Token"
        ),
        remote_spec("slow", url + "/slow", timeout_s=0.3, retries=1, backoff_s=0.05),
        remote_spec("short", url + "/short"),
        {"name": "peek", "function": "peek.py:peek"},
    ]
    n = 7
    completions = [f"c{'x' * i}" for i in range(n)]
    examples = [{"id": i, "skip": i == 6} for i in range(n)]
    with RewardSet(specs, base_dir=tmp_path, max_error_rate=1.0) as rs:
        assert rs.call_styles()["batched"] == {"batched": True, "is_async": False}
        t0 = time.perf_counter()
        scores = rs.score(["p"] * n, completions, examples)
        elapsed = time.perf_counter() - t0
    expected = [i + len(c) / 1000 for i, c in enumerate(completions)]
    for name in ("batched", "flaky", "auth"):
        got = scores.column(name)
        assert got[:6] == pytest.approx(expected[:6]), name
        assert got[6] != got[6], "null from the server = not applicable (NaN)"
        assert scores.none[name] == 1 and scores.errors[name] == 0
    sizes = [len(r["body"]["completions"]) for r in remote_server.requests if r["path"] == "/score"]
    assert sorted(sizes) == [1, 3, 3]
    assert remote_server.requests[0]["body"]["examples"][0] in (
        {"id": 0, "skip": False},
        {"id": 3, "skip": False},
        {"id": 6, "skip": True},
    )
    assert [r["path"] for r in remote_server.requests].count("/flaky") == 3  # 503, 503, 200
    assert (
        scores.errors["slow"] == n
        and "failed after 2 attempts; last: no answer within 0.3s" in scores.tracebacks["slow"][0]
    )
    assert (
        scores.errors["short"] == n
        and 'expected {"scores": [...]} with 7 values, got 1 scores' in scores.tracebacks["short"][0]
    )
    assert scores.column("peek") == [0.0] * n
    assert elapsed < 15


# -- both score a real two-step GRPO run ---------------------------------------------------------


def test_judge_and_remote_score_a_two_step_grpo_run(
    judge: Loopback,
    remote_server: Loopback,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    rows = [{"prompt": f"say {w}", "id": i} for i, w in enumerate(["apple", "banana", "cat", "dog"])]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = textwrap.dedent(
        f"""\
        model: {{name: tiny-random-llama, dtype: float32, threads: 1}}
        lora: {{r: 4, alpha: 8}}
        data: {{train: data.jsonl}}
        grpo: {{num_generations: 4, prompts_per_step: 2, max_new_tokens: 12, temperature: 1.0}}
        optim: {{lr: 0.01, micro_batch_size: 4}}
        max_steps: 2
        save_every: 0
        rewards:
          - name: judge
            function: llm_judge
            kwargs: {{rubric: "Count the a's", url: "{judge.url}/v1", model: judge-1, api_key_env: JUDGE_KEY}}
          - name: remote
            function: remote
            weight: 0.5
            kwargs: {{url: "{remote_server.url}/score", batch_size: 4}}
        """
    )
    (tmp_path / "cfg.yaml").write_text(cfg)
    run = train(load_config(tmp_path / "cfg.yaml"), output_dir=tmp_path / "run")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and len(samples) == 16
    for m in metrics:
        assert m["rewards/judge/errors"] == 0 and m["rewards/remote/errors"] == 0
    for s in samples:
        assert s["rewards"]["judge"] == judge_score(s["completion"])
        row = next(r for r in rows if r["prompt"] == s["prompt"])
        assert s["rewards"]["remote"] == pytest.approx(row["id"] + len(s["completion"]) / 1000)
        assert s["reward"] == pytest.approx(s["rewards"]["judge"] + 0.5 * s["rewards"]["remote"])
    for step in (1, 2):
        vals = [s["rewards"]["judge"] for s in samples if s["step"] == step]
        assert metrics[step - 1]["rewards/judge/mean"] == pytest.approx(sum(vals) / len(vals))
    judged = [graded_text(r["body"]["messages"][1]["content"]) for r in judge.requests]
    assert sorted(judged) == sorted(s["completion"] for s in samples)
    assert sum(len(r["body"]["completions"]) for r in remote_server.requests) == 16
