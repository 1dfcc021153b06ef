"""SFT end to end on the tiny random Llama model: it learns a toy pattern, packing equals
padding, resume is exact, full fine-tuning, chat rows, CLI, SFT-then-GRPO stages. Seconds each."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from openrft.config import RunConfig, load_config
from openrft.engine.batching import micro_batches
from openrft.engine.common import build_prompts, eos_ids, load_policy, pick_device
from openrft.engine.losses import sft_loss
from openrft.engine.rollout.sampler import sample_groups
from openrft.engine.sft import load_sft_rows, target_logps, tokenize_examples
from openrft.engine.train import train
from openrft.errors import DataError
from openrft.evaluation.evaluate import load_for_eval

WORDS = ["apple", "banana", "cat", "dog", "egg", "fig"]


def write_setup(tmp: Path, extra: str = "", rows: list[dict] | None = None) -> Path:
    rows = rows or [{"prompt": f"say {w}", "completion": w.upper()} for w in WORDS]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = textwrap.dedent(
        """\
        method: sft
        model: {name: tiny-random-llama, dtype: float32, threads: 1}
        lora: {r: 8, alpha: 16}
        data: {train: data.jsonl}
        sft: {batch_size: 6, max_seq_len: 64}
        optim: {lr: 0.02, micro_batch_size: 8}
        max_steps: 3
        save_every: 1
        """
    )
    path = tmp / "cfg.yaml"
    path.write_text(cfg + extra)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def greedy(cfg: RunConfig, adapter: Path | None) -> list[str]:
    model, tok = load_for_eval(cfg, adapter)
    rows = [{"prompt": f"say {w}"} for w in WORDS]
    prompts = build_prompts(cfg, tok, rows, "rows")
    batch = sample_groups(
        model,
        [p.ids for p in prompts],
        group_size=1,
        max_new_tokens=10,
        eos_ids=eos_ids(tok, model),
        pad_id=tok.pad_token_id,
        temperature=0.0,
    )
    return [
        tok.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
        for ids, m in zip(batch.completion_ids, batch.completion_mask, strict=True)
    ]


def test_sft_learns_to_answer_in_capitals(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path)
    assert greedy(load_config(setup), None) != [w.upper() for w in WORDS]
    run = train(load_config(setup, ["max_steps=150", "save_every=50"]), output_dir=tmp_path / "run")
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 151))
    for key in ("loss", "grad_norm", "learning_rate", "num_tokens", "time/update", "step_time", "epoch"):
        assert key in metrics[0], key
    first, last = metrics[0]["loss"], sum(m["loss"] for m in metrics[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert greedy(load_config(setup), run / "adapter") == [w.upper() for w in WORDS]
    assert sorted(p.name for p in (run / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (run / "checkpoints" / "step-100" / "manifest.json").is_file()


def test_packing_gives_the_padded_loss_with_less_padding(tmp_path: Path, tiny_model_dir: Path) -> None:
    # targets of very different lengths: padding each to the longest wastes most of the batch
    rows = [
        {"prompt": f"say {w}", "completion": w.upper() * k}
        for w, k in zip(WORDS, [1, 9, 1, 7, 2, 5], strict=True)
    ]
    cfg = load_config(write_setup(tmp_path, rows=rows))
    model, tok = load_policy(cfg, pick_device("cpu"))
    examples = tokenize_examples(cfg, tok, load_sft_rows(cfg), cfg.data.train, 128, tok.eos_token_id)
    total = float(sum(len(e.completion_ids) for e in examples))
    losses, cells = [], []
    for packing in (False, True):
        batches = micro_batches(examples, packing=packing, capacity=128, per_micro=8, pad=tok.pad_token_id)
        with torch.no_grad():
            losses.append(sum(float(sft_loss(*target_logps(model, b), total)) for b in batches))
        cells.append(
            sum(
                b.input_ids.numel() if packing else b.prompt_ids.numel() + b.completion_ids.numel()
                for b in batches
            )
        )
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert cells[1] < 0.8 * cells[0]


def test_resume_continues_exactly(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path)
    opts = ["sft.batch_size=4", "sft.packing=true"]  # 6 rows, 4 per step: epochs straddle steps
    full = train(load_config(setup, [*opts, "max_steps=4"]), output_dir=tmp_path / "full")
    part = tmp_path / "part"
    train(load_config(setup, [*opts, "max_steps=2"]), output_dir=part)
    train(load_config(setup, [*opts, "max_steps=4"]), output_dir=part, resume=True)
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert [m["loss"] for m in a] == pytest.approx([m["loss"] for m in b], abs=1e-6)


def test_full_finetune_writes_a_model_and_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path)
    opts = ["sft.full_finetune=true", "optim.lr=0.001"]
    run = train(load_config(setup, [*opts, "max_steps=2"]), output_dir=tmp_path / "run")
    train(load_config(setup, [*opts, "max_steps=4"]), output_dir=run, resume=True)
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (run / "adapter").exists() and (run / "model" / "config.json").is_file()
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(run / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(changed) == len(list(base.parameters()))  # every weight trained, not just adapters
    # the written model is a model directory: evaluation loads it by path, without an adapter
    assert len(greedy(load_config(setup, [f"model.name={run / 'model'}"]), None)) == len(WORDS)


def test_chat_message_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w.upper()}]}
        for w in WORDS
    ]
    cfg = load_config(write_setup(tmp_path, rows=rows))
    _, tok = load_policy(cfg, pick_device("cpu"))
    (ex, *_) = tokenize_examples(cfg, tok, load_sft_rows(cfg), cfg.data.train, 64, tok.eos_token_id)
    assert tok.decode(ex.prompt_ids).endswith(
        "<|im_start|>user\nsay apple<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(ex.completion_ids) == "APPLE<|im_end|>"
    run = train(cfg, output_dir=tmp_path / "run")
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_assistant_prefix_is_not_trained_twice(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"prompt": "p", "completion": "<think>so</think>ok"}]
    cfg = load_config(write_setup(tmp_path, 'data: {train: data.jsonl, assistant_prefix: "<think>"}\n', rows))
    _, tok = load_policy(cfg, pick_device("cpu"))
    (ex,) = tokenize_examples(cfg, tok, load_sft_rows(cfg), cfg.data.train, 64, tok.eos_token_id)
    assert tok.decode(ex.prompt_ids).endswith("assistant\n<think>")
    assert tok.decode(ex.completion_ids) == "so</think>ok<|im_end|>"


def test_data_errors_come_before_the_model(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "completion": "A"}, {"prompt": "b"}]
    cfg = load_config(write_setup(tmp_path, rows=rows))
    with pytest.raises(DataError, match=r"data.jsonl:2: the row has no target completion"):
        train(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_too_long_rows_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"prompt": "a", "completion": "x" * 80}]
    with pytest.raises(
        DataError, match=r"data.jsonl:1: prompt \+ completion are \d+ tokens, more than sft.max_seq_len"
    ):
        train(load_config(write_setup(tmp_path, rows=rows)), output_dir=tmp_path / "run")


def test_cli_train_runs_sft(tmp_path: Path, tiny_model_dir: Path) -> None:
    from openrft.cli.main import app

    result = CliRunner().invoke(app, ["train", str(write_setup(tmp_path)), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


REWARD = """
def upper(prompt, completion, example):
    return sum(c.isupper() for c in completion) / max(1, len(completion))
