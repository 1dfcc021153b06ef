"""Loading the tiny model, attaching LoRA and round-tripping adapters through PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from openrft.engine.ops.attention import use_grouped_attention
from openrft.errors import ConfigError
from openrft.models import attach_lora, count_trainable, load_model_and_tokenizer, save_adapter
from openrft.models.registry import resolve_dtype

TINY = "tiny-random-llama"


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _randomize_lora(model: PeftModel, seed: int) -> None:
    """Give lora_B non-zero values (fresh LoRA is a no-op: B starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


@pytest.fixture
def ids(tiny_model_dir: Path) -> torch.Tensor:
    _, tok = load_model_and_tokenizer(TINY, dtype="float32")
    return tok("Hello, LoRA!\nCount: 1 2 3", return_tensors="pt").input_ids


def test_load_tiny_model_and_tokenizer(tiny_model_dir: Path) -> None:
    model, tok = load_model_and_tokenizer(TINY)
    assert not model.training
    assert model.dtype == resolve_dtype("auto", "cpu")
    assert model.config._attn_implementation == "openrft_gqa"  # the CPU default for Llama-family models
    assert tok.padding_side == "left"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    text = "Hi there!\n{a: [1, 2]} ~`"
    assert tok.decode(tok(text).input_ids) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "2+3?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    batch = tok(["a", "abc"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, :2].tolist() == [tok.pad_token_id] * 2  # left padding
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 6)


def test_pad_token_defaults_to_eos(tmp_path: Path, tiny_model_dir: Path) -> None:
    _, tok = load_model_and_tokenizer(str(tiny_model_dir), dtype="float32")
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), dtype="float32")
    model.save_pretrained(tmp_path)
    _, reloaded = load_model_and_tokenizer(str(tmp_path), dtype="float32")
    assert reloaded.pad_token == "<|im_end|>"


def test_bad_device_is_a_config_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        load_model_and_tokenizer(TINY, device="gpu0")


def test_attach_lora_counts_and_freezes_base(tiny_model_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(TINY, dtype="float32")
    base_total = sum(p.numel() for p in model.parameters())
    peft_model = attach_lora(model, r=4, alpha=8, dropout=0.0)
    trainable, total = count_trainable(peft_model)
    # per layer r*(in+out): q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64
    assert trainable == 2 * 4 * (128 + 96 + 96 + 128 + 192 + 192 + 192) == 8192
    assert total == base_total + trainable
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)


def test_adapter_round_trip_gives_identical_logits(
    tmp_path: Path, tiny_model_dir: Path, ids: torch.Tensor
) -> None:
    model, _ = load_model_and_tokenizer(TINY, dtype="float32")
    base_logits = _logits(model, ids)
    peft_model = attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    _randomize_lora(peft_model, seed=0)
    tuned_logits = _logits(peft_model, ids)
    assert not torch.allclose(base_logits, tuned_logits)
    out = save_adapter(peft_model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    use_grouped_attention(fresh)  # the attention load_model_and_tokenizer picks on CPU
    reloaded = PeftModel.from_pretrained(fresh, str(out))
    assert torch.equal(_logits(reloaded, ids), tuned_logits)

    # init_adapter: continue training from the saved adapter
    base, _ = load_model_and_tokenizer(TINY, dtype="float32")
    resumed = attach_lora(base, r=99, alpha=1, dropout=0.0, init_adapter=out)
    assert torch.equal(_logits(resumed, ids), tuned_logits)
    assert count_trainable(resumed)[0] == count_trainable(peft_model)[0] > 0


def test_save_adapter_overwrites_atomically(tmp_path: Path, tiny_model_dir: Path, ids: torch.Tensor) -> None:
    model, _ = load_model_and_tokenizer(TINY, dtype="float32")
    peft_model = attach_lora(model, r=2, alpha=4, dropout=0.0)
    target = tmp_path / "adapter"
    _randomize_lora(peft_model, seed=1)
    save_adapter(peft_model, target)
    first = (target / "adapter_model.safetensors").read_bytes()
    _randomize_lora(peft_model, seed=2)
    expected = _logits(peft_model, ids)
    save_adapter(peft_model, target)
    assert (target / "adapter_model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no .tmp/.old leftovers
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    use_grouped_attention(fresh)  # the attention load_model_and_tokenizer picks on CPU
    assert torch.equal(_logits(PeftModel.from_pretrained(fresh, str(target)), ids), expected)


def test_lora_config_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(TINY, dtype="float32")
    with pytest.raises(ConfigError, match="target_modules"):
        attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["no_such_proj"])
    with pytest.raises(ConfigError, match=r"adapter_config\.json"):
        attach_lora(model, r=4, alpha=8, dropout=0.0, init_adapter=tmp_path)
    with pytest.raises(ConfigError, match="positive"):
        attach_lora(model, r=0, alpha=8, dropout=0.0)
