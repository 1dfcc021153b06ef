"""The platform end to end with the tiny model: a real server on loopback, the SDK, real training
jobs in worker processes, the adapter loaded with peft, cancel and pause/resume of a running job,
and the dashboard in headless Chromium (skipped when Debian's chromium is not installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import openrft
from openrft.client import Job
from openrft.jobs import procs
from openrft.server import ServerSettings
from openrft.server.background import serve_in_background

KEY = "sdk-test-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
G = 4


def format_reward(prompt: str, completion: str, example: dict) -> float:
    """1 if the completion has any bracket, else 0 (a random model hits it now and then)."""
    return 1.0 if re.search(r"[<>()\[\]]", completion) else 0.0


def letters_reward(prompt: str, completion: str, example: dict) -> float:
    """Spread-out scores so every group has a non-zero std."""
    return (len(re.findall(r"[A-Za-z]", completion)) % 5) / 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    data = tmp_path_factory.mktemp("server-sdk")
    settings = ServerSettings(data_dir=data, api_key=KEY, poll_interval_s=0.2, cancel_grace_s=5)
    with serve_in_background(settings) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[openrft.Client]:
    with openrft.Client(server, KEY) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(client: openrft.Client, tmp_path_factory: pytest.TempPathFactory) -> openrft.client.Dataset:
    path = tmp_path_factory.mktemp("data") / "countdown.csv"
    lines = ["nums,target"] + [f'"[{i}, {i + 3}, {i + 7}]",{2 * i + 10}' for i in range(8)]
    path.write_text("\n".join(lines) + "\n")
    return client.datasets.upload(path)


def slow_reward(prompt: str, completion: str, example: dict) -> float:
    """Makes a step last about half a second without using the CPU."""
    time.sleep(0.06)
    return 0.0


def _finetune(client: openrft.Client, dataset: Any, name: str, slow: bool = False, **extra: Any) -> Job:
    config: dict[str, Any] = {
        "model": {"dtype": "float32", "threads": 1},
        "data": {"prompt_template": "Using the numbers {nums}, make {target}."},
        "grpo": {"num_generations": G, "prompts_per_step": 2, "max_new_tokens": 12},
        "max_steps": 2,
        "save_every": 1,
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return client.finetune(
        base_model="tiny-random-llama",
        dataset=dataset,
        reward_functions={"format": format_reward, "letters": letters_reward}
        | ({"slow": slow_reward} if slow else {}),
        method="grpo",
        name=name,
        **config,
    )


@pytest.fixture(scope="module")
def two_runs(client: openrft.Client, dataset: Any) -> tuple[Job, Job]:
    """Two 2-step jobs queued together (the worker runs them one after the other)."""
    first = _finetune(client, dataset, "first")
    second = _finetune(client, dataset, "second", seed=1)
    return first, second


def test_sdk_end_to_end(client: openrft.Client, two_runs: tuple[Job, Job], tmp_path: Path) -> None:
    job, _ = two_runs
    t0 = time.monotonic()
    streamed = list(job.stream_metrics(poll_interval=0.3, timeout=300))
    elapsed = time.monotonic() - t0
    assert job.status == "succeeded", job.logs()[-3000:]
    assert [m["step"] for m in streamed] == [1, 2]
    for m in streamed:
        for key in (
            "reward",
            "rewards/format/mean",
            "rewards/letters/std",
            "kl",
            "loss",
            "completions/mean_length",
        ):
            assert key in m
    assert job.wait().data["step"] == 2 and job.data["attempts"] == 1
    print(f"2-step tiny GRPO job through the server: {elapsed:.1f} s")

    # the two callables were registered as reward versions whose source is the function's own
    versions = {r.name: r for r in client.rewards.list()}
    assert versions["format"].function == "format_reward" and versions["letters"].ref == "reward:letters@1"
    assert "def letters_reward" in client.rewards.source("letters", 1)

    # samples: the groups of the last step, each completion with every reward and its advantage
    samples = job.samples()
    assert samples["step"] == 2 and samples["steps"] == [1, 2]
    assert len(samples["groups"]) == 2
    for group in samples["groups"]:
        assert len(group["completions"]) == G and group["prompt"].startswith("Using the numbers")
        advantages = [c["advantage"] for c in group["completions"]]
        assert abs(sum(advantages)) < 1e-4  # group-relative
        for c in group["completions"]:
            assert set(c["rewards"]) == {"format", "letters"}
            assert c["rewards"]["letters"] == (len(re.findall(r"[A-Za-z]", c["completion"])) % 5) / 4

    # the adapter: download (sha256-checked), then load it with peft on the base model
    assert job.id in [a["id"] for a in client.adapters.list()]
    dest = client.adapters.download(job, tmp_path / "adapter")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    from peft import PeftModel

    from openrft.models import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer("tiny-random-llama", dtype="float32")
    model = PeftModel.from_pretrained(base, str(dest))
    saved = load_file(str(dest / "adapter_model.safetensors"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(loaded) > 0
    for name, tensor in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == name]
        assert len(match) == 1 and torch.equal(match[0], tensor), name
    assert any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)  # trained, not fresh


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """`predicate()`'s first truthy value, polled every `interval` s; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _pid(job: Job) -> int:
    started = [e["detail"] for e in job.events() if e["event"] == "started"]
    return int(started[-1].split()[-1])


