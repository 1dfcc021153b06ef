"""The decode step's matmuls: OpenRFT's AVX512-BF16 kernel vs oneDNN with pre-packed weights.

    .venv/bin/python bench/decode_matmul.py [--rows 1 16 32 256]

Shapes of SmolLM2-135M (30 layers of fused q/k/v, o, fused gate/up, down, and the 49k-row head),
random bf16 weights, as many distinct weight matrices as the model has, so they stream from
memory as in a real decode step. Prints milliseconds per step for each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.kernels.allocator import keep_freed_memory
from openrft.engine.rollout.decoder import pack_bf16_weight

SHAPES = {"qkv": (960, 576, 30), "o": (576, 576, 30), "gate_up": (3072, 576, 30), "down": (576, 1536, 30)}
SHAPES["head"] = (49152, 576, 1)


def per_step(fn, repeats: int = 10) -> float:  # type: ignore[no-untyped-def]
    fn()
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32, 256])
    args = ap.parse_args()
    keep_freed_memory()
    ops = cpu_kernels.load()
    if ops is None or not hasattr(ops, "bf16_linear"):
        raise SystemExit(
            f"the bf16 kernel is not available here: {cpu_kernels.why_not() or 'no AVX512-BF16'}"
        )
    torch.manual_seed(0)
    weights = {
        k: [torch.randn(n, kk, dtype=torch.bfloat16) for _ in range(c)] for k, (n, kk, c) in SHAPES.items()
    }
    ours = {k: [pack_bf16_weight(w) for w in ws] for k, ws in weights.items()}
    print(f"{'rows':>5} {'matrix':>8} {'oneDNN ms':>10} {'OpenRFT ms':>11} {'ratio':>6}")
    for m in args.rows:
        onednn = {k: [torch.ops.mkldnn._reorder_linear_weight(w, m) for w in ws] for k, ws in weights.items()}
        tot_a = tot_b = 0.0
        for name, (n, k, _) in SHAPES.items():
            x = torch.randn(m, k, dtype=torch.bfloat16)
            f32 = name == "head"
            packed_a, packed_b = onednn[name], ours[name]

            def a_run(x: torch.Tensor = x, ws: list[torch.Tensor] = packed_a) -> None:
                for w in ws:
                    torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")

            def b_run(
                x: torch.Tensor = x, ws: list[torch.Tensor] = packed_b, n: int = n, f32: bool = f32
            ) -> None:
                for w in ws:
                    ops.bf16_linear(x, w, n, None, f32)

            a, b = per_step(a_run), per_step(b_run)
            tot_a, tot_b = tot_a + a, tot_b + b
            print(f"{m:>5} {name:>8} {a:>10.2f} {b:>11.2f} {a / b:>5.2f}x")
        print(f"{m:>5} {'step':>8} {tot_a:>10.2f} {tot_b:>11.2f} {tot_a / tot_b:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
