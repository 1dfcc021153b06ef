"""Rollout throughput: OpenRFT's sampler vs transformers' `model.generate`, same work.

    .venv/bin/python bench/rollout_vs_generate.py [--batch 32] [--new-tokens 160] [--group 8]

Both sample `batch` sequences of exactly `new_tokens` tokens (EOS suppressed) at temperature
1.0 from SmolLM2-135M-Instruct with a LoRA adapter attached (as during GRPO), in bf16 on CPU.
`model.generate` runs on the peft model with SDPA attention, as TRL calls it; OpenRFT samples
from its LoRA-merged copy. Two layouts: `batch` distinct Countdown prompts, and
`batch / group` prompts x `group` samples each (GRPO's layout, where OpenRFT prefills each
prompt once). Prints tokens/s and the ratio. glibc malloc keeps freed memory for reuse in
this process, as in every OpenRFT run, for both systems.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from openrft.engine.kernels.allocator import keep_freed_memory
from openrft.engine.rollout.model import RolloutModel
from openrft.engine.rollout.sampler import sample_groups
from openrft.models import attach_lora, load_model_and_tokenizer
from openrft.tasks import countdown


def prompt_ids(tok: object, n: int) -> list[list[int]]:
    out = []
    for row in countdown.generate(n, seed=0):
        msgs = [
            {"role": "system", "content": countdown.SYSTEM_PROMPT},
            {"role": "user", "content": countdown.PROMPT_TEMPLATE.format(**row)},
        ]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + "<think>"  # type: ignore[attr-defined]
        out.append(tok(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    return out


def time_generate(
    model: torch.nn.Module, tok: object, prompts: list[list[int]], group: int, new: int
) -> float:
    from openrft.engine.rollout.sampler import left_pad

    ids, mask = left_pad(prompts, tok.pad_token_id)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    out = model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new,
        min_new_tokens=new,
        num_return_sequences=group,
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
    )
    dt = time.perf_counter() - t0
    assert out.shape[0] == len(prompts) * group and out.shape[1] - ids.shape[1] == new
    return dt


def time_openrft(sampler: RolloutModel, prompts: list[list[int]], group: int, new: int) -> float:
    t0 = time.perf_counter()
    b = sample_groups(
        sampler, prompts, group_size=group, max_new_tokens=new, eos_ids=[], pad_id=0, temperature=1.0
    )
    dt = time.perf_counter() - t0
    assert int(b.completion_mask.sum()) == len(prompts) * group * new
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median)")
    a = ap.parse_args()
    keep_freed_memory()  # as every OpenRFT run does (engine/kernels/allocator.py); both systems share it
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype="bfloat16")
    model = attach_lora(model, r=16, alpha=32, dropout=0.0)
    sampler = RolloutModel(model)
    print(f"{'layout':28} {'system':10} {'tokens/s':>9}")
    for layout, n_prompts, group in (
        (f"{a.batch} prompts x 1", a.batch, 1),
        (f"{a.batch // a.group} prompts x {a.group}", a.batch // a.group, a.group),
    ):
        prompts = prompt_ids(tok, n_prompts)
        tokens = n_prompts * group * a.new_tokens
        rates = {}
        for name, fn in (
            ("generate", lambda p=prompts, g=group: time_generate(model, tok, p, g, a.new_tokens)),
            ("openrft", lambda p=prompts, g=group: time_openrft(sampler, p, g, a.new_tokens)),
        ):
            runs = [fn() for _ in range(a.repeats + 1)][1:]  # first run is a warm-up
            rates[name] = tokens / statistics.median(runs)
            print(f"{layout:28} {name:10} {rates[name]:9.1f}", flush=True)
        print(f"{layout:28} {'ratio':10} {rates['openrft'] / rates['generate']:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
