"""`openrft server --runs-dir DIR`: the run directories `openrft train` wrote, served read-only at
/v1/local-runs for the admin key. The runs dir is built by writing files as a run does (plus one
real run of the tiny model); names that are not a run directly in DIR get 404, a user's key gets
404 everywhere, and the server writes nothing into DIR. In-process (TestClient), no worker, except
the dashboard test (a real server on loopback, headless Chromium)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from openrft.cli.main import app as cli_app
from openrft.cli.server import app as server_cli
from openrft.cli.server import default_runs_dir
from openrft.server import ServerSettings, create_app
from openrft.server.background import serve_in_background
from openrft.server.routes import local_runs as local_runs_routes
from openrft.tracking.run_dir import RunDir

ADMIN_KEY = "admin-key-for-local-runs"
LONG_AGO = time.time() - 3 * 86400


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _metrics(step: int, **extra: Any) -> dict[str, Any]:
    return {"step": step, "reward": step / 10, "reward_std": 0.1, "rewards/fmt/mean": step / 10,
            "rewards/fmt/std": 0.05, "kl": 0.01 * step, "loss": 1.0 / step,
            "completions/mean_length": 7 + step, "grad_norm": 0.5, **extra}  # fmt: skip


def _samples(step: int) -> list[dict[str, Any]]:
    return [
        {"step": step, "group": g, "prompt_index": g, "prompt": f"prompt {g}",
         "completion": f"answer {step}.{g}.{i}", "rewards": {"fmt": float(i)}, "reward": float(i),
         "advantage": i - 0.5, "length": 3, "truncated": False}
        for g in range(2) for i in range(2)
    ]  # fmt: skip


def _run(
    path: Path, config: dict[str, Any], steps: int, samples: bool = True, finished: bool = False
) -> Path:
    """A run directory as `openrft train` leaves it: config, metrics and samples per step, an adapter
    at the end."""
    run = RunDir(path)
    path.mkdir(parents=True)
    run.checkpoints.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    for step in range(1, steps + 1):
        run.log_metrics(_metrics(step, **({"eval/accuracy": 0.25} if step == 2 else {})))
        if samples:
            run.log_samples(_samples(step))
    if finished:
        (run.checkpoints / f"step-{steps}").mkdir()
        run.adapter.mkdir()
        (run.adapter / "adapter_config.json").write_text('{"r": 4}')
    return path


def _age(path: Path) -> None:
    """Make every file of `path` look untouched for days (a run that stopped long ago)."""
    for p in [path, *path.rglob("*")]:
        os.utime(p, (LONG_AGO, LONG_AGO), follow_symlinks=False)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """alpha (finished, with events), beta (metrics only, stopped days ago), chain (sft done, rft
    running), and things that are not runs or point out of the runs dir."""
    root = tmp_path / "runs"
    root.mkdir()
    grpo = {"method": "grpo", "max_steps": 4, "model": {"name": "tiny-random-llama"}}
    alpha = _run(root / "alpha", grpo, steps=3, finished=True)
    events = [{"step": 2, "event": "reward_changed", "name": "fmt"}, {"step": 3, "event": "checkpoint"}]
    (alpha / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"torn')
    beta = root / "beta"
    beta.mkdir()
    (beta / "metrics.jsonl").write_text(json.dumps(_metrics(1)) + "\n" + json.dumps(_metrics(2)) + "\n")
    _age(beta)
    chain = root / "chain"
    stages = [{"name": "sft", "method": "sft", "max_steps": 2}, {"name": "rft", "method": "grpo"}]
    chain.mkdir()
    (chain / "config.json").write_text(json.dumps({**grpo, "max_steps": 3, "stages": stages}))
    _run(
        chain / "stages" / "sft",
        {**grpo, "method": "sft", "max_steps": 2},
        steps=2,
        samples=False,
        finished=True,
    )
    _run(chain / "stages" / "rft", {**grpo, "max_steps": 3}, steps=1)
    (chain / "stages.json").write_text(json.dumps({"sft": {"index": 0, "method": "sft", "max_steps": 2}}))
    # not runs: a folder without run files, a hidden copy being made, a file
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("nothing")
    _run(root / ".alpha.tmp-123", grpo, steps=1)
    (root / "README.md").write_text("my runs")
    # out of the runs dir: a run folder linked in, a run whose metrics file is linked out, a stage linked out
    outside = _run(tmp_path / "outside" / "secret-run", grpo, steps=2)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    sneaky = root / "sneaky"
    sneaky.mkdir()
    (sneaky / "config.json").write_text(json.dumps(grpo))
    (sneaky / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")
    (chain / "stages" / "evil").symlink_to(outside, target_is_directory=True)
    (root / "latest").symlink_to("alpha", target_is_directory=True)  # a link inside the runs dir is fine
    return root


def _app(tmp_path: Path, runs_dir: Path | None) -> TestClient:
    settings = ServerSettings(
        data_dir=tmp_path / "data", api_key=ADMIN_KEY, max_concurrent_jobs=0, runs_dir=runs_dir
    )
    return TestClient(create_app(settings))


@pytest.fixture
def http(tmp_path: Path, runs_dir: Path) -> Iterator[TestClient]:
    with _app(tmp_path, runs_dir) as client:
        client.headers.update(_bearer(ADMIN_KEY))
        yield client


def _get(http: TestClient, path: str, status: int = 200) -> Any:
    resp = http.get(path)
    assert resp.status_code == status, (path, resp.status_code, resp.text)
    return resp.json()


# -- what the admin sees ----------------------------------------------------------------------------


def test_the_admin_lists_every_run_directory_with_its_progress_and_a_guessed_status(
    http: TestClient, runs_dir: Path
) -> None:
    listed = _get(http, "/v1/local-runs")
    assert listed["runs_dir"] == str(runs_dir)
    runs = {r["name"]: r for r in listed["data"]}
    assert sorted(runs) == ["alpha", "beta", "chain", "latest"]
    alpha = runs["alpha"]
    assert (alpha["kind"], alpha["method"], alpha["base_model"]) == ("run", "grpo", "tiny-random-llama")
    assert (alpha["step"], alpha["max_steps"], alpha["reward"], alpha["status"]) == (3, 4, 0.3, "finished")
    beta = runs["beta"]
    assert (beta["method"], beta["step"], beta["max_steps"], beta["status"]) == (None, 2, None, "stopped")
    assert beta["modified"] == pytest.approx(LONG_AGO, abs=1)
    assert listed["data"][-1]["name"] == "beta"  # the most recently changed first
    chain = runs["chain"]
    assert (chain["kind"], chain["method"], chain["status"]) == ("chained", "sft > grpo", "in_progress")
    assert (chain["step"], chain["max_steps"], chain["reward"]) == (3, 5, 0.1)
    stages = [(s["name"], s["method"], s["step"], s["max_steps"], s["status"]) for s in chain["stages"]]
    assert stages == [("sft", "sft", 2, 2, "finished"), ("rft", "grpo", 1, 3, "in_progress")]
    assert _get(http, "/v1/local-runs/chain") == chain


def test_a_local_run_serves_metrics_curves_samples_events_and_config(http: TestClient) -> None:
    metrics = _get(http, "/v1/local-runs/alpha/metrics")["data"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["step"] for m in _get(http, "/v1/local-runs/alpha/metrics?since=2")["data"]] == [3]
    curves = _get(http, "/v1/local-runs/alpha/curves")
    assert curves["step"] == [1, 2, 3]
    assert curves["reward"]["mean"] == [0.1, 0.2, 0.3]
    assert curves["rewards"]["fmt"]["std"] == [0.05] * 3
    assert curves["series"]["eval/accuracy"] == [None, 0.25, None]  # every metric, eval ones too
    assert curves["series"]["grad_norm"] == [0.5] * 3
    steps = _get(http, "/v1/local-runs/alpha/steps")["data"]
    assert steps == [{"step": s, "samples": 4} for s in (1, 2, 3)]
    latest = _get(http, "/v1/local-runs/alpha/samples")
    assert (latest["step"], latest["steps"]) == (3, [1, 2, 3])
    assert [g["prompt"] for g in latest["groups"]] == ["prompt 0", "prompt 1"]
    first = _get(http, "/v1/local-runs/alpha/samples?step=1&group=1")["groups"]
    assert [c["completion"] for c in first[0]["completions"]] == ["answer 1.1.0", "answer 1.1.1"]
    assert [c["advantage"] for c in first[0]["completions"]] == [-0.5, 0.5]
    events = _get(http, "/v1/local-runs/alpha/events")["data"]
    assert [e["event"] for e in events] == ["reward_changed", "checkpoint"]  # the torn last line waits
    assert _get(http, "/v1/local-runs/beta/events")["data"] == []
    assert _get(http, "/v1/local-runs/alpha/config")["config"]["max_steps"] == 4
    assert _get(http, "/v1/local-runs/latest/curves") == curves


def test_a_chained_runs_stages_are_read_with_the_stage_parameter(http: TestClient) -> None:
    sft = _get(http, "/v1/local-runs/chain/metrics?stage=sft")["data"]
    assert [m["step"] for m in sft] == [1, 2]
    assert _get(http, "/v1/local-runs/chain/steps?stage=sft")["data"] == []
    rft = _get(http, "/v1/local-runs/chain/samples?stage=rft")
    assert rft["step"] == 1 and len(rft["groups"]) == 2
    assert _get(http, "/v1/local-runs/chain/config?stage=sft")["config"]["method"] == "sft"
    whole = _get(http, "/v1/local-runs/chain/config")
    assert [s["name"] for s in whole["config"]["stages"]] == ["sft", "rft"]
    assert whole["stages"]["sft"]["method"] == "sft"
    error = _get(http, "/v1/local-runs/chain/curves", status=422)["error"]
    assert error["message"] == "local run 'chain' is chained: name one of its stages with ?stage= (sft, rft)"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/local-runs/%2E%2E/config",
        "/v1/local-runs/%2E%2E%2Foutside%2Fsecret-run/metrics",
        "/v1/local-runs/..%2F..%2F..%2Fetc/config",
        "/v1/local-runs/../outside/metrics",
        "/v1/local-runs/%2Fetc/config",
        "/v1/local-runs/%2E",
        "/v1/local-runs/escape",
        "/v1/local-runs/escape/metrics",
        "/v1/local-runs/sneaky/metrics",
        "/v1/local-runs/.alpha.tmp-123/config",
        "/v1/local-runs/notes",
        "/v1/local-runs/README.md/config",
        "/v1/local-runs/alpha%00/metrics",
        "/v1/local-runs/nothing/samples",
        "/v1/local-runs/alpha/metrics?stage=sft",
        "/v1/local-runs/chain/metrics?stage=..",
        "/v1/local-runs/chain/metrics?stage=../../alpha",
        "/v1/local-runs/chain/samples?stage=%2E%2E%2F%2E%2E%2Fbeta",
        "/v1/local-runs/chain/metrics?stage=evil",
        "/v1/local-runs/chain/config?stage=missing",
    ],
)
def test_names_that_are_not_a_run_directly_in_the_runs_dir_get_404(http: TestClient, path: str) -> None:
    resp = http.get(path)
    assert resp.status_code == 404, (path, resp.text)
    assert "secret" not in resp.text and "answer" not in resp.text


def test_runs_linked_out_of_the_runs_dir_are_not_listed(http: TestClient) -> None:
    names = {r["name"] for r in _get(http, "/v1/local-runs")["data"]}
    assert not names & {"escape", "sneaky", ".alpha.tmp-123", "notes", "README.md"}
    stages = [s["name"] for s in _get(http, "/v1/local-runs/chain")["stages"]]
    assert stages == ["sft", "rft"]


def _local_routes() -> list[str]:
    """Every /v1/local-runs route, for the run alpha."""
    paths = [r.path for r in local_runs_routes.router.routes if isinstance(r, APIRoute)]
    assert len(paths) == 8 and all(p.startswith("/v1/local-runs") for p in paths), paths
    return [p.replace("{run_name}", "alpha") for p in paths]


def test_a_users_key_gets_404_on_every_local_runs_route(http: TestClient) -> None:
    created = http.post("/v1/keys", json={"user": "alice"})
    assert created.status_code == 201, created.text
    alice = _bearer(created.json()["key"])
    for path in _local_routes():
        assert http.get(path).status_code == 200, path  # the admin
        resp = http.get(path, headers=alice)
        assert resp.status_code == 404, (path, resp.status_code, resp.text)
        assert resp.json()["error"] == {
            "message": "no local runs: the server's --runs-dir is listed for the admin key only",
            "type": "invalid_request_error",
            "code": "not_found",
        }
        assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_without_a_runs_dir_the_list_is_empty_and_every_run_is_404(tmp_path: Path) -> None:
    with _app(tmp_path, None) as client:
        client.headers.update(_bearer(ADMIN_KEY))
        assert _get(client, "/v1/local-runs") == {"runs_dir": None, "data": []}
        for path in _local_routes()[1:]:
            assert client.get(path).status_code == 404, path


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `root` (links not followed): kind, mode, size, mtime and content hash."""
    out: dict[str, tuple[Any, ...]] = {".": (os.lstat(root).st_mtime_ns, sorted(os.listdir(root)))}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            link = os.readlink(path) if path.is_symlink() else None
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content, link)
    return out


