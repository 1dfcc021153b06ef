"""Grouped-query attention for training forwards and backwards, registered with transformers.

Why by hand: transformers' eager attention copies every key and value head `rep` times
(`repeat_kv`) before two matmuls, and PyTorch's CPU flash kernel for SDPA is slow in bf16:
for a GRPO micro-batch (16 rows x 128 completion tokens over a 128-token prompt, 9 query and
3 KV heads) one layer's forward + backward takes 63 ms through SDPA and 21 ms here, where the
query heads that share a KV head are stacked as rows of one matmul instead. Semantics are
transformers' eager attention (additive mask, fp32 softmax, dropout in training), so it is
registered under its own name with eager's mask builder and used only for the model families
in `GROUPED_TYPES`, whose attention layers call it with plain (query, key, value, mask).
"""

from __future__ import annotations

from typing import Any

import torch

from openrft.engine.kernels import loader as cpu_kernels

NAME = "openrft_gqa"
GROUPED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, T, D], key/value [B, KV, S, D], mask [B, 1, T, S'] additive -> [B, T, H, D]."""
    b, h, t, d = query.shape
    kv, s = key.shape[1], key.shape[2]
    rep = h // kv
    q = query.reshape(b, kv, rep * t, d)  # head h = kv_head * rep + r, as repeat_kv pairs them
    w = torch.matmul(q, key.transpose(2, 3))  # [B, KV, rep*T, S]
    mask = attention_mask[:, :, :, :s] if attention_mask is not None else None
    ops = _softmax_kernel(w, mask, dropout if module.training else 0.0)
    if ops is not None:  # scaling, mask, softmax and cast in one C++ pass each way
        if mask is not None:
            mask = mask.expand(b, 1, t, s).contiguous()
        p = _MaskedSoftmax.apply(w, mask, scaling, t)
    else:
        w = w.view(b, kv, rep, t, s) * scaling
        if mask is not None:
            w = w + mask[:, :, None]  # [B, 1, 1, T, S]
        p = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
        p = torch.nn.functional.dropout(p, p=dropout, training=module.training)
    out = torch.matmul(p.view(b, kv, rep * t, s), value)  # [B, KV, rep*T, D]
    return out.view(b, h, t, d).transpose(1, 2).contiguous(), None


class _MaskedSoftmax(torch.autograd.Function):
    """softmax(round(w * scaling) + mask) in float32, rounded to w's dtype, as the PyTorch ops
    above compute it, with the backward autograd would take through them (cpu_ops.cpp).

    Why by hand: at GRPO's shape (16 x 9 heads x 127 x 255 scores per layer) the product, the
    sum, the softmax, the cast and their backwards are six passes over ~22 MB that took about
    half of the attention's time on this CPU; here one pass forward and one backward."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, mask: torch.Tensor | None, scaling: float, t: int) -> torch.Tensor:  # type: ignore[override]
        p32, p = cpu_kernels.load().attn_softmax_fwd(w.contiguous(), mask, scaling, t)  # type: ignore[union-attr]
        ctx.save_for_backward(p32)
        ctx.scaling = scaling
        return p

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (p32,) = ctx.saved_tensors
        dw = cpu_kernels.load().attn_softmax_bwd(grad.contiguous(), p32, ctx.scaling)  # type: ignore[union-attr]
        return dw, None, None, None


def _softmax_kernel(w: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> Any | None:
    """The C++ masked softmax when it applies: CPU, fp32/bf16, no dropout, a [B, 1, T, S] mask
    in the scores' dtype (or none)."""
    if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16) or dropout > 0:
        return None
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.dtype != w.dtype):
        return None
    return cpu_kernels.load()


def register() -> None:
    """Make `attn_implementation=NAME` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, eager_mask)


def use_grouped_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model of a supported family to `grouped_attention`; True if done."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in GROUPED_TYPES or not hasattr(model, "set_attn_implementation"):
        return False
    register()
    model.set_attn_implementation(NAME)
    return True
