"""Base models: known-model provisioning, any Hugging Face id or local path, LoRA adapters.

Importing this package is cheap (no torch); the heavy imports happen inside the functions.
"""

from openrft.models.lora import attach_lora, count_trainable, save_adapter
from openrft.models.registry import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    MANIFEST_NAME,
    KnownModel,
    check_model,
    list_models,
    load_model_and_tokenizer,
    openrft_home,
    provision_model,
    resolve_dtype,
    resolve_model,
    verify_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "MANIFEST_NAME",
    "KnownModel",
    "attach_lora",
    "check_model",
    "count_trainable",
    "list_models",
    "load_model_and_tokenizer",
    "openrft_home",
    "provision_model",
    "resolve_dtype",
    "resolve_model",
    "save_adapter",
    "verify_model",
]
