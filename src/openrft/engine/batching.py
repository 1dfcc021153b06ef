"""Batches of prompt + target sequences, shared by SFT and DPO: one example type, padded
collation (prompt left-padded, target right-padded, as GRPO's rollout lays them out) and packed
collation (several sequences per row, position ids restarting per sequence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from openrft.data.targets import pack, strip_prefix
from openrft.engine.rollout import left_pad


@dataclass
class SFTExample:
    """One training sequence: the rendered prompt and the target completion (ending with EOS)."""

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class PaddedBatch:
    prompt_ids: torch.Tensor  # [n, P] left-padded
    prompt_mask: torch.Tensor  # [n, P]
    completion_ids: torch.Tensor  # [n, T] right-padded
    completion_mask: torch.Tensor  # [n, T] 1 on target tokens

    @property
    def forwarded(self) -> int:
        """Token positions the forward pass computes (padding included)."""
        return self.prompt_ids.numel() + self.completion_ids.numel()


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [r, L] several sequences per row, padding at the end
    position_ids: torch.Tensor  # [r, L] restart at 0 for each sequence (and for the padding)
    target_mask: torch.Tensor  # [r, L] 1 where the token is a completion token (a target)

    @property
    def forwarded(self) -> int:
        return self.input_ids.numel()


def tokenize_completion(tok: Any, text: str, prefix: str, eos: int) -> list[int]:
    """Token ids the model must write after the prompt: the target without the prompt's
    assistant prefix, then EOS."""
    return [*tok(strip_prefix(text, prefix), add_special_tokens=False)["input_ids"], eos]


def collate_padded(examples: list[SFTExample], pad: int) -> PaddedBatch:
    p_ids, p_mask = left_pad([e.prompt_ids for e in examples], pad)
    width = max(len(e.completion_ids) for e in examples)
    c_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    c_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        c_ids[i, : len(e.completion_ids)] = torch.tensor(e.completion_ids)
        c_mask[i, : len(e.completion_ids)] = 1
    return PaddedBatch(p_ids, p_mask, c_ids, c_mask)


def collate_packed(rows: list[list[SFTExample]], pad: int) -> PackedBatch:
    """Each inner list becomes one row: its sequences back to back, then padding."""
    width = max(sum(e.length for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n_p, n = len(e.prompt_ids), e.length
            ids[r, at : at + n] = torch.tensor(e.prompt_ids + e.completion_ids)
            pos[r, at : at + n] = torch.arange(n)
            target[r, at + n_p : at + n] = 1
            at += n
        pos[r, at:] = torch.arange(width - at)  # the padding is one more (ignored) sequence
    return PackedBatch(ids, pos, target)


def micro_batches(
    examples: list[SFTExample], *, packing: bool, capacity: int, per_micro: int, pad: int
) -> list[PaddedBatch | PackedBatch]:
    """Split a step's examples into micro-batches of at most `per_micro` sequences (padded) or
    `per_micro` packed rows of `capacity` tokens."""
    if not packing:
        return [collate_padded(examples[i : i + per_micro], pad) for i in range(0, len(examples), per_micro)]
    bins = [[examples[i] for i in b] for b in pack([e.length for e in examples], capacity)]
    return [collate_packed(bins[i : i + per_micro], pad) for i in range(0, len(bins), per_micro)]
