"""Mixed precision for training: bf16 base weights, fp32 LoRA weights, bf16 compute.

peft keeps adapter weights in fp32 on a bf16 base and, in every LoRA layer, casts the
activations up to fp32 and the result back down: two copies of every activation in ~200
layers per forward and backward. Under autocast with peft's input casting switched off, the
activations stay bf16 and only the small adapter matrices are cast, while the optimizer
still updates fp32 master weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen base weights (the largest tensors)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return frozen[0].dtype if frozen else next(model.parameters()).dtype


@contextmanager
def train_autocast(model: torch.nn.Module) -> Iterator[None]:
    """bf16/fp16 autocast (and no peft input up-casting) when the base is half precision."""
    dtype = compute_dtype(model)
    if dtype not in (torch.bfloat16, torch.float16):
        yield
        return
    device = next(model.parameters()).device.type
    with ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type=device, dtype=dtype))
        try:
            from peft.helpers import disable_input_dtype_casting

            stack.enter_context(disable_input_dtype_casting(model))
        except ImportError:  # older peft: casting stays on, still correct
            pass
        yield
