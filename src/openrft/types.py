"""Values that cross module lines. Tensors are typed by name only so this imports without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class PromptItem:
    """One prompt ready for the model."""

    index: int  # position in the dataset
    row: dict[str, Any]  # every column; reaches the reward functions
    text: str  # the prompt as plain text (what reward functions see as `prompt`)
    ids: list[int]  # token ids after the chat template and the assistant prefix
    prefix: str = ""  # the assistant prefix rendered for this row; completions start with it


@dataclass
class RolloutBatch:
    """G completions for each of B prompts, grouped contiguously (N = B*G rows)."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T] right-padded
    completion_mask: torch.Tensor  # [N, T] 1 on real tokens (EOS included)
    sampling_logps: torch.Tensor  # [N, T] log-prob of each sampled token, temperature-scaled policy
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens without EOS
    group_size: int

    @property
    def num_sequences(self) -> int:
        return int(self.completion_ids.shape[0])