def test_the_server_writes_nothing_into_the_runs_dir(tmp_path: Path, runs_dir: Path) -> None:
    before = _snapshot(runs_dir)
    with _app(tmp_path, runs_dir) as client:  # startup and shutdown included
        client.headers.update(_bearer(ADMIN_KEY))
        for name in ("alpha", "beta", "latest"):
            for path in _local_routes():
                client.get(path.replace("/alpha", f"/{name}"))
                client.get(path.replace("/alpha", f"/{name}") + "?step=1")
        for stage in ("sft", "rft"):
            for route in ("metrics", "curves", "steps", "samples", "events", "config"):
                assert client.get(f"/v1/local-runs/chain/{route}?stage={stage}").status_code == 200
        for method in ("POST", "PUT", "PATCH", "DELETE"):  # nothing changes a local run
            assert client.request(method, "/v1/local-runs/alpha").status_code == 405
            assert client.request(method, "/v1/local-runs/alpha/metrics").status_code == 405
    assert _snapshot(runs_dir) == before


# -- the CLI's default and check --------------------------------------------------------------------


def test_openrft_server_takes_runs_of_the_working_directory_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_runs_dir() is None
    (tmp_path / "runs").mkdir()
    assert default_runs_dir() == Path("runs")
    with pytest.raises(ValidationError, match=r"--runs-dir '.*nothing' is not a directory"):
        ServerSettings(runs_dir=tmp_path / "nothing")
    result = CliRunner().invoke(server_cli, ["--runs-dir", str(tmp_path / "nothing"), "--data-dir", "data"])
    assert result.exit_code == 2 and "is not a directory" in re.sub(r"[\s│]+", " ", result.output), (
        result.output
    )
    assert not (tmp_path / "data").exists()  # refused before anything starts


