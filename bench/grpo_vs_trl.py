"""B1: GRPO step time, OpenRFT vs TRL, on the same work, in one invocation.

    .venv/bin/pip install "trl==1.16.0"      # bench-only dependency
    .venv/bin/python bench/grpo_vs_trl.py [--steps 4] [--only openrft|trl] [--dtype bfloat16]

B1 (see issue 4): SmolLM2-135M-Instruct; LoRA r=16, alpha=32 on all linear layers; 2 Countdown
prompts x 8 generations per step; every completion exactly 128 new tokens (EOS suppressed, so
both do identical work); temperature 1.0; beta = 0; one optimizer update per batch; reward =
fraction of digit characters. The first step of each system is a warm-up and is not timed.
Prints per-phase seconds (rollout, reward, log-probs/update), peak RSS, and the ratio
trl_s_per_step / openrft_s_per_step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
N_PROMPTS, G, NEW_TOKENS, LR = 2, 8, 128, 1e-4


def countdown_rows(n: int) -> list[dict[str, Any]]:
    from openrft.tasks import countdown

    return countdown.generate(n, seed=0)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------------------------------
# OpenRFT
# ---------------------------------------------------------------------------------------------


def run_openrft(steps: int, dtype: str) -> dict[str, Any]:
    from contextlib import closing

    from openrft.config import RunConfig
    from openrft.engine.grpo import setup, train_step
    from openrft.tasks import countdown
    from openrft.tracking.progress import NullReporter
    from openrft.tracking.run_dir import RunDir

    tmp = Path(tempfile.mkdtemp(prefix="b1-openrft-"))
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in countdown_rows(64)))
    cfg = RunConfig.model_validate(
        {
            "model": {"name": "smollm2-135m-instruct", "dtype": dtype},
            "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "data": {
                "train": str(data),
                "prompt_template": countdown.PROMPT_TEMPLATE,
                "system_prompt": countdown.SYSTEM_PROMPT,
            },
            "rewards": [{"name": "digits", "function": f"{HERE / 'b1_reward.py'}:digit_fraction"}],
            "grpo": {
                "num_generations": G,
                "prompts_per_step": N_PROMPTS,
                "temperature": 1.0,
                "max_new_tokens": NEW_TOKENS,
                "beta": 0.0,
                "num_iterations": 1,
                "loss_type": "grpo",
            },
            "optim": {"lr": LR, "micro_batch_size": N_PROMPTS * G},
            "max_steps": steps,
            "save_every": 0,
        }
    )
    tr = setup(cfg, RunDir(tmp / "run"), resume=False, reporter=NullReporter())
    tr.policy.eos = []  # EOS suppressed: every completion is exactly NEW_TOKENS long
    rows = []
    with closing(tr):
        for step in range(1, steps + 1):
            m = train_step(tr, step)
            assert m["completions/min_length"] == NEW_TOKENS
            rows.append(
                {
                    "step_s": m["step_time"],
                    "rollout_s": m["time/rollout"],
                    "reward_s": m["time/reward"],
                    "update_s": m["time/update"],
                }
            )
            print(
                f"  openrft step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()),
                flush=True,
            )
    return summarise("openrft", rows)


# ---------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------


def run_trl(steps: int, dtype: str) -> dict[str, Any]:
    from b1_reward import digit_fraction_trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from openrft.models import resolve_model
    from openrft.tasks import countdown

    phases: dict[str, float] = {}
    original = profiling.ProfilingContext._log_metrics

    def record(self: Any, duration: float) -> None:  # TRL times its phases but only logs to trackers
        phases[self.name] = phases.get(self.name, 0.0) + duration
        original(self, duration)

    profiling.ProfilingContext._log_metrics = record  # type: ignore[method-assign]
    path = str(resolve_model("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = countdown_rows(64)
    prompts = [
        [
            {"role": "system", "content": countdown.SYSTEM_PROMPT},
            {"role": "user", "content": countdown.PROMPT_TEMPLATE.format(**r)},
        ]
        for r in rows
    ]
    ds = Dataset.from_list([{"prompt": p} for p in prompts])
    out = tempfile.mkdtemp(prefix="b1-trl-")
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=N_PROMPTS * G,
        num_generations=G,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        beta=0.0,
        num_iterations=1,
        learning_rate=LR,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=dtype == "bfloat16",
        dataloader_num_workers=0,
        generation_kwargs={"min_new_tokens": NEW_TOKENS},  # EOS suppressed, same work as OpenRFT
        seed=0,
    )
    times: list[dict[str, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            phases.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_s = time.perf_counter() - self.t0
            gen = sum(v for n, v in phases.items() if "generate" in n)
            rew = phases.get("GRPOTrainer._calculate_rewards", 0.0)
            times.append(
                {"step_s": step_s, "rollout_s": gen, "reward_s": rew, "update_s": step_s - gen - rew}
            )
            print(
                f"  trl step {len(times)}: " + ", ".join(f"{k} {v:.2f}" for k, v in times[-1].items()),
                flush=True,
            )

    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[digit_fraction_trl],
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora,
        callbacks=[Timer()],
    )
    trainer.train()
    return summarise("trl", times)


def summarise(name: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    timed = rows[1:] if len(rows) > 1 else rows  # step 1 is the warm-up
    out: dict[str, Any] = {"system": name, "steps_timed": len(timed), "peak_rss_gib": peak_rss_gib()}
    for key in rows[0]:
        out[key] = statistics.median(r[key] for r in timed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="steps per system; the first is a warm-up")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--only", choices=["openrft", "trl"], default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    results = []
    # each system in its own process would isolate peak memory; in one process the second
    # system's peak includes the first's. Run with --only to measure memory cleanly.
    if a.only in (None, "openrft"):
        print("OpenRFT (B1)", flush=True)
        results.append(run_openrft(a.steps, a.dtype))
    if a.only in (None, "trl"):
        print("TRL GRPOTrainer (B1)", flush=True)
        results.append(run_trl(a.steps, a.dtype))
    print()
    print(f"{'system':10} {'s/step':>8} {'rollout':>8} {'reward':>8} {'update':>8} {'peak GiB':>9}")
    for r in results:
        print(
            f"{r['system']:10} {r['step_s']:8.2f} {r['rollout_s']:8.2f} {r['reward_s']:8.2f} "
            f"{r['update_s']:8.2f} {r['peak_rss_gib']:9.2f}"
        )
    if len(results) == 2:
        ratio = results[1]["step_s"] / results[0]["step_s"]
        print(f"\nratio trl_s_per_step / openrft_s_per_step = {ratio:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
