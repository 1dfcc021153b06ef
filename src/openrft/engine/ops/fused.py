"""The training forward's fused layers, switched on together for an update: each peft LoRA
linear as one op (`ops/lora.py`), each Llama-family RMSNorm as one op (`ops/norm.py`) and the
gated MLP's silu(gate) * up as one op (`ops/mlp.py`). Each computes the same function as the
module it stands in for and falls back to that module's own forward for anything it does not
cover, so every recipe (GRPO, SFT, DPO) runs its updates inside `fused_layers`."""

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