# -- a real run -------------------------------------------------------------------------------------


def test_a_run_trained_with_openrft_train_is_listed_finished_with_its_charts_and_completions(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = [{"prompt": f"say {w}"} for w in ("apple", "banana", "cat", "dog", "egg", "fig")]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rewards.py").write_text(
        "def count_a(prompt, completion, example):\n    return completion.count('a')\n"
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            model: {name: tiny-random-llama, dtype: float32, threads: 1}
            lora: {r: 4, alpha: 8}
            data: {train: data.jsonl, eval_fraction: 0.34}
            grpo: {num_generations: 2, prompts_per_step: 2, max_new_tokens: 6}
            rewards:
              - {name: a, function: rewards.py:count_a}
            eval: {every: 2, max_rows: 2, keep_best: true}
            max_steps: 2
            save_every: 0
            """
        )
    )
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli_app, ["train", str(config), "--output-dir", str(runs / "tiny")])
    assert result.exit_code == 0, result.output
    with _app(tmp_path, runs) as client:
        client.headers.update(_bearer(ADMIN_KEY))
        (run,) = _get(client, "/v1/local-runs")["data"]
        assert (run["name"], run["method"], run["step"], run["max_steps"], run["status"]) == (
            "tiny", "grpo", 2, 2, "finished"
        )  # fmt: skip
        curves = _get(client, "/v1/local-runs/tiny/curves")
        assert curves["step"] == [1, 2] and list(curves["rewards"]) == ["a"]
        assert all(v is not None for v in curves["reward"]["mean"] + curves["loss"])
        assert (
            curves["series"]["eval/accuracy"][0] is None and curves["series"]["eval/accuracy"][1] is not None
        )
        events = _get(client, "/v1/local-runs/tiny/events")["data"]
        assert [(e["step"], e["event"]) for e in events] == [(2, "best_adapter")]
        samples = _get(client, "/v1/local-runs/tiny/samples?step=1")
        assert len(samples["groups"]) == 2 and all(len(g["completions"]) == 2 for g in samples["groups"])


# -- the dashboard in headless Chromium -------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
# Text put straight into the page's main element (e.g. "null" for a section that is not there).
STRAY_TEXT = (
    "() => [...document.getElementById('main').childNodes].filter(n => n.nodeType === 3).map(n => n.data)"
)


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_the_dashboard_lists_local_runs_and_shows_their_charts_and_completions(
    tmp_path: Path, runs_dir: Path
) -> None:
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download)"
    )
    settings = ServerSettings(
        data_dir=tmp_path / "data", api_key=ADMIN_KEY, max_concurrent_jobs=0, runs_dir=runs_dir
    )
    shots = Path(os.environ.get("OPENRFT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with serve_in_background(settings) as url, playwright.sync_playwright() as pw:
        alice_key = httpx.post(f"{url}/v1/keys", json={"user": "alice"}, headers=_bearer(ADMIN_KEY)).json()[
            "key"
        ]
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/#/")
            page.fill("#key-input", ADMIN_KEY)
            page.click("#key-save")
            page.wait_for_selector("tr[data-local-run='alpha']")
            page.screenshot(path=str(shots / "dashboard-local-runs.png"), full_page=True)
            assert page.evaluate(STRAY_TEXT) == []
            assert "finished" in page.inner_text("tr.local-run-row[data-local-run='alpha']")
            assert "stopped" in page.inner_text("tr.local-run-row[data-local-run='beta']")
            stage_rows = page.eval_on_selector_all(
                "tr.local-stage-row[data-local-run='chain']", "els => els.map(e => e.dataset.stage)"
            )
            assert stage_rows == ["sft", "rft"]

            page.click("tr.local-run-row[data-local-run='alpha'] a")
            page.wait_for_selector(".completion")
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-reward');"
                " return d && d.data && d.data.some(t => t.name === 'reward' && t.x.length === 3); }"
            )
            charts = page.evaluate(
                "() => [...document.querySelectorAll('#metric-charts [data-metric]')]"
                ".map(d => d.dataset.metric)"
            )
            assert charts[0] == "eval/accuracy" and "grad_norm" in charts
            assert "reward" not in charts and "rewards/fmt/mean" not in charts
            assert len(page.query_selector_all(".completion")) == 2
            assert page.query_selector("#action-cancel") is None  # read-only
            assert "reward_changed" in page.inner_text("#events")
            page.screenshot(path=str(shots / "dashboard-local-run.png"), full_page=True)
            assert page.evaluate(STRAY_TEXT) == []

            page.goto(f"{url}/#/local/chain")  # a chained run opens at its latest stage
            page.wait_for_function("() => document.querySelector('h1').textContent.startsWith('chain / rft')")
            page.click("#stage-tabs a")
            page.wait_for_function("() => document.querySelector('h1').textContent.startsWith('chain / sft')")
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-loss');"
                " return d && d.data && d.data[0].x.length === 2; }"
            )
            assert not errors, errors

            page.evaluate(f"localStorage.setItem('openrft.apiKey', '{alice_key}')")  # a user sees none
            page.goto(f"{url}/#/")
            page.reload()
            page.wait_for_selector("#runs-table")
            page.wait_for_timeout(500)
            assert page.query_selector("#local-runs") is None
            assert not errors, errors
        finally:
            browser.close()
