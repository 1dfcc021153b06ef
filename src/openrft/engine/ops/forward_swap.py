"""Swap the forward of chosen submodules for the duration of a block (the fused training ops
of ops/lora.py, ops/norm.py and ops/mlp.py use it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def swapped_forwards(
    model: torch.nn.Module,
    applies: Callable[[torch.nn.Module], bool],
    forward: Callable[..., torch.Tensor],
) -> Iterator[int]:
    """Within the block, every submodule of `model` for which `applies` holds (and whose forward
    is not already swapped) calls `forward(module, own_forward, x, *args, **kwargs)` instead of
    its own forward; yields how many were swapped. The modules' own forwards come back on exit,
    also on an exception."""
    swapped = []
    for module in model.modules():
        if "forward" not in module.__dict__ and applies(module):
            own_forward = module.forward

            def fwd(
                x: torch.Tensor, *a: Any, _m: Any = module, _f: Any = own_forward, **k: Any
            ) -> torch.Tensor:
                return forward(_m, _f, x, *a, **k)

            module.forward = fwd
            swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward
