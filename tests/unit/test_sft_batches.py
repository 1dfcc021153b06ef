"""SFT batches and loss (torch, no model): padding, packing layout, token-mean NLL."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.engine.batching import (
    PackedBatch,
    PaddedBatch,
    SFTExample,
    collate_packed,
    collate_padded,
    micro_batches,
)
from openrft.engine.losses import sft_loss

A = SFTExample(0, [5, 6, 7], [8, 9])  # 3 prompt + 2 target tokens
B = SFTExample(1, [5], [10, 11, 12])  # 1 prompt + 3 target tokens


def test_collate_padded_left_pads_prompts_and_right_pads_completions() -> None:
    b = collate_padded([A, B], pad=0)
    assert b.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 5]]
    assert b.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.completion_ids.tolist() == [[8, 9, 0], [10, 11, 12]]
    assert b.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_collate_packed_restarts_positions_and_marks_targets() -> None:
    b = collate_packed([[A, B], [B]], pad=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 5, 10, 11, 12], [5, 10, 11, 12, 0, 0, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 3, 4]]
    assert b.target_mask.tolist() == [[0, 0, 0, 1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0, 0, 0]]


def test_micro_batches_split_by_sequences_or_packed_rows() -> None:
    exs = [A, B, A, B, A]
    padded = micro_batches(exs, packing=False, capacity=64, per_micro=2, pad=0)
    assert [type(b) for b in padded] == [PaddedBatch] * 3
    assert [b.prompt_ids.shape[0] for b in padded] == [2, 2, 1]
    packed = micro_batches(exs, packing=True, capacity=10, per_micro=2, pad=0)
    assert all(isinstance(b, PackedBatch) for b in packed)
    rows = sum(b.input_ids.shape[0] for b in packed)
    assert rows == 3  # lengths 5,4,5,4,5 = 23 tokens: 3 rows of <= 10
    targets = sum(int(b.target_mask.sum()) for b in packed)
    assert targets == 3 * 2 + 2 * 3  # every target token is in exactly one row


def test_sft_loss_is_the_token_mean_over_the_whole_step() -> None:
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # -(ln .5 + ln .25 + ln .1) / 3 tokens
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert float(sft_loss(logps, mask, 3.0)) == pytest.approx(expected)
    # split in two micro-batches with the step's token count: the parts add up to the whole
    parts = sft_loss(logps[:1], mask[:1], 3.0) + sft_loss(logps[1:], mask[1:], 3.0)
    assert float(parts) == pytest.approx(expected)