def test_cancel_running_job_within_seconds(client: openrft.Client, dataset: Any, two_runs: Any) -> None:
    for j in two_runs:
        j.wait(timeout=300)
    job = _finetune(client, dataset, "to-cancel", max_steps=500, save_every=0)
    wait_for(lambda: job.refresh().data["step"] >= 1, 120, "the first step")
    pid = _pid(job)
    assert procs.alive(pid, None)
    t0 = time.monotonic()
    job.cancel()
    job.wait(timeout=30, poll_interval=0.1, check=False)
    took = time.monotonic() - t0
    assert job.status == "cancelled"
    assert took < 10, took
    assert not procs.alive(pid, None)
    print(f"cancel of a running job took {took:.2f} s")


def test_pause_and_resume_continue_from_checkpoint(
    client: openrft.Client, dataset: Any, two_runs: Any
) -> None:
    for j in two_runs:
        j.wait(timeout=300)
    job = _finetune(client, dataset, "paused", slow=True, max_steps=6)
    wait_for(lambda: job.refresh().data["step"] >= 2, 120, "two steps")
    job.pause()
    wait_for(lambda: job.refresh().status == "paused", 30, "paused")
    paused_at = job.data["step"]
    time.sleep(1)
    assert job.refresh().status == "paused" and job.data["step"] == paused_at  # nothing runs
    job.resume()
    job.wait(timeout=300)
    assert job.data["attempts"] == 2
    assert re.search(r"resumed from .*step-\d+ \(step \d+\)", job.logs())
    steps = [m["step"] for m in job.metrics()]
    assert steps == [1, 2, 3, 4, 5, 6]


# -- the dashboard in headless Chromium -------------------------------------------------------------

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_dashboard_shows_curves_completions_and_comparison(
    server: str, client: openrft.Client, dataset: Any, two_runs: tuple[Job, Job], tmp_path: Path
) -> None:
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download)"
    )
    first, second = two_runs
    first.wait(timeout=300)
    second.wait(timeout=300)
    live = _finetune(client, dataset, "live")  # watched while it runs
    shots = Path(os.environ.get("OPENRFT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # runs list: the key is asked first, then the runs show with their status
            page.goto(f"{server}/#/")
            page.fill("#key-input", KEY)
            page.click("#key-save")
            page.wait_for_selector(f"tr[data-run='{first.id}']")
            assert "succeeded" in page.inner_text(f"tr[data-run='{first.id}']")

            # live updates: a job opened while queued fills its chart and status without a reload
            page.goto(f"{server}/#/run/{live.id}")
            page.wait_for_function(
                "() => { const s = document.getElementById('run-status'), d = document.getElementById("
                "'chart-reward'); return s && s.textContent === 'succeeded' && d && d.data &&"
                " d.data.some(t => t.name === 'reward' && t.x.length === 2); }",
                timeout=120_000,
            )

            # one run: total reward with std band, each reward function, KL/length/loss, completions
            for _ in range(3):  # quick navigation: a render for the page just left must not win
                page.goto(f"{server}/#/")
                page.goto(f"{server}/#/run/{first.id}")
            page.wait_for_function(
                "() => (document.querySelector('h1') || {}).textContent?.startsWith('first')"
            )
            page.wait_for_timeout(3500)  # longer than the runs list's refresh period
            assert page.inner_text("h1").startswith("first")
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-reward');"
                " return d && d.data && d.data.some(t => t.name === 'reward' && t.x.length === 2); }",
                timeout=30_000,
            )
            page.wait_for_selector(".completion")
            traces = page.evaluate(
                "() => Object.fromEntries(['chart-reward', 'chart-rewards', 'chart-kl', 'chart-length', "
                "'chart-loss'].map(id => [id, document.getElementById(id).data.map(t => "
                "({name: t.name, n: t.y.filter(v => v !== null).length, fill: t.fill || null}))]))"
            )
            assert {"name": "reward", "n": 2, "fill": None} in traces["chart-reward"]
            assert any(t["fill"] == "tonexty" for t in traces["chart-reward"])  # the std band
            names = {t["name"] for t in traces["chart-rewards"]}
            assert {"format", "letters"} <= names
            for chart in ("chart-kl", "chart-length", "chart-loss"):
                assert traces[chart][0]["n"] == 2, (chart, traces[chart])
            points = page.evaluate(
                "() => document.querySelectorAll('#chart-reward .scatterlayer .point').length"
            )
            assert points >= 2  # drawn markers, not only data
            cards = page.query_selector_all(".completion")
            assert len(cards) == G
            text = cards[0].inner_text()
            assert "format:" in text and "letters:" in text and "advantage:" in text
            step_options = page.eval_on_selector_all("#step-select option", "els => els.map(e => e.value)")
            assert step_options == ["1", "2"]
            page.select_option("#step-select", "1")
            page.wait_for_function(f"() => document.querySelectorAll('.completion').length === {G}")
            page.screenshot(path=str(shots / "dashboard-run.png"), full_page=True)

            # compare: both runs on one chart
            page.goto(f"{server}/#/compare/{first.id}/{second.id}")
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-compare');"
                f" return d && d.data && d.data.filter(t => ['{first.id}', '{second.id}'].includes(t.name)"
                " && t.x.length === 2).length === 2; }",
                timeout=30_000,
            )
            page.screenshot(path=str(shots / "dashboard-compare.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    for name in ("dashboard-run.png", "dashboard-compare.png"):
        png = (shots / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (shots / "traces.json").write_text(json.dumps(traces, indent=1))
