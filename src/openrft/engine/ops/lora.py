"""LoRA linear layers as one autograd op in training: y = x W^T + b + (x A^T)(s B)^T.

Why by hand: peft's forward computes base(x) + lora_B(lora_A(dropout(x))) * scaling, which
besides the matmuls costs a product and a sum over the full [tokens, out] output, and in the
backward the product's gradient and the sum of the two input gradients over [tokens, in]:
four passes of up to 6 MB each per adapted layer, ~210 layers per GRPO update: ~0.5 s of op
time in a 5.5 s B1 update (profiled), ~0.15 s of wall time saved (A/B in one process; the
machine's noise is of the same size). Folding the scaling into B (r x out, tiny) and accumulating
the low-rank products into the base results in place (`addmm_`, beta = 1) leaves only the
matmuls, forward and backward. Same function: with a power-of-two scaling (alpha / r = 2 by
default) the bf16 roundings are peft's except that each sum is rounded once instead of twice;
tests/integration/test_engine_equivalence.py compares log-probs and gradients with peft's.
Applies to plain LoRA (no dropout, DoRA or other variants, no mixed-adapter batches, frozen
base layer); every other call goes to peft's own forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from openrft.engine.ops.forward_swap import swapped_forwards


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        # x [..., in] in the compute dtype; weight [out, in] and bias frozen; a [r, in] and
        # b [out, r] the trainable (often fp32) adapter matrices
        dt = x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        w = weight.to(dt)
        a_c = a.to(dt)
        bs = (b * scaling).to(dt)
        with torch.autocast(x.device.type, enabled=False):
            h = x2 @ a_c.t()  # [n, r]
            y = F.linear(x2, w, bias.to(dt) if bias is not None else None)
            y.addmm_(h, bs.t())
        ctx.save_for_backward(x2, w, a_c, bs, h)
        ctx.scaling = scaling
        ctx.dtypes = (a.dtype, b.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x2, w, a_c, bs, h = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
        with torch.autocast(g.device.type, enabled=False):
            gh = g @ bs  # [n, r]
            dx = None
            if ctx.needs_input_grad[0]:
                dx = g @ w
                dx.addmm_(gh, a_c)
                dx = dx.view(*grad.shape[:-1], dx.shape[-1])
            da = (gh.t() @ x2).to(ctx.dtypes[0]) if ctx.needs_input_grad[3] else None
            db = ((g.t() @ h).float() * ctx.scaling).to(ctx.dtypes[1]) if ctx.needs_input_grad[4] else None
        return dx, None, None, da, db, None


def _plain_adapter(layer: Any) -> str | None:
    """The one active adapter of a peft lora.Linear when this op computes its forward, else None."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [n for n in layer.active_adapters if n in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    drop = layer.lora_dropout[name]
    if not isinstance(drop, torch.nn.Identity) and (drop.training and getattr(drop, "p", 1.0) > 0):
        return None
    base = layer.base_layer
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    if layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
        return None
    return name


def _forward(layer: Any, peft_forward: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _plain_adapter(layer) if not args and not kwargs else None
    if name is None:
        return peft_forward(x, *args, **kwargs)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    base = layer.base_layer
    return _LoraLinear.apply(
        x,
        base.weight,
        base.bias,
        layer.lora_A[name].weight,
        layer.lora_B[name].weight,
        float(layer.scaling[name]),
    )


@contextmanager
def fused_lora(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, peft LoRA linear layers of `model` run as one op each (when plain, see
    the module docstring); yields how many layers were switched."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        yield 0
        return
    with swapped_forwards(model, lambda m: type(m) is LoraLinear, _forward) as n:
        yield n
