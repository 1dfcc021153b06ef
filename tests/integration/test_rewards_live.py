"""Live reward updates on a real run directory (a two-step GRPO run on the tiny model): re-score
before the switch, version records, rejections, restore on resume, in-place reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.config import load_config
from openrft.engine.train import train
from openrft.errors import RewardError
from openrft.rewards import RewardSet
from openrft.rewards.live import apply_pending_updates, read_versions, request_update, version_metrics

V1 = """
def count_a(prompt, completion, example):
    return completion.count("a") / max(1, len(completion))
"""
V2 = """
def count_b(prompt, completion, example):
    return completion.count("b") / max(1, len(completion))
"""
BROKEN_IMPORT = "import no_such_module_anywhere\n\ndef f(prompt, completion, example):\n    return 1.0\n"
NEEDS_COLUMN = "def f(prompt, completion, example):\n    return float(example['target'] > 0)\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("live")
    rows = [{"prompt": f"say {w}", "id": i} for i, w in enumerate(["apple", "banana", "cat", "dog"])]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "rewards.py").write_text(V1)
    (tmp / "cfg.yaml").write_text(
        "model: {name: tiny-random-llama, dtype: float32, threads: 1}\n"
        "lora: {r: 4, alpha: 8}\n"
        "data: {train: data.jsonl}\n"
        "grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 16, temperature: 1.0}\n"
        "max_steps: 2\nsave_every: 0\n"
        "rewards:\n  - {name: a, function: rewards.py:count_a}\n"
    )
    run = train(load_config(tmp / "cfg.yaml"), output_dir=tmp / "run")
    return tmp, run


def test_update_rescores_then_switches_and_records(run_dir: tuple[Path, Path]) -> None:
    tmp, run = run_dir
    cfg = load_config(tmp / "cfg.yaml")
    (tmp / "v2.py").write_text(V2)
    samples = read_jsonl(run / "samples.jsonl")
    with RewardSet(cfg.rewards, base_dir=cfg.base_dir) as rs:
        assert apply_pending_updates(rs, run, 3) == []
        assert [r["status"] for r in read_versions(run)] == ["initial"]
        request = request_update(run, {"a": "v2.py:count_b"}, cwd=tmp)
        events = apply_pending_updates(rs, run, 3)
        assert rs.versions == {"a": 2} and version_metrics(rs) == {"rewards/a/version": 2.0}
        assert rs.score(["p"], ["bbbb"], [{}]).column("a") == [1.0]  # the new version is in force
    assert len(events) == 1
    ev = events[0]
    assert (ev["status"], ev["name"], ev["version"], ev["step"]) == ("applied", "a", 2, 3)
    rescore = ev["rescore"]
    assert rescore["n"] == len(samples) == 16 and rescore["steps"] == [1, 2]
    old = [s["rewards"]["a"] for s in samples]
    new = [s["completion"].count("b") / max(1, len(s["completion"])) for s in samples]
    assert rescore["mean_old"] == pytest.approx(sum(old) / 16)
    assert rescore["mean_new"] == pytest.approx(sum(new) / 16)
    assert rescore["errors_new"] == 0 and rescore["groups"] == 4
    records = read_versions(run)
    assert [(r["status"], r["version"]) for r in records] == [("initial", 1), ("applied", 2)]
    assert records[1]["request"] == request.name and records[1]["sha256"] == request_sha(request)
    assert (run / records[1]["source_copy"]).read_text() == V2
    assert not request.exists() and (run / "reward_updates" / "done" / request.name).exists()


def request_sha(request: Path) -> str:
    done = request.parent / "done" / request.name
    return json.loads(done.read_text())["updates"][0]["sha256"]


def test_rejections_keep_the_old_version(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    tmp, run = run_dir
    cfg = load_config(tmp / "cfg.yaml")
    (tmp / "broken.py").write_text(BROKEN_IMPORT)
    (tmp / "needs.py").write_text(NEEDS_COLUMN)
    with RewardSet(cfg.rewards, base_dir=cfg.base_dir) as rs:
        apply_pending_updates(rs, run, 3)  # restores v2 (applied at step 3 by the test above, if run)
        before = rs.versions["a"]
        request_update(run, {"a": "broken.py:f"}, cwd=tmp)
        events = apply_pending_updates(rs, run, 4)
        assert (
            events[-1]["status"] == "rejected"
            and "No module named 'no_such_module_anywhere'" in events[-1]["error"]
        )
        assert rs.versions["a"] == before
        # with the dataset rows stored in samples.jsonl, a version failing on them is refused
        copy = tmp_path / "run"
        copy.mkdir()
        (copy / "config.json").write_text((run / "config.json").read_text())
        rows = read_jsonl(run / "samples.jsonl")
        (copy / "samples.jsonl").write_text(
            "".join(json.dumps({**r, "example": {"id": 1}}) + "\n" for r in rows)
        )
        request_update(copy, {"a": "needs.py:f"}, cwd=tmp)
        events = apply_pending_updates(rs, copy, 3)
        assert (
            events[-1]["status"] == "rejected"
            and "failed on 16 of 16 stored completions" in events[-1]["error"]
        )
        assert rs.versions["a"] == before
    statuses = [r["status"] for r in read_versions(copy)]
    assert statuses == ["initial", "rejected"]


def test_resume_restores_the_version_in_force(run_dir: tuple[Path, Path]) -> None:
    tmp, run = run_dir
    cfg = load_config(tmp / "cfg.yaml")
    if not any(r["status"] == "applied" for r in read_versions(run)):  # run alone: apply one first
        (tmp / "v2.py").write_text(V2)
        with RewardSet(cfg.rewards, base_dir=cfg.base_dir) as rs:
            request_update(run, {"a": "v2.py:count_b"}, cwd=tmp)
            apply_pending_updates(rs, run, 3)
    records = read_versions(run)
    applied = [r for r in records if r["status"] == "applied"]
    at = applied[-1]["step"]
    with RewardSet(cfg.rewards, base_dir=cfg.base_dir) as rs:  # a fresh trainer: version 1
        assert apply_pending_updates(rs, run, at - 1) == [] and rs.versions["a"] == 1
        events = apply_pending_updates(rs, run, at)
        assert [(e["status"], e["version"]) for e in events] == [("restored", applied[-1]["version"])]
        assert rs.score(["p"], ["bbbb"], [{}]).column("a") == [1.0]
    assert len(read_versions(run)) == len(records)  # restoring writes no new record


def test_replace_reloads_an_edited_file(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("def f(prompt, completion, example):\n    return 1.0\n")
    with RewardSet([{"name": "x", "function": "f.py:f"}], base_dir=tmp_path) as rs:
        assert rs.score(["p", "p"], ["a", "b"], [{}, {}]).column("x") == [1.0, 1.0]
        (tmp_path / "f.py").write_text("async def f(prompt, completion, example):\n    return 2.0\n")
        rs.replace("x", "f.py:f")
        assert rs.call_styles()["x"] == {"batched": False, "is_async": True}
        assert rs.score(["p", "p"], ["a", "b"], [{}, {}]).column("x") == [2.0, 2.0]
        assert rs.versions == {"x": 2}
        with pytest.raises(RewardError, match="no reward named 'y'"):
            rs.replace("y", "f.py:f")
        (tmp_path / "f.py").write_text("def f(prompt, completion, example)\n")  # syntax error
        with pytest.raises(RewardError, match="syntax error"):
            rs.replace("x", "f.py:f")
        assert rs.versions == {"x": 2}
