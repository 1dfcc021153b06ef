"""The AVX512-BF16 matmul of the lean decoder (kernels/bf16_gemm.cpp) computes x W^T + b as
PyTorch's bf16 matmul does: fp32 sums of exact bf16 products, rounded once."""

from __future__ import annotations

import pytest
import torch

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.rollout.decoder import LeanDecoder, pack_bf16_weight

ops = cpu_kernels.load()
needs_kernel = pytest.mark.skipif(
    ops is None or not hasattr(ops, "bf16_linear"), reason="bf16 matmul kernel not built (no AVX512-BF16)"
)


def test_packing_puts_a_pair_of_k_for_16_columns_in_each_vector() -> None:
    w = torch.arange(20 * 6, dtype=torch.float32).view(20, 6).to(torch.bfloat16)  # N=20, K=6
    p = pack_bf16_weight(w)
    assert p.shape == (2, 3, 16, 2)
    assert p[0, 1, 5].tolist() == w[5, 2:4].tolist()  # block 0, k pair 1, column 5
    assert p[1, 2, 3].tolist() == w[19, 4:6].tolist()  # block 1 starts at column 16
    assert p[1, :, 4:].abs().sum() == 0  # columns past N are zero


# rows: 1 (a single sequence), 7 and 13 (remainders of the 8-row tile), 300 (past one 256-row
# pass); columns: 20 (a partial block), 48 * 3 + 32 (a two-block tail after full 48-col tiles)
@needs_kernel
@pytest.mark.parametrize("m", [1, 7, 13, 300])
@pytest.mark.parametrize("n", [20, 176])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_matches_a_float32_matmul_of_the_same_bf16_values(m: int, n: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(m * 1000 + n)
    k = 96
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g) if bias else None
    exact = x.double() @ w.double().t() + (b.double() if b is not None else 0)  # fp32-exact products
    y32 = ops.bf16_linear(x, pack_bf16_weight(w), n, b, True)
    assert y32.dtype == torch.float32 and y32.shape == (m, n)
    torch.testing.assert_close(y32.double(), exact, rtol=0, atol=1e-4)  # fp32 summation only
    y16 = ops.bf16_linear(x, pack_bf16_weight(w), n, b, False)
    assert y16.dtype == torch.bfloat16
    assert torch.equal(y16, y32.to(torch.bfloat16))  # one rounding, to nearest even
    ref = torch.nn.functional.linear(x, w, b.to(torch.bfloat16) if b is not None else None)
    if not bias:  # PyTorch rounds the same sums once: equal except rare last-bit ties of order
        assert (y16 != ref).float().mean() < 0.01


@needs_kernel
def test_bf16_linear_rejects_mismatched_shapes() -> None:
    x = torch.zeros(4, 10, dtype=torch.bfloat16)
    wp = pack_bf16_weight(torch.zeros(16, 12, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="columns"):
        ops.bf16_linear(x, wp, 16, None, False)
    with pytest.raises(RuntimeError, match="column blocks"):
        ops.bf16_linear(torch.zeros(4, 12, dtype=torch.bfloat16), wp, 40, None, False)


@needs_kernel
def test_bf16_decoder_uses_the_kernel_and_fp32_decoder_does_not() -> None:
    from test_lean_decoder import tiny  # pytest puts this folder on sys.path

    bf = LeanDecoder(tiny("llama", torch.bfloat16))
    assert bf.layers[0].qkv.gemm is not None and bf.lm_head.gemm is not None
    assert LeanDecoder(tiny("llama", torch.bfloat16), kernels=False).layers[0].qkv.gemm is None
    assert LeanDecoder(tiny("llama", torch.float32)).layers[0].qkv.gemm is None


@needs_kernel
def test_bf16_decoder_prefill_of_many_rows_matches_the_onednn_decoder() -> None:
    from test_lean_decoder import tiny  # pytest puts this folder on sys.path

    model = tiny("qwen2", torch.bfloat16)  # q/k/v biases
    ours, onednn = LeanDecoder(model), LeanDecoder(model, kernels=False)
    rows, t = 3, 100  # 300 rows: more than one 256-row pass of the kernel
    ids = torch.randint(3, 90, (rows, t), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(t)[None].expand(rows, -1)
    mask = torch.ones(rows, t + 1, dtype=torch.long)
    for d in (ours, onednn):
        d.allocate(rows, t + 1)
    a, b = ours.forward(ids, pos, mask, 0), onednn.forward(ids, pos, mask, 0)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
    nxt = torch.full((rows, 1), 7)  # and the next token (kernel range) on the filled caches
    a1 = ours.forward(nxt, torch.full((rows, 1), t), mask, t)
    b1 = onednn.forward(nxt, torch.full((rows, 1), t), mask, t)
    torch.testing.assert_close(a1, b1, rtol=0.02, atol=0.05)


@needs_kernel
def test_packing_in_place_equals_the_reference_packing() -> None:
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(n, 24, generator=g).to(torch.bfloat16) for n in (32, 16, 48)]
    out = torch.zeros((6, 12, 16, 2), dtype=torch.bfloat16)
    b0 = 0
    for w in ws:
        ops.pack_bf16_into(w, out, b0)
        b0 += w.shape[0] // 16
    assert torch.equal(out, pack_bf16_weight(torch.cat(ws)))
    with pytest.raises(RuntimeError, match="room"):
        ops.pack_bf16_into(ws[2], out, 4)  # 3 blocks from block 4 of 6


@needs_kernel
def test_decoder_refresh_repacks_changed_weights_only() -> None:
    from test_lean_decoder import tiny  # pytest puts this folder on sys.path

    model = tiny("qwen2", torch.bfloat16, hidden_size=64, intermediate_size=96)
    dec = LeanDecoder(model)
    att = model.model.layers[0].self_attn
    head_before = dec.lm_head.weight
    with torch.no_grad():
        att.k_proj.weight.mul_(2)  # in place, as RolloutModel.sync writes
    dec.refresh()
    want = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
    assert torch.equal(dec.layers[0].qkv.weight, pack_bf16_weight(want))
    assert dec.lm_head.weight is head_before  # unchanged source: not re-packed
