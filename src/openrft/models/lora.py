"""LoRA adapters on a base model (PEFT): attach, save atomically, count parameters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from openrft.errors import ConfigError
from openrft.fsutil import replace_dir

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedModel

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def attach_lora(
    model: PreTrainedModel,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | str = "all-linear",
    init_adapter: str | Path | None = None,
) -> PeftModel:
    """Wrap `model` with a trainable LoRA adapter (PEFT); the base weights are frozen.

    With `init_adapter` (a directory written by `save_adapter`), that adapter is loaded as
    trainable instead and its own r/alpha/targets apply (the arguments here are then unused).
    The model is modified in place by PEFT.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:
        adapter_dir = Path(init_adapter).expanduser()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ConfigError(
                f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json); "
                "give a directory written by save_adapter, or leave init_adapter empty"
            )
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    if r <= 0:
        raise ConfigError(f"LoRA rank r={r} must be a positive integer (8 to 64 is typical)")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module name the model does not have
        message = " ".join(str(err).split())[:200]
        raise ConfigError(f"LoRA target_modules={target_modules!r} do not fit this model: {message}") from err


def save_adapter(model: PeftModel, path: str | Path) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (only) into `path`, atomically.

    The adapter is built in a temp folder next to `path`, fsync'ed and renamed into place
    (`fsutil.replace_dir`); an existing `path` is moved aside first and removed only after the
    rename.
    """

    def build(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template
        missing = [name for name in ADAPTER_FILES if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"PEFT did not write {missing} into {tmp}")

    return replace_dir(Path(path).expanduser(), build, durable=True)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) of `model`."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
