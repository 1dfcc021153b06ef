"""Every recipe as a server job, with the tiny model, through the SDK and a real loopback server:
SFT, DPO and SFT-then-GRPO stages submitted from YAML end `succeeded` with an adapter that loads
with peft, and a full fine-tuning with a model that loads; a comparison job's report downloads;
a pause and a cancel stop after the current step with a checkpoint, and the resumed job runs
each step exactly once."""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_server_sdk import wait_for

import openrft
from openrft.client import Job
from openrft.jobs import procs
from openrft.server import ServerSettings
from openrft.server.background import serve_in_background

KEY = "recipes-test-key"
WORDS = ["apple", "banana", "cat", "dog", "egg", "fig"]

TINY = """\
model: {name: tiny-random-llama, dtype: float32, threads: 1}
lora: {r: 4, alpha: 8}
optim: {lr: 0.02, micro_batch_size: 8}
max_steps: 2
save_every: 1
"""


def slow_reward(prompt: str, completion: str, example: dict) -> float:
    """Makes a GRPO step of 8 samples last about half a second without using the CPU."""
    time.sleep(0.06)
    return float(len(completion) % 3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("server-recipes")
    settings = ServerSettings(data_dir=data, api_key=KEY, poll_interval_s=0.1, max_concurrent_jobs=2)
    with serve_in_background(settings) as url:
        yield url, data


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Iterator[openrft.Client]:
    with openrft.Client(server[0], KEY) as c:
        yield c


def _write(folder: Path, name: str, body: str, rows: dict[str, list[dict[str, Any]]]) -> Path:
    """A YAML config `name` in `folder` with its data files, as a user keeps them."""
    folder.mkdir(parents=True, exist_ok=True)
    for file, content in rows.items():
        (folder / file).write_text("".join(json.dumps(r) + "\n" for r in content))
    path = folder / name
    path.write_text(TINY + textwrap.dedent(body))
    return path


def _sft_rows() -> list[dict[str, Any]]:
    return [{"prompt": f"say {w}", "completion": w.upper()} for w in WORDS]


@pytest.fixture(scope="module")
def recipe_jobs(client: openrft.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    """An SFT, a DPO and a stages (SFT then GRPO) job, submitted from local YAML files."""
    folder = tmp_path_factory.mktemp("configs")
    sft = _write(
        folder,
        "sft.yaml",
        """\
        method: sft
        data: {train: words.jsonl}
        sft: {batch_size: 6, max_seq_len: 64}
        """,
        {"words.jsonl": _sft_rows()},
    )
    dpo = _write(
        folder,
        "dpo.yaml",
        """\
        method: dpo
        data: {train: prefs.jsonl, eval: prefs.jsonl}
        dpo: {batch_size: 6, beta: 0.5}
        """,
        {"prefs.jsonl": [{"prompt": f"say {w}", "chosen": "yes", "rejected": "no"} for w in WORDS]},
    )
    stages = _write(
        folder,
        "chain.yaml",
        """\
        data: {train: words.jsonl}
        rewards: [{name: upper, function: regex, kwargs: {pattern: '^[A-Z]+$', mode: fullmatch}}]
        sft: {batch_size: 6, max_seq_len: 64}
        grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 6}
        stages:
          - {name: sft, method: sft, max_steps: 2}
          - {name: rft, method: grpo, max_steps: 2}
        """,
        {"words.jsonl": _sft_rows()},
    )
    return {
        "sft": client.jobs.submit(sft),
        "dpo": client.jobs.submit(dpo),
        "sft+grpo": client.jobs.submit(stages, ["seed=1"]),
        "full": client.jobs.submit(sft, ["sft.full_finetune=true", "max_steps=1", "optim.lr=0.001"]),
    }


@pytest.fixture(scope="module")
def peft_base() -> Any:
    from openrft.models import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny-random-llama", dtype="float32")[0]


@pytest.mark.parametrize("method", ["sft", "dpo", "sft+grpo"])
def test_each_recipe_succeeds_with_an_adapter_that_loads_with_peft(
    method: str, recipe_jobs: dict[str, Job], peft_base: Any, server: tuple[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel

    job = recipe_jobs[method]
    job.wait(timeout=300, poll_interval=0.2, check=False)
    assert job.status == "succeeded", job.logs()[-3000:]
    assert job.data["method"] == method and job.kind == "train" and job.data["has_adapter"]
    assert job.data["step"] == job.data["max_steps"] == (4 if "+" in method else 2)  # stages: 2 + 2
    run_dir = server[1] / "runs" / job.id
    runs = [run_dir / "stages" / "sft", run_dir / "stages" / "rft"] if "+" in method else [run_dir]
    for run in runs:
        assert [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [
            1,
            2,
        ]
    dest = job.download_adapter(tmp_path / "adapter")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(str(dest / "adapter_model.safetensors"))
    if "+" in method:  # the top-level adapter is the last stage's
        last = run_dir / "stages" / "rft" / "adapter" / "adapter_model.safetensors"
        assert (dest / "adapter_model.safetensors").read_bytes() == last.read_bytes()
    model = PeftModel.from_pretrained(peft_base, str(dest))
    try:
        loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
        assert set(saved) == set(loaded) and saved
        assert all(torch.equal(loaded[k], v) for k, v in saved.items())
        assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained, not fresh
    finally:
        model.unload()


def test_a_full_finetuning_job_downloads_a_model_that_loads(
    recipe_jobs: dict[str, Job], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    job = recipe_jobs["full"]
    job.wait(timeout=300, poll_interval=0.2, check=False)
    assert job.status == "succeeded" and job.data["has_adapter"], job.logs()[-3000:]
    dest = job.download_adapter(tmp_path / "model")
    assert {"config.json", "model.safetensors"} <= {p.name for p in dest.iterdir()}
    tuned = AutoModelForCausalLM.from_pretrained(dest)
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    assert any(not torch.equal(p, base[n]) for n, p in tuned.named_parameters())  # trained


def test_a_comparison_job_writes_a_report_that_downloads(
    client: openrft.Client, recipe_jobs: dict[str, Job], server: tuple[str, Path], tmp_path: Path
) -> None:
    words = [f"{a}{b}" for a in "abcdef" for b in "xy"]
    rows = [{"prompt": f"say {w}", "completion": w.upper(), "answer": w.upper()} for w in words]
    config = _write(
        tmp_path / "cfg",
        "cmp.yaml",
        """\
        data: {train: rows.jsonl, eval_fraction: 0.5}
        rewards:
          - {name: exact, function: exact_match}
          - {name: upper, function: regex, kwargs: {pattern: '^[A-Z]+$', mode: fullmatch}}
        success_reward: exact
        sft: {batch_size: 4, max_seq_len: 64}
        grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 6}
        eval: {max_new_tokens: 6}
        compare: {train_sizes: [4], methods: [sft, rft], eval_rows: 4}
        """,
        {"rows.jsonl": rows},
    )
    job = client.jobs.submit(config, ["max_steps=1"], kind="compare")
    assert job.kind == "compare" and job.data["method"] == "compare"
    job.wait(timeout=300, poll_interval=0.2, check=False)
    assert job.status == "succeeded", job.logs()[-3000:]
    assert not job.data["has_adapter"]
    listed = {f["name"]: f for f in job.reports()}
    assert set(listed) == {"report.md", "report.json", "accuracy.png"}
    dest = job.download_report(tmp_path / "report")
    report = json.loads((dest / "report.json").read_text())
    assert [r["cell"] for r in report["results"]] == ["base", "n4-sft", "n4-rft"]
    assert all(r["n"] == 4 for r in report["results"])
    assert "RFT (GRPO)" in (dest / "report.md").read_text()
    assert (dest / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # served as every response: paths relative to the data dir
    assert report["results"][1]["adapter"] == f"runs/{job.id}/compare/cells/n4-sft/run/adapter"
    assert str(server[1]) not in (dest / "report.json").read_text() + (dest / "report.md").read_text()


def _checkpoints(run_dir: Path) -> list[int]:
    return sorted(
        int(p.parent.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*/manifest.json")
    )


def _slow_grpo(client: openrft.Client, rows: Any, name: str, max_steps: int) -> Job:
    """GRPO with checkpoints only at the end (save_every=0): any other checkpoint is a stop's."""
    return client.finetune(
        base_model="tiny-random-llama",
        dataset=rows,
        reward_functions={"slow": slow_reward},
        name=name,
        model={"dtype": "float32", "threads": 1},
        data={"prompt_template": "Say {word}."},
        grpo={"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 6},
        max_steps=max_steps,
        save_every=0,
    )


@pytest.fixture(scope="module")
def words(client: openrft.Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("rows") / "words.jsonl"
    path.write_text("".join(json.dumps({"word": w}) + "\n" for w in WORDS))
    return client.datasets.upload(path)


def test_a_paused_job_checkpoints_its_step_and_resumes_without_repeating_one(
    client: openrft.Client, words: Any, recipe_jobs: dict[str, Job], server: tuple[str, Path]
) -> None:
    for j in recipe_jobs.values():
        j.wait(timeout=300, check=False)
    job = _slow_grpo(client, words, "paused", max_steps=6)
    run_dir = server[1] / "runs" / job.id
    asked_at = wait_for(
        lambda: job.refresh().data["step"] >= 2 and job.data["step"], 120, "two steps", interval=0.05
    )
    job.pause()
    wait_for(lambda: job.refresh().status == "paused", 60, "the pause", interval=0.05)
    saved = _checkpoints(run_dir)
    assert saved and saved[-1] >= asked_at, (saved, asked_at)  # the step it was in, not an older one
    assert job.data["step"] == saved[-1] < 6
    job.resume()
    job.wait(timeout=300, poll_interval=0.2)
    assert [m["step"] for m in job.metrics()] == [1, 2, 3, 4, 5, 6]
    log = job.logs()
    assert re.search(rf"resumed from \S*/checkpoints/step-0*{saved[-1]} \(step {saved[-1]}\)", log), log
    ran = Counter(int(n) for n in re.findall(r" step (\d+)/6: ", log))
    assert ran == Counter(range(1, 7)), ran  # each step ran exactly once over both attempts


def test_a_cancelled_job_checkpoints_its_step(
    client: openrft.Client, words: Any, recipe_jobs: dict[str, Job], server: tuple[str, Path]
) -> None:
    for j in recipe_jobs.values():
        j.wait(timeout=300, check=False)
    job = _slow_grpo(client, words, "cancelled", max_steps=200)
    asked_at = wait_for(
        lambda: job.refresh().data["step"] >= 1 and job.data["step"], 120, "a step", interval=0.05
    )
    pid = int([e["detail"] for e in job.events() if e["event"] == "started"][-1].split()[-1])
    job.cancel()
    job.wait(timeout=60, poll_interval=0.1, check=False)
    assert job.status == "cancelled" and not procs.alive(pid, None)
    saved = _checkpoints(server[1] / "runs" / job.id)
    assert saved and saved[-1] >= asked_at and saved[-1] == job.data["step"], (saved, asked_at)
    assert f"stopped: stopped after step {saved[-1]}; checkpoint saved" in job.logs()
