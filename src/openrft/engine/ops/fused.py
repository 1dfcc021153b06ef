"""The training forward's fused layers, switched on together for an update: each peft LoRA
linear as one op (lora_fused.py), each Llama-family RMSNorm as one op (norm_fused.py) and the
gated MLP's silu(gate) * up as one op (mlp_fused.py).
Both compute the same function as the modules they stand in for and fall back to them for
anything they do not cover, so every trainer (GRPO, SFT, DPO) runs its updates inside."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from openrft.engine.ops.lora import fused_lora
from openrft.engine.ops.mlp import fused_mlp
from openrft.engine.ops.norm import fused_rms_norm


@contextmanager
def fused_layers(model: torch.nn.Module) -> Iterator[None]:
    with fused_lora(model), fused_rms_norm(model), fused_mlp(model):
        yield