"""


def test_stages_chain_sft_then_grpo_and_resume_skips_finished(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "r.py").write_text(REWARD)
    setup = write_setup(
        tmp_path,
        "rewards: [{name: up, function: r.py:upper}]\n"
        "grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 8}\n"
        "stages:\n  - {name: sft, method: sft, max_steps: 3}\n  - {name: rft, method: grpo, max_steps: 2}\n",
    )
    setup.write_text(setup.read_text().replace("method: sft\n", "", 1))
    cfg = load_config(setup)
    root = train(cfg, output_dir=tmp_path / "chain")
    sft_adapter = root / "stages" / "sft" / "adapter"
    rft_cfg = json.loads((root / "stages" / "rft" / "config.json").read_text())
    assert rft_cfg["method"] == "grpo" and rft_cfg["lora"]["init_adapter"] == str(sft_adapter)
    assert len(read_jsonl(root / "stages" / "sft" / "metrics.jsonl")) == 3
    assert len(read_jsonl(root / "stages" / "rft" / "metrics.jsonl")) == 2
    final = (root / "adapter" / "adapter_model.safetensors").read_bytes()
    assert final == (root / "stages" / "rft" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert final != (sft_adapter / "adapter_model.safetensors").read_bytes()
    record = json.loads((root / "stages.json").read_text())
    assert set(record) == {"sft", "rft"} and all(r["wall_time_s"] > 0 for r in record.values())

    mtime = (root / "stages" / "rft" / "metrics.jsonl").stat().st_mtime_ns
    train(cfg, output_dir=root, resume=True)
    assert (root / "stages" / "rft" / "metrics.jsonl").stat().st_mtime_ns == mtime
    with pytest.raises(Exception, match="already holds a chained run"):
        train(cfg, output_dir=root)
