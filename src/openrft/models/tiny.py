"""A tiny random Llama model with a character-level ChatML tokenizer, built in-process.

Used by the test suite (and anyone who wants to try the plumbing in seconds): no download,
no source file, and deterministic: the same seed writes byte-identical weight, config and
tokenizer files every time (for a given torch/transformers version).

Vocabulary (ids in this order): the special tokens ``<|pad|>`` (0), ``<|im_start|>`` (1),
``<|im_end|>`` (2), ``<|unk|>`` (3), then printable ASCII (space to ``~``) and ``"\\n"``.
``<|unk|>`` stands for any character outside that set. eos is ``<|im_end|>``, pad is ``<|pad|>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

TINY_SEED = 1234
PAD, IM_START, IM_END, UNK = "<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, UNK)
CHARS = (*(chr(c) for c in range(32, 127)), "\n")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_vocab() -> dict[str, int]:
    """Token -> id for the tiny tokenizer (special tokens first, then characters)."""
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A character-level tokenizer (a merge-free BPE) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab=tiny_vocab(), merges=[], unk_token=UNK))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()  # join characters without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
        model_max_length=2048,
    )


def tiny_config() -> LlamaConfig:
    """hidden 64, 2 layers, 4 heads (2 kv heads), intermediate 128, tied embeddings."""
    from transformers import LlamaConfig

    vocab = tiny_vocab()
    return LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=vocab[IM_END],
        pad_token_id=vocab[PAD],
    )


def build_tiny_model(seed: int = TINY_SEED) -> LlamaForCausalLM:
    """A randomly initialised fp32 LlamaForCausalLM; the caller's RNG state is left untouched."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model.eval()


def write_tiny_model(out_dir: Path, seed: int = TINY_SEED) -> dict[str, Any]:
    """Write the tiny model + tokenizer (safetensors) into `out_dir`; return its source record."""
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_model(seed).save_pretrained(out_dir)
    build_tiny_tokenizer().save_pretrained(out_dir)
    return {
        "kind": "in-process",
        "builder": "openrft.models.tiny.write_tiny_model",
        "seed": seed,
        "transformers_version": transformers.__version__,
    }
