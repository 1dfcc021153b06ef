"""The gated MLP's silu(gate) * up as one autograd op in training (kernels/cpu_ops.cpp).

Why by hand: PyTorch computes silu, then the product, and backward the product's two
gradients and silu's: five passes over [tokens, 1,536] per layer at GRPO's update shape,
~0.18 s of op time in a B1 update (profiled; the wall-time gain was below this machine's noise
in an A/B); the kernel does one pass forward and one backward, rounding where
PyTorch rounds (tests/integration/test_engine_equivalence.py compares both). Applies to the
Llama-family MLPs with SiLU on CPU in fp32/bf16; other calls use the module's own forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.ops.forward_swap import swapped_forwards

MLP_TYPES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
SILU_TYPES = ("SiLU", "SiLUActivation")  # torch's and transformers' (both F.silu)


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g, u = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(g, u)
        return cpu_kernels.load().silu_mul_fwd(g, u)  # type: ignore[union-attr]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        g, u = ctx.saved_tensors
        dg, du = cpu_kernels.load().silu_mul_bwd(grad.to(g.dtype).contiguous(), g, u)  # type: ignore[union-attr]
        return dg, du


def _forward(mlp: Any, own_forward: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs:
        return own_forward(x, *args, **kwargs)
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    if (
        gate.device.type != "cpu"
        or gate.dtype not in (torch.float32, torch.bfloat16)
        or up.dtype != gate.dtype
    ):
        return mlp.down_proj(mlp.act_fn(gate) * up)
    return mlp.down_proj(_SiluMul.apply(gate, up))


@contextmanager
def fused_mlp(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the Llama-family SiLU MLPs of `model` fuse silu(gate) * up (when the
    kernels are built); yields how many were switched."""
    if cpu_kernels.load() is None:
        yield 0
        return
    with swapped_forwards(model, _is_silu_mlp, _forward) as n:
        yield n


def _is_silu_mlp(module: torch.nn.Module) -> bool:
    act = type(getattr(module, "act_fn", None)).__name__
    return type(module).__name__ in MLP_TYPES and act in SILU_TYPES
