"""The lean decoder computes what the transformers forward computes, for every architecture it
accepts, and the sampler gives the same samples through it as through transformers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.rollout.decoder import LeanDecoder, lean_decoder_for
from openrft.engine.rollout.model import RolloutModel
from openrft.engine.rollout.sampler import sample_groups
from openrft.models import attach_lora


def tiny(kind: str, dtype: torch.dtype = torch.float32, **shape: int) -> torch.nn.Module:
    """A random model of each supported family (and one unsupported), built in-process."""
    import transformers as tf

    common = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    common.update(shape)
    cfg = {
        "llama": lambda: tf.LlamaConfig(**common, tie_word_embeddings=True),
        "qwen2": lambda: tf.Qwen2Config(**common, tie_word_embeddings=False),  # q/k/v biases
        "mistral": lambda: tf.MistralConfig(**common, sliding_window=None),
        "gpt2": lambda: tf.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=256),
    }[kind]()
    cls = {
        "llama": tf.LlamaForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "mistral": tf.MistralForCausalLM,
        "gpt2": tf.GPT2LMHeadModel,
    }[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(cfg)
        with torch.no_grad():  # non-trivial biases and norm weights, so both are exercised
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    model.config.pad_token_id = 0
    return model.to(dtype).eval()


def reference_and_lean(model: torch.nn.Module, n_prompt: int = 9, n_new: int = 5, **decoder: Any):  # type: ignore[no-untyped-def]
    """Logits of a full forward vs the decoder's prefill then one token at a time."""
    torch.manual_seed(1)
    rows = 3
    ids = torch.randint(3, 90, (rows, n_prompt + n_new))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as the sampler builds it
    mask[2, :1] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    dec = LeanDecoder(model, **decoder)
    dec.allocate(rows, n_prompt + n_new)
    got = [dec.forward(ids[:, :n_prompt], pos[:, :n_prompt], mask, 0)]
    for t in range(n_prompt, n_prompt + n_new):
        got.append(dec.forward(ids[:, t : t + 1], pos[:, t : t + 1], mask, t))
    want = [ref[:, t] for t in range(n_prompt - 1, n_prompt + n_new)]
    # padded positions of row 0 are not compared: transformers and the decoder both give them
    # some finite value, but nothing reads them
    return torch.stack(got, 1), torch.stack(want, 1)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_lean_decoder_equals_the_transformers_forward(kind: str) -> None:
    model = tiny(kind)
    assert LeanDecoder.unsupported(model) is None
    got, want = reference_and_lean(model)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_bf16_lean_decoder_is_at_least_as_close_to_fp32_as_transformers_bf16() -> None:
    """In bf16 the two differ by rounding; the decoder's fp32 residual stream and norms make it
    no further from the fp32 truth than transformers' own bf16 forward."""
    truth_model = tiny("llama")
    _, truth = reference_and_lean(truth_model)
    bf16 = copy.deepcopy(truth_model).to(torch.bfloat16)
    lean, hf = reference_and_lean(bf16)

    def err(x: torch.Tensor) -> float:
        p = torch.softmax(truth, -1)
        return float(((torch.log_softmax(x, -1) - torch.log_softmax(truth, -1)).abs() * p).sum(-1).mean())

    assert err(lean) <= 1.5 * err(hf) + 1e-3


# head_dim 16 with 2 query heads per KV head; head_dim 64 with 5 (the kernels' 64-wide value
# blocks, and query heads in blocks of 4 then 1); 10-21 keys (a 16-column block plus a tail)
KERNEL_SHAPES = [
    {},
    {"hidden_size": 320, "num_attention_heads": 5, "num_key_value_heads": 1, "intermediate_size": 160},
]


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=["d16", "d64"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_decode_kernels_compute_the_pytorch_step(kind: str, shape: dict[str, int]) -> None:
    """The C++ one-token step equals the PyTorch one: in fp32 to float rounding, in bf16 up to
    the rare 1-ulp difference of the norm's sum order (every other rounding is in the same place)."""
    if cpu_kernels.load() is None:
        pytest.skip(f"CPU decode kernels unavailable: {cpu_kernels.why_not()}")
    model = tiny(kind, **shape)
    fused, plain = (
        reference_and_lean(model, n_new=12, kernels=True)[0],
        reference_and_lean(model, n_new=12, kernels=False)[0],
    )
    assert torch.allclose(fused, plain, atol=1e-5), (fused - plain).abs().max()
    model = model.to(torch.bfloat16)
    fused, plain = (
        reference_and_lean(model, n_new=12, kernels=True)[0],
        reference_and_lean(model, n_new=12, kernels=False)[0],
    )
    lp_f, lp_p = torch.log_softmax(fused[[1, 2]], -1), torch.log_softmax(plain[[1, 2]], -1)
    assert (lp_f - lp_p).abs().max() < 0.05
    assert (lp_f - lp_p).abs().mean() < 2e-3


def test_fused_attention_reads_shared_prompts_from_one_row_per_group() -> None:
    """After repeat_rows the kernel reads each group's prompt columns from one row, and after
    keep_rows drops a group's first row it reads them from the next kept one: the logits equal
    the PyTorch step's, which reads every row's own copy."""
    if cpu_kernels.load() is None:
        pytest.skip(f"CPU decode kernels unavailable: {cpu_kernels.why_not()}")
    model = tiny("qwen2")
    torch.manual_seed(3)
    prompts = torch.randint(3, 90, (2, 21))
    pmask = torch.ones_like(prompts)
    pmask[1, :5] = 0  # left padding in the second prompt
    steps = torch.randint(3, 90, (6, 8))
    outs = []
    for kernels in (True, False):
        dec = LeanDecoder(model, kernels=kernels)
        dec.allocate(2, 21 + 8)
        dec.forward(prompts, (pmask.cumsum(-1) - 1).clamp(min=0), pmask, 0)
        dec.repeat_rows(3)
        mask = pmask.repeat_interleave(3, 0)
        rows = torch.arange(6)
        got = []
        for t in range(8):
            if t == 3:  # rows 0 (group 0's source) and 4 finish
                keep = torch.tensor([1, 2, 3, 5])
                dec.keep_rows(keep, mask.shape[1])
                rows, mask = rows[keep], mask[keep]
                if kernels:
                    assert dec.src is not None and dec.src.tolist() == [0, 0, 2, 2]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype)], 1)
            pos = mask.sum(-1, keepdim=True) - 1
            got.append(dec.forward(steps[rows, t : t + 1], pos, mask, 21 + t))
        outs.append(torch.cat(got))
    assert torch.allclose(outs[0], outs[1], atol=1e-5), (outs[0] - outs[1]).abs().max()


