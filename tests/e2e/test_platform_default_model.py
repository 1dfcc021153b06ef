"""The issue's acceptance path on the real default model: start the server on loopback, then with
the SDK upload a dataset, register two reward functions from Python callables, launch a two-step
GRPO job on SmolLM2-135M-Instruct, stream its metrics until done, download the adapter and load it
with peft."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import openrft
from openrft.server import ServerSettings
from openrft.server.background import serve_in_background

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def format_reward(prompt: str, completion: str, example: dict) -> float:
    return 1.0 if re.search(r"<answer>.*?</answer>", completion, re.S) else 0.0


def equation_reward(prompt: str, completion: str, example: dict) -> float:
    found = re.search(r"<answer>(.*?)</answer>", completion, re.S)
    if not found or not re.fullmatch(r"[\d\s+\-*/().]+", found.group(1)):
        return 0.0
    try:
        value = eval(found.group(1), {"__builtins__": {}})  # digits and operators only
    except Exception:
        return 0.0
    return 1.0 if abs(value - example["target"]) < 1e-6 else 0.0


def test_platform_on_the_default_model(tmp_path: Path, default_model_dir: Path) -> None:
    rows = (REPO / "examples" / "data" / "countdown_train.jsonl").read_text().splitlines()[:16]
    data = tmp_path / "countdown.jsonl"
    data.write_text("\n".join(rows) + "\n")
    settings = ServerSettings(data_dir=tmp_path / "server", api_key="e2e-key", poll_interval_s=0.2)
    with serve_in_background(settings) as url, openrft.Client(url, "e2e-key") as client:
        t0 = time.monotonic()
        ds = client.datasets.upload(data)
        job = client.finetune(
            base_model="smollm2-135m-instruct",
            dataset=ds,
            reward_functions={"format": format_reward, "equation": equation_reward},
            method="grpo",
            data={
                "prompt_template": "Using the numbers {nums}, write an equation equal to {target}. "
                "Put it inside <answer> </answer>.",
            },
            grpo={"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 48, "temperature": 0.9},
            max_steps=2,
            save_every=0,
        )
        metrics = list(job.stream_metrics(poll_interval=1, timeout=900))
        assert job.status == "succeeded", job.logs()[-3000:]
        assert [m["step"] for m in metrics] == [1, 2]
        assert all("rewards/format/mean" in m and "rewards/equation/mean" in m for m in metrics)
        dest = client.adapters.download(job, tmp_path / "adapter")
        print(f"default-model 2-step job via the SDK: {time.monotonic() - t0:.1f} s")

    from peft import PeftModel

    from openrft.models import load_model_and_tokenizer

    base, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32")
    model = PeftModel.from_pretrained(base, str(dest))
    ids = tok("Hello", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
