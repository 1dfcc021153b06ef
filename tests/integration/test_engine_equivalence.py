"""Every speed-up of the engine is checked against the plain computation it replaces."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from openrft.engine import logprobs
from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.logprobs import (
    causal_lm,
    chunked_linear_logps,
    completion_logps,
    fused_head,
    grouped_completion_logps,
    logps_from_logits,
)
from openrft.engine.ops.precision import train_autocast
from openrft.engine.rollout.model import RolloutModel
from openrft.engine.rollout.sampler import positions, sample_groups, sample_tokens
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


# rows of 3 groups, partial groups as after skipping (a gather of prompt rows), and all rows
# (whole groups in order: the prompt rows are broadcast)
@pytest.mark.parametrize("rows", [[0, 1, 5, 6, 7, 11], list(range(12))], ids=["partial", "whole"])
def test_shared_prefix_forward_equals_plain_forward_and_gradients(
    fp32_policy: torch.nn.Module, rows: list[int]
) -> None:
    b = rollout(fp32_policy)
    g = b.group_size
    idx = torch.tensor(rows)
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


@pytest.mark.parametrize("kernel", [True, False], ids=["cpu-kernel", "pytorch"])
def test_chunked_head_logps_entropy_and_gradients_equal_full_logits(
    kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of taking each chunk's softmax statistics: the C++ pass and the PyTorch ops."""
    if kernel and cpu_kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    if not kernel:
        monkeypatch.setattr(logprobs, "_head_kernel", lambda hidden: None)
    torch.manual_seed(0)
    for temperature in (1.0, 0.7):
        h = torch.randn(3, 7, 16, requires_grad=True)
        w = torch.randn(50, 16, requires_grad=True)
        ids = torch.randint(0, 50, (3, 7))
        up = torch.randn(3, 7)  # an arbitrary upstream gradient
        ref, ref_ent = logps_from_logits(h @ w.t(), ids, temperature, with_entropy=True)
        (ref * up).sum().backward()
        want = (h.grad.clone(), w.grad.clone())  # type: ignore[union-attr]
        h.grad = w.grad = None
        got, ent = chunked_linear_logps(
            h, w, ids, temperature, with_entropy=True, chunk=4
        )  # 21 rows: 6 chunks
        (got * up).sum().backward()
        assert ent is not None and ref_ent is not None
        assert torch.allclose(got, ref, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
        assert torch.allclose(h.grad, want[0], atol=1e-5)  # type: ignore[arg-type]
        assert torch.allclose(w.grad, want[1], atol=1e-5)  # type: ignore[arg-type]


def test_bf16_head_kernel_equals_the_pytorch_chunk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """In bf16 the C++ statistics round where the PyTorch ops do: the log-probs agree to float
    rounding and the hidden-state gradient to bf16 rounding."""
    if cpu_kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    torch.manual_seed(0)
    h = torch.randn(2, 40, 32, dtype=torch.bfloat16)
    w = torch.randn(3000, 32, dtype=torch.bfloat16) * 0.3
    ids = torch.randint(0, 3000, (2, 40))
    results = []
    for use in (True, False):
        if not use:
            monkeypatch.setattr(logprobs, "_head_kernel", lambda hidden: None)
        x = h.clone().requires_grad_(True)
        got, ent = chunked_linear_logps(x, w, ids, 0.7, with_entropy=True, chunk=32)
        got.sum().backward()
        results.append((got, ent, x.grad))
    (a, ea, ga), (b, eb, gb) = results
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ea, eb, atol=1e-4)  # type: ignore[arg-type]
    assert torch.allclose(ga.float(), gb.float(), atol=0.02, rtol=0.02)  # type: ignore[union-attr]


