"""OpenRFT: reinforcement fine-tuning of LoRA adapters from a handful of prompts."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    """`openrft.Client` is imported on first use (keeps `import openrft` light)."""
    if name == "Client":
        from openrft.client import Client

        return Client
    raise AttributeError(f"module 'openrft' has no attribute {name!r}")
