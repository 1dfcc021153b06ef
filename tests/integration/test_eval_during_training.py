"""Held-out evaluation during training (`eval.every`, `eval.keep_best`) on the tiny random Llama:
which steps get eval metrics, that they are `openrft eval`'s numbers for the same weights, and
which adapter is kept as the best. Seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_grpo_tiny import read_jsonl, write_setup

from openrft.config import load_config
from openrft.engine.train import train
from openrft.errors import ConfigError
from openrft.evaluation.evaluate import evaluate

EVAL = ["eval.every=2", "eval.max_rows=2", "eval.max_new_tokens=8", "save_every=0"]


def test_eval_every_two_steps_logs_held_out_metrics_at_steps_two_and_four(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = load_config(write_setup(tmp_path), ["max_steps=4", *EVAL])
    run = train(cfg, output_dir=tmp_path / "run")
    rows = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    with_eval = [m["step"] for m in rows if "eval/accuracy" in m]
    assert with_eval == [2, 4]
    for m in rows:
        if m["step"] in (2, 4):
            assert m["eval/accuracy_ci_low"] <= m["eval/accuracy"] <= m["eval/accuracy_ci_high"]
            assert m["eval/rewards/a/mean"] == pytest.approx(m["eval/accuracy"])  # `a` is the success reward
            assert m["time/eval"] > 0
            assert "eval/pass@1" in m


def test_the_last_steps_eval_equals_openrft_eval_of_the_final_adapter(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = load_config(write_setup(tmp_path), ["max_steps=2", *EVAL])
    run = train(cfg, output_dir=tmp_path / "run")
    last = read_jsonl(run / "metrics.jsonl")[-1]
    report = evaluate(cfg, adapter=run / "adapter")
    assert last["eval/accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    assert last["eval/reward"] == pytest.approx(report["reward"], abs=1e-6)


def test_keep_best_keeps_the_adapter_of_the_best_held_out_accuracy(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = load_config(write_setup(tmp_path), ["max_steps=4", *EVAL, "eval.every=1", "eval.keep_best=true"])
    run = train(cfg, output_dir=tmp_path / "run")
    rows = read_jsonl(run / "metrics.jsonl")
    accs = [(m["eval/accuracy"], m["step"]) for m in rows]
    best_acc = max(a for a, _ in accs)
    first_best = min(s for a, s in accs if a == best_acc)  # a tie does not replace the kept adapter
    best = run / "adapter-best"
    record = json.loads((best / "openrft_best.json").read_text())
    assert record == {"step": first_best, "accuracy": pytest.approx(best_acc)}
    assert (best / "adapter_config.json").is_file()
    kept = load_file(str(best / "adapter_model.safetensors"))
    assert set(kept) == set(load_file(str(run / "adapter" / "adapter_model.safetensors")))
    events = read_jsonl(run / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "best_adapter"][-1] == first_best


def test_sft_evaluates_during_training_too(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_setup(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "data.jsonl").read_text().splitlines()]
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({**r, "completion": r["prompt"].split()[-1]}) + "\n" for r in rows)
    )
    cfg = load_config(path, ["method=sft", "sft.batch_size=2", "max_steps=2", *EVAL])
    run = train(cfg, output_dir=tmp_path / "run")
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl") if "eval/accuracy" in m] == [2]


def test_keep_best_without_eval_every_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keep_best needs eval\.every"):
        load_config(write_setup(tmp_path), ["eval.keep_best=true"])