def test_policy_logps_equal_the_models_own_logits(fp32_policy: torch.nn.Module) -> None:
    """completion_logps goes through the decoder stack and the chunked head; the reference is
    the *ForCausalLM's own logits."""
    b = rollout(fp32_policy, 0.7)
    assert fused_head(causal_lm(fp32_policy)) is not None
    with torch.no_grad():
        got, ent = completion_logps(
            fp32_policy,
            b.prompt_ids,
            b.prompt_mask,
            b.completion_ids,
            b.completion_mask,
            temperature=0.7,
            with_entropy=True,
        )
        ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
        mask = torch.cat([b.prompt_mask, b.completion_mask], 1)
        logits = fp32_policy(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        t = b.completion_ids.shape[1]
        ref, ref_ent = logps_from_logits(logits[:, -t - 1 : -1], b.completion_ids, 0.7, with_entropy=True)
    m = b.completion_mask.bool()
    assert ent is not None and ref_ent is not None
    assert torch.allclose(got[m], ref[m], atol=1e-5) and torch.allclose(ent[m], ref_ent[m], atol=1e-4)


@pytest.mark.parametrize("kernel", [True, False], ids=["cpu-kernel", "pytorch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_attention_equals_eager_attention_with_gradients(
    dtype: torch.dtype, kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registered grouped attention gives transformers' eager results: outputs and LoRA
    gradients, with left padding, in fp32 and bf16, with the C++ masked softmax or without."""
    from openrft.engine.ops import attention
    from openrft.engine.ops.attention import NAME, use_grouped_attention

    if kernel and cpu_kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    if not kernel:
        monkeypatch.setattr(attention, "_softmax_kernel", lambda *a: None)

    model = policy("bfloat16" if dtype == torch.bfloat16 else "float32")
    lm = causal_lm(model)
    assert lm.config._attn_implementation == NAME  # the CPU default for Llama-family models
    x = torch.randint(4, 90, (3, 12))
    mask = torch.ones_like(x)
    mask[0, :5] = 0
    results = []
    for impl in ("eager", NAME):
        lm.set_attn_implementation(impl)
        out = model(input_ids=x, attention_mask=mask, position_ids=positions(mask)).logits.float()
        (out[mask.bool()] ** 2).mean().backward()
        results.append((out[mask.bool()].detach(), lora_grads(model)))
        model.zero_grad()
    (a, ga), (b, gb) = results
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(a, b, atol=tol, rtol=tol)
    for p, q in zip(ga, gb, strict=True):
        assert torch.allclose(p, q, atol=tol, rtol=10 * tol)
    assert use_grouped_attention(model.get_base_model())


def test_masked_softmax_kernel_rounds_where_the_pytorch_ops_do() -> None:
    """bf16: the C++ forward equals scaling, mask, float32 softmax and cast, and its backward
    equals autograd through them, to the last bit but for the odd 1-ulp exp difference."""
    from openrft.engine.ops.attention import _MaskedSoftmax

    if cpu_kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    torch.manual_seed(0)
    b, kv, rep, t, s = 2, 3, 2, 5, 37  # 37 keys: two 16-lane blocks and a tail
    w = (torch.randn(b, kv, rep * t, s) * 4).to(torch.bfloat16)
    mask = torch.zeros(b, 1, t, s, dtype=torch.bfloat16)
    mask[0, :, :, :6] = torch.finfo(torch.bfloat16).min  # transformers' masked value
    up = torch.randn(b, kv, rep * t, s).to(torch.bfloat16)
    x = w.clone().requires_grad_(True)
    ref = torch.softmax(x.view(b, kv, rep, t, s) * 0.125 + mask[:, :, None], -1, dtype=torch.float32)
    ref = ref.to(torch.bfloat16).view_as(w)
    (ref.float() * up.float()).sum().backward()
    y = w.clone().requires_grad_(True)
    got = _MaskedSoftmax.apply(y, mask, 0.125, t)
    (got.float() * up.float()).sum().backward()
    assert (got.float() - ref.float()).abs().max() <= 2**-8  # at most one bf16 ulp below 1
    assert (got != ref).float().mean() < 0.01
    assert torch.allclose(y.grad.float(), x.grad.float(), atol=2e-3, rtol=1e-2)  # type: ignore[union-attr]


def test_two_level_sampler_has_the_right_distribution() -> None:
    """Vocabularies that split into blocks take the two-level path; zero-probability tokens,
    including those at block edges, are never drawn."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2048, generator=g) ** 4
    probs[torch.randperm(2048, generator=g)[:1500]] = 0.0
    probs[255] = probs[256] = probs[2047] = probs[0] = 0.0  # block edges
    probs[300:512] = 0.0  # a whole empty block
    probs /= probs.sum()
    tok = sample_tokens(probs.repeat(40000, 1), torch.Generator().manual_seed(1))
    freq = torch.bincount(tok, minlength=2048).float() / len(tok)
    assert freq[probs == 0].sum() == 0
    assert (freq - probs).abs().max() < 0.004
    assert torch.allclose(freq.view(8, 256).sum(-1), probs.view(8, 256).sum(-1), atol=0.006)


def _grouped_logps_and_grads(
    model: torch.nn.Module, b: Any, idx: torch.Tensor, fused: bool
) -> tuple[Any, Any]:
    from openrft.engine.ops.lora import fused_lora

    uniq, inv = torch.unique(idx // b.group_size, return_inverse=True)
    args = (b.prompt_ids[uniq * b.group_size], b.prompt_mask[uniq * b.group_size], inv)
    args += (b.completion_ids[idx], b.completion_mask[idx])
    model.train()
    with train_autocast(model), fused_lora(model) if fused else contextlib.nullcontext(14) as n:
        assert n == 7 * 2  # every adapted linear of the two layers
        logp, _ = grouped_completion_logps(model, *args)
    (logp * b.completion_mask[idx]).sum().backward()
    grads = lora_grads(model)
    model.zero_grad()
    return logp.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def test_fused_lora_layers_give_peft_log_probs_and_gradients(tiny_model_dir: Path) -> None:
    model = policy()
    b = rollout(model)
    idx = torch.tensor([0, 1, 5, 6, 7, 11])
    peft_logp, peft_grads = _grouped_logps_and_grads(model, b, idx, fused=False)
    ours_logp, ours_grads = _grouped_logps_and_grads(model, b, idx, fused=True)
    assert all("forward" not in m.__dict__ for m in model.modules())  # peft's forward restored
    m = b.completion_mask[idx].bool()
    assert (peft_logp[m] - ours_logp[m]).abs().max() < 1e-5
    assert len(ours_grads) == len(peft_grads) == 2 * 7 * 2  # A and B of 7 layers x 2 blocks
    assert max(_rel(c, a) for a, c in zip(peft_grads, ours_grads, strict=True)) < 1e-4


def test_fused_lora_in_bf16_is_as_close_to_fp32_as_peft_in_bf16(tiny_model_dir: Path) -> None:
    """bf16 rounds differently in each path (a few % apart on single gradients of this tiny
    model, either way), so both are measured against the same weights in fp32: on average the
    fused op must be as close as peft's (it rounds each sum once, peft twice)."""
    torch.manual_seed(0)  # the LoRA A init
    model = policy("bfloat16")
    exact = copy.deepcopy(model).float()
    b = rollout(model)
    idx = torch.tensor([0, 1, 5, 6, 7, 11])
    ref_logp, ref_grads = _grouped_logps_and_grads(exact, b, idx, fused=False)
    peft_logp, peft_grads = _grouped_logps_and_grads(model, b, idx, fused=False)
    ours_logp, ours_grads = _grouped_logps_and_grads(model, b, idx, fused=True)
    m = b.completion_mask[idx].bool()
    peft_err, ours_err = _rel(peft_logp[m], ref_logp[m]), _rel(ours_logp[m], ref_logp[m])
    assert ours_err < 1.5 * peft_err + 1e-4, (ours_err, peft_err)
    peft_err = sum(_rel(p, r) for p, r in zip(peft_grads, ref_grads, strict=True)) / len(ref_grads)
    ours_err = sum(_rel(o, r) for o, r in zip(ours_grads, ref_grads, strict=True)) / len(ref_grads)
    assert 0 < ours_err < 1.25 * peft_err, (ours_err, peft_err)


def _own_and_fused(holder: torch.nn.Module, fuse: Any, x: torch.Tensor, up: torch.Tensor) -> list[Any]:
    """(output, input gradient) of `holder`'s one module through its own forward, then through
    the fused op `fuse` switches in (which must switch exactly it, and give it back after)."""
    out = []
    for fused in (False, True):
        xg = x.clone().requires_grad_(True)
        with fuse(holder) if fused else contextlib.nullcontext(1) as n:
            assert n == 1
            y = holder(xg)
        y.backward(up)
        out.append((y.detach(), xg.grad))
    assert "forward" not in holder[0].__dict__
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_equals_transformers_rms_norm_with_gradients(dtype: torch.dtype) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from openrft.engine.ops.norm import fused_rms_norm

    if cpu_kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    g = torch.Generator().manual_seed(0)
    holder = torch.nn.Sequential(LlamaRMSNorm(96, eps=1e-5)).to(dtype)
    norm = holder[0]
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=g) * 0.3 + 1)
    norm.weight.requires_grad_(False)  # frozen, as under LoRA
    x = (torch.randn(3, 40, 96, generator=g) * 2).to(dtype)
    up = torch.randn(3, 40, 96, generator=g).to(dtype)
    (y_ref, dx_ref), (y, dx) = _own_and_fused(holder, fused_rms_norm, x, up)
    if dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)
    else:  # rounded where PyTorch rounds: equal but for a rare last bit from the sum's order
        assert (y != y_ref).float().mean() < 1e-3
        assert float((y.float() - y_ref.float()).abs().max()) <= 2**-5 * float(y_ref.float().abs().max())
        assert _rel(dx, dx_ref) < 1e-3


def test_fused_sampler_has_the_right_distribution_and_log_probs() -> None:
    """The C++ sampler (rollout's temperature path): the distribution of softmax(z / T), zero-
    probability tokens never drawn (block edges, a whole empty block, a partial last block), and
    each token's log-prob as log_softmax gives it."""
    ops = cpu_kernels.load()
    if ops is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    g = torch.Generator().manual_seed(0)
    v = 2000  # 7 full blocks of 256 and a partial one
    z = torch.randn(v, generator=g) * 3
    z[torch.randperm(v, generator=g)[:1400]] = float("-inf")
    z[[0, 255, 256, 1999]] = float("-inf")
    z[300:512] = float("-inf")
    temp = 0.7
    probs = torch.softmax(z / temp, dim=-1)
    rows = 40000
    u = torch.rand(rows, generator=torch.Generator().manual_seed(1))
    tok, lp = ops.sample_logits(z.repeat(rows, 1).contiguous(), 1 / temp, u)
    freq = torch.bincount(tok, minlength=v).float() / rows
    assert freq[probs == 0].sum() == 0
    assert (freq - probs).abs().max() < 0.006
    torch.testing.assert_close(lp, torch.log_softmax(z / temp, dim=-1)[tok], rtol=1e-5, atol=1e-5)
    # u is consumed in order: the first row's token is the inverse CDF of u[0]
    cdf = probs.double().cumsum(0)
    assert int(tok[0]) == int(torch.searchsorted(cdf, u[0].double() * cdf[-1], right=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_mul_equals_the_mlps_own_forward_with_gradients(dtype: torch.dtype) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from openrft.engine.ops.mlp import fused_mlp

    if cpu_kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {cpu_kernels.why_not()}")
    torch.manual_seed(0)
    holder = torch.nn.Sequential(
        LlamaMLP(LlamaConfig(hidden_size=48, intermediate_size=200, num_attention_heads=4))
    ).to(dtype)
    for p in holder.parameters():
        p.requires_grad_(False)  # frozen base; gradients flow to the input (and LoRA in real runs)
    x = (torch.randn(3, 50, 48) * 2).to(dtype)
    up = torch.randn(3, 50, 48).to(dtype)
    (y_ref, dx_ref), (y, dx) = _own_and_fused(holder, fused_mlp, x, up)
    if dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
    else:  # rounded where PyTorch rounds; the exp differs from SLEEF's by an ulp at most
        assert _rel(y, y_ref) < 2e-3
        assert _rel(dx, dx_ref) < 5e-3
