"""DPO end to end on the tiny random Llama model: it learns a preference that shows in the saved
adapter's log-probs and greedy generations, the reference is the base model, resume is exact,
data errors. Seconds each."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from openrft.config import RunConfig, load_config
from openrft.engine.common import build_prompts, eos_ids
from openrft.engine.logprobs import completion_logps
from openrft.engine.rollout.sampler import left_pad, sample_groups
from openrft.engine.train import train
from openrft.errors import DataError
from openrft.evaluation.evaluate import load_for_eval

WORDS = ["apple", "banana", "cat", "dog", "egg", "fig"]


def write_setup(tmp: Path, rows: list[dict] | None = None) -> Path:
    rows = rows or [{"prompt": f"say {w}", "chosen": "yes", "rejected": "no"} for w in WORDS]
    (tmp / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp / "cfg.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            method: dpo
            model: {name: tiny-random-llama, dtype: float32, threads: 1}
            lora: {r: 8, alpha: 16}
            data: {train: prefs.jsonl}
            dpo: {batch_size: 6, beta: 0.5}
            optim: {lr: 0.02, micro_batch_size: 4}
            max_steps: 3
            save_every: 1
            """
        )
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def greedy(cfg: RunConfig, adapter: Path | None) -> list[str]:
    model, tok = load_for_eval(cfg, adapter)
    prompts = build_prompts(cfg, tok, [{"prompt": f"say {w}"} for w in WORDS], "rows")
    batch = sample_groups(
        model,
        [p.ids for p in prompts],
        group_size=1,
        max_new_tokens=6,
        eos_ids=eos_ids(tok, model),
        pad_id=tok.pad_token_id,
        temperature=0.0,
    )
    return [
        tok.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
        for ids, m in zip(batch.completion_ids, batch.completion_mask, strict=True)
    ]


def margins(cfg: RunConfig, adapter: Path | None) -> list[float]:
    """log p("yes" | prompt) - log p("no" | prompt) for each prompt, as evaluation loads the model."""
    model, tok = load_for_eval(cfg, adapter)
    prompts = build_prompts(cfg, tok, [{"prompt": f"say {w}"} for w in WORDS], "rows")
    ids, mask = left_pad([p.ids for p in prompts], tok.pad_token_id)
    out = []
    for answer in ("yes", "no"):
        a = torch.tensor([tok(answer, add_special_tokens=False)["input_ids"]] * len(prompts))
        with torch.no_grad():
            logp, _ = completion_logps(model, ids, mask, a, torch.ones_like(a))
        out.append(logp.sum(-1))
    return (out[0] - out[1]).tolist()


def test_dpo_learns_the_preferred_answer(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path)
    cfg = load_config(setup, ["max_steps=40", "save_every=20"])
    assert not any(g.startswith("y") for g in greedy(cfg, None))
    run = train(cfg, output_dir=tmp_path / "run")
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 40
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "learning_rate",
        "time/reference",
        "time/update",
        "step_time",
    ):
        assert key in metrics[0], key
    # step 1: the adapter starts at zero (LoRA B = 0), so policy = reference: loss ln 2, margins 0
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    late = metrics[-5:]
    assert sum(m["loss"] for m in late) / 5 < 0.3
    assert all(m["rewards/accuracies"] == 1.0 and m["rewards/margins"] > 1.0 for m in late)
    # DPO moves probability from the rejected answer to the chosen one (it does not imitate the
    # chosen text): with the saved adapter, loaded as evaluation loads it, log p(yes) - log p(no)
    # rises on every prompt well past the base model's, and greedy decoding never answers "no".
    # (Which text greedy decoding then lands on is not DPO's to fix: on this tiny random model
    # it moves with 1e-6 float differences in training, "yes" on one trajectory, "s" on another.)
    base, trained = margins(cfg, None), margins(cfg, run / "adapter")
    assert all(t - b > 1.5 for t, b in zip(trained, base, strict=True)), (base, trained)
    assert not any(g.startswith("n") for g in greedy(cfg, run / "adapter"))


def test_resume_continues_exactly(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = write_setup(tmp_path)
    opts = ["dpo.batch_size=4"]
    full = train(load_config(setup, [*opts, "max_steps=4"]), output_dir=tmp_path / "full")
    part = tmp_path / "part"
    train(load_config(setup, [*opts, "max_steps=2"]), output_dir=part)
    train(load_config(setup, [*opts, "max_steps=4"]), output_dir=part, resume=True)
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for key in ("loss", "rewards/margins", "logps/chosen"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], abs=1e-5), key
    assert (part / "adapter" / "adapter_model.safetensors").is_file()


def test_missing_rejected_column_fails_before_the_model(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "x"}]
    with pytest.raises(DataError, match=r"prefs.jsonl:2: the row has no 'rejected' column"):
        train(load_config(write_setup(tmp_path, rows)), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = load_config(write_setup(tmp_path), ["max_steps=1"])
    train(cfg, output_dir=tmp_path / "run")
    with pytest.raises(Exception, match="already holds a run"):
        train(cfg, output_dir=tmp_path / "run")