def test_decoder_without_kernels_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENRFT_CPU_KERNELS=0 (or no compiler) leaves the PyTorch step, which still decodes."""
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv("OPENRFT_CPU_KERNELS", "0")
    model = tiny("llama")
    assert LeanDecoder(model).ops is None and cpu_kernels.why_not() == "OPENRFT_CPU_KERNELS=0"
    with pytest.raises(ValueError, match="unavailable"):
        LeanDecoder(model, kernels=True)
    got, want = reference_and_lean(model)
    assert torch.allclose(got, want, atol=1e-5)


def test_unsupported_models_say_why_and_fall_back() -> None:
    gpt2 = tiny("gpt2")
    assert "gpt2" in str(LeanDecoder.unsupported(gpt2))
    assert lean_decoder_for(gpt2) is None
    with pytest.raises(ValueError, match="cannot decode"):
        LeanDecoder(gpt2)
    biased = tiny("llama")
    biased.config.attention_bias = True
    for layer in biased.model.layers:  # type: ignore[attr-defined]
        layer.self_attn.o_proj.bias = torch.nn.Parameter(torch.zeros(64))
    assert "bias" in str(LeanDecoder.unsupported(biased)) and lean_decoder_for(biased) is None
    sliding = tiny("mistral")
    sliding.config.sliding_window = 4
    assert "sliding" in str(LeanDecoder.unsupported(sliding))
    peft_model = attach_lora(tiny("llama"), r=2, alpha=4, dropout=0.0)
    assert LeanDecoder.unsupported(peft_model) is not None  # the merged copy is decoded instead
    batch = sample_groups(gpt2, [[5, 6, 7]], group_size=2, max_new_tokens=3, eos_ids=[], pad_id=0)
    assert batch.completion_ids.shape == (2, 3)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_gives_the_same_samples_through_both_paths(temperature: float) -> None:
    policy = attach_lora(tiny("qwen2"), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    lean, plain = RolloutModel(policy), RolloutModel(policy, lean=False)
    assert lean.decoder is not None and plain.decoder is None
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
    # eos 7..12 ends many rows early, so rows leave the batch at different steps
    kw = dict(group_size=4, max_new_tokens=12, eos_ids=list(range(7, 13)), pad_id=0, temperature=temperature)
    a = sample_groups(lean, prompts, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    b = sample_groups(plain, prompts, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    assert 0 < int(a.completion_mask.sum()) < a.completion_mask.numel()  # some rows did stop early
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.allclose(a.sampling_logps, b.sampling_logps, atol=1e-5)


def test_decoder_follows_the_adapter_after_sync() -> None:
    policy = attach_lora(tiny("llama"), r=4, alpha=8, dropout=0.0)
    rm = RolloutModel(policy)
    prompts = [[5, 6, 7, 8]]
    kw = dict(group_size=2, max_new_tokens=6, eos_ids=[], pad_id=0, temperature=0.0)
    before = sample_groups(rm, prompts, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    rm.sync()
    after = sample_groups(rm, prompts, **kw)  # type: ignore[arg-type]
    fresh = sample_groups(RolloutModel(policy, lean=False), prompts, **kw)  # type: ignore[arg-type]
    assert torch.equal(after.completion_ids, fresh.completion_ids)
    assert not torch.equal(before.sampling_logps, after.sampling_logps)
