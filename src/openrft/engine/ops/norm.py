"""RMSNorm of Llama-family models as one autograd op in training (kernels/cpu_ops.cpp).

Why by hand: transformers' RMSNorm is eight element-wise operations forward (a float32 copy,
the square, the mean, the epsilon, rsqrt, the product, the cast back, the weight) and about as
many backward, each a pass over the [tokens, hidden] activations: ~61 norms per GRPO update,
~0.3 s of op time in a B1 update (profiled), ~0.15 s of wall time saved (A/B in one process).
The kernel does one pass forward and one backward, rounding where the PyTorch ops round
(tests/integration/test_engine_equivalence.py compares both).
Applies on CPU, fp32 or bf16, with the norm weight frozen (as under LoRA); every other call
goes to the module's own forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.ops.forward_swap import swapped_forwards

# the modules whose forward is exactly round(w * round(x * rsqrt(mean(x^2) + eps)))
NORM_TYPES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y, rstd = cpu_kernels.load().rms_norm_fwd(x2, weight, eps)  # type: ignore[union-attr]
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x2, weight, rstd = ctx.saved_tensors
        g = grad.reshape(x2.shape).to(x2.dtype).contiguous()
        dx = cpu_kernels.load().rms_norm_bwd(g, x2, weight, rstd)  # type: ignore[union-attr]
        return dx.view(grad.shape), None, None


def _forward(norm: Any, own_forward: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    w = norm.weight
    if (
        args
        or kwargs
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.bfloat16)
        or w.dtype != x.dtype
        or w.requires_grad
    ):
        return own_forward(x, *args, **kwargs)
    return _RMSNorm.apply(x, w, float(norm.variance_epsilon))


@contextmanager
def fused_rms_norm(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the Llama-family RMSNorm modules of `model` run as one op each (when
    the kernels are built); yields how many were switched."""
    if cpu_kernels.load() is None:
        yield 0
        return
    with swapped_forwards(model, lambda m: type(m).__name__ in NORM_TYPES, _forward) as n:
        yield n
