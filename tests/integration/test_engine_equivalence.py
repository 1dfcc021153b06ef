"""Every speed-up of the engine is checked against the plain computation it replaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openrft.engine.logprobs import completion_logps, grouped_completion_logps
from openrft.engine.precision import train_autocast
from openrft.engine.rollout import sample_groups, sample_tokens
from openrft.engine.rollout_model import RolloutModel
from openrft.models import attach_lora, load_model_and_tokenizer


def policy(dtype: str = "float32", seed: int = 0) -> torch.nn.Module:
    model, _ = load_model_and_tokenizer("tiny-random-llama", dtype=dtype)
    model = attach_lora(model, r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter, not the zero init
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]


def rollout(model: torch.nn.Module, temperature: float = 1.0, g: int = 4, t: int = 10):  # type: ignore[no-untyped-def]
    return sample_groups(
        RolloutModel(model),
        PROMPTS,
        group_size=g,
        max_new_tokens=t,
        eos_ids=[2],
        pad_id=0,
        temperature=temperature,
        generator=torch.Generator().manual_seed(1),
    )


def lora_grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]


@pytest.fixture(scope="module")
def fp32_policy(tiny_model_dir: Path) -> torch.nn.Module:
    return policy()


def test_rollout_model_matches_peft_model(fp32_policy: torch.nn.Module) -> None:
    x = torch.randint(4, 90, (3, 17))
    with torch.no_grad():
        a = fp32_policy(input_ids=x).logits
        b = RolloutModel(fp32_policy)(input_ids=x).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_rollout_model_sync_follows_the_adapter_without_drift(fp32_policy: torch.nn.Module) -> None:
    rm = RolloutModel(fp32_policy)
    x = torch.randint(4, 90, (2, 9))
    with torch.no_grad():
        before = rm(input_ids=x).logits.clone()
        lora = [p for n, p in fp32_policy.named_parameters() if "lora_B" in n]
        for p in lora:
            p.add_(0.5)
        rm.sync()
        moved = rm(input_ids=x).logits.clone()
        assert torch.allclose(moved, fp32_policy(input_ids=x).logits, atol=1e-5)
        for p in lora:
            p.sub_(0.5)
        rm.sync()
        once = [w.clone() for w in rm.model.parameters()]
        for _ in range(5):
            rm.sync()
        # recomputed from the pristine base weights each time: repeated syncs never drift
        assert all(torch.equal(a, b) for a, b in zip(once, rm.model.parameters(), strict=True))
        assert torch.allclose(rm(input_ids=x).logits, before, atol=1e-5)


def test_sampling_logprobs_equal_a_plain_forward(fp32_policy: torch.nn.Module) -> None:
    for temperature in (1.0, 0.7):
        b = rollout(fp32_policy, temperature)
        with torch.no_grad():
            ref, _ = completion_logps(
                fp32_policy,
                b.prompt_ids,
                b.prompt_mask,
                b.completion_ids,
                b.completion_mask,
                temperature=temperature,
            )
        m = b.completion_mask.bool()
        assert torch.allclose(b.sampling_logps[m], ref[m], atol=1e-4)


def test_shared_prefix_forward_equals_plain_forward_and_gradients(fp32_policy: torch.nn.Module) -> None:
    b = rollout(fp32_policy)
    g = b.group_size
    idx = torch.tensor([0, 1, 5, 6, 7, 11])  # rows of 3 groups, partial groups as after skipping
    uniq, inv = torch.unique(idx // g, return_inverse=True)
    fp32_policy.train()
    plain, _ = completion_logps(
        fp32_policy, b.prompt_ids[idx], b.prompt_mask[idx], b.completion_ids[idx], b.completion_mask[idx]
    )
    (plain * b.completion_mask[idx]).sum().backward()
    want = lora_grads(fp32_policy)
    fp32_policy.zero_grad()
    shared, _ = grouped_completion_logps(
        fp32_policy,
        b.prompt_ids[uniq * g],
        b.prompt_mask[uniq * g],
        inv,
        b.completion_ids[idx],
        b.completion_mask[idx],
    )
    (shared * b.completion_mask[idx]).sum().backward()
    got = lora_grads(fp32_policy)
    fp32_policy.zero_grad()
    fp32_policy.eval()
    m = b.completion_mask[idx].bool()
    assert torch.allclose(plain[m], shared[m], atol=1e-5)
    assert len(got) == len(want) > 0
    for a, c in zip(want, got, strict=True):
        assert torch.allclose(a, c, atol=1e-4, rtol=1e-3)


def test_bf16_autocast_matches_peft_bf16_path(tiny_model_dir: Path) -> None:
    bf16 = policy("bfloat16")
    b = rollout(bf16)
    args = (b.prompt_ids[:4], b.prompt_mask[:4], b.completion_ids[:4], b.completion_mask[:4])
    with torch.no_grad():
        peft_path, _ = completion_logps(bf16, *args)  # peft up-casts activations to fp32 per layer
        with train_autocast(bf16):
            autocast, _ = completion_logps(bf16, *args)
    assert {p.dtype for n, p in bf16.named_parameters() if "lora_" in n} == {torch.float32}  # fp32 masters
    m = b.completion_mask[:4].bool()
    assert (peft_path[m] - autocast[m]).abs().mean() < 0.01


def test_inverse_cdf_sampler_has_the_right_distribution() -> None:
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3]]).repeat(20000, 1)
    tok = sample_tokens(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    assert freq[1] == 0  # a zero-probability token is never drawn
    assert torch.allclose(freq, probs[0], atol=0.015)
