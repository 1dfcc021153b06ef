"""What the server checks when a job of any recipe, or a comparison, is created (no worker runs
here, so nothing trains): the examples submit as the CLI runs them, rows lacking what the recipe
needs are refused with the file and line, overrides may not name server paths, and only a job's
own report files are served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import openrft
from openrft.client import APIError
from openrft.server import ServerSettings
from openrft.server.background import serve_in_background

KEY = "recipes-api-key"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("server-recipes-api")
    with serve_in_background(ServerSettings(data_dir=data, api_key=KEY, max_concurrent_jobs=0)) as url:
        yield url, data


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Iterator[openrft.Client]:
    with openrft.Client(server[0], KEY) as c:
        yield c


def _upload(client: openrft.Client, folder: Path, rows: list[dict[str, Any]]) -> str:
    path = folder / f"rows-{abs(hash(json.dumps(rows)))}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return client.datasets.upload(path).id


@pytest.mark.parametrize(
    ("example", "kind", "method"),
    [
        ("countdown.yaml", "train", "grpo"),
        ("countdown_sft.yaml", "train", "sft"),
        ("dpo_concise.yaml", "train", "dpo"),
        ("countdown_sft_rft.yaml", "train", "sft+grpo"),
        ("countdown_compare.yaml", "compare", "compare"),
    ],
)
def test_the_examples_submit_as_the_cli_runs_them(
    client: openrft.Client, example: str, kind: str, method: str
) -> None:
    job = client.jobs.submit(EXAMPLES / example, ["max_steps=3"], kind=kind)
    assert (job.status, job.kind, job.data["method"]) == ("queued", kind, method)
    config = job.refresh().data["config"]
    assert config["data"]["train"].startswith("datasets/") and config["max_steps"] == 3
    if example == "dpo_concise.yaml":  # one file for train and eval: uploaded once
        assert config["data"]["eval"] == config["data"]["train"]
    if example == "countdown_sft_rft.yaml":
        assert "method" not in config and [s["method"] for s in config["stages"]] == ["sft", "grpo"]
    job.cancel()


@pytest.mark.parametrize(
    ("config", "rows", "message"),
    [
        (
            {"method": "sft"},
            [{"prompt": "hi", "completion": "hello"}, {"prompt": "bye"}],
            r"rows-\d+\.jsonl:2: the row has no target completion",
        ),
        (
            {"method": "dpo"},
            [{"prompt": "hi", "chosen": "a"}],
            r"rows-\d+\.jsonl:1: the row has no 'rejected' column",
        ),
        (
            {"stages": [{"name": "a", "method": "grpo"}, {"name": "b", "method": "sft"}]},
            [{"prompt": "hi"}],
            r"the row has no target completion",
        ),
        (
            {"method": "sft", "data": {"prompt_template": "Say {word}"}},
            [{"prompt": "hi", "completion": "hello"}],
            r"word",
        ),
    ],
)
def test_rows_without_what_the_recipe_needs_are_refused(
    client: openrft.Client, tmp_path: Path, config: dict[str, Any], rows: list[dict[str, Any]], message: str
) -> None:
    body = {
        "model": {"name": "tiny-random-llama"},
        "rewards": [{"name": "r", "function": "exact_match"}],
        **config,
        "data": {"train": _upload(client, tmp_path, rows), **config.get("data", {})},
    }
    before = len(client.jobs.list())
    with pytest.raises(APIError, match=message) as err:
        client.jobs.create(body)
    assert err.value.status == 422 and len(client.jobs.list()) == before  # nothing queued


@pytest.mark.parametrize(
    ("compare", "message"),
    [
        ({"sft_overrides": {"model.name": "/etc"}}, r"compare\.sft_overrides \(sft\): model\.name = '/etc'"),
        (
            {"rft_overrides": {"data.train": "/etc/passwd"}},
            r"compare\.rft_overrides \(rft\) sets data\.train",
        ),
        (
            {
                "methods": ["sft_rft"],
                "rft_overrides": {"rewards": [{"name": "x", "function": "/tmp/x.py:f"}]},
            },
            r"compare\.rft_overrides \(sft_rft\) sets rewards with function '/tmp/x\.py:f'",
        ),
        ({"sft_overrides": {"sft.completion_fn": "/tmp/w.py:f"}}, r"sft\.completion_fn = '/tmp/w\.py:f'"),
        (
            {"rft_overrides": {"rewards": [{"name": "x", "function": "regex", "env": ["HOME"]}]}},
            r"compare overrides \(grpo\): rewards\[0\]\.env: HOME is not allowed by this server",
        ),
    ],
)
def test_a_comparisons_overrides_may_not_name_server_paths(
    client: openrft.Client, tmp_path: Path, compare: dict[str, Any], message: str
) -> None:
    body = {
        "model": {"name": "tiny-random-llama"},
        "data": {"train": _upload(client, tmp_path, [{"prompt": "hi", "completion": "x"}])},
        "rewards": [{"name": "r", "function": "exact_match"}],
        "compare": compare,
    }
    with pytest.raises(APIError, match=message) as err:
        client.jobs.create(body, kind="compare")
    assert err.value.status == 422


def test_only_a_jobs_own_report_files_are_served(
    client: openrft.Client, server: tuple[str, Path], tmp_path: Path
) -> None:
    rows = [{"prompt": "hi", "completion": "x"}] * 4
    config = {
        "model": {"name": "tiny-random-llama"},
        "data": {"train": _upload(client, tmp_path, rows)},
        "rewards": [{"name": "r", "function": "exact_match"}],
    }
    training = client.jobs.create(config)
    comparison = client.jobs.create(config, kind="compare")
    assert training.reports() == [] and comparison.reports() == []
    folder = server[1] / "runs" / comparison.id / "compare"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text(f"trained in {server[1]}/runs/{comparison.id}/compare/cells\n")
    (folder / "plan.json").write_text("{}")
    (server[1] / "runs" / comparison.id / "job.json").write_text("{}")
    assert [f["name"] for f in comparison.reports()] == ["report.md"]
    dest = comparison.download_report(tmp_path / "got")
    assert (dest / "report.md").read_text() == f"trained in runs/{comparison.id}/compare/cells\n"
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {KEY}"}) as http:
        base = f"/v1/jobs/{comparison.id}/reports"
        for name in ("plan.json", "..%2Fjob.json", "%2E%2E%2Fjob.json", "report.html", "job.json"):
            resp = http.get(f"{base}/{name}")
            assert resp.status_code == 404 and "error" in resp.json(), (name, resp.text)  # never the file
        assert http.get(f"/v1/jobs/{training.id}/reports/report.md").status_code == 404
        assert http.get("/v1/jobs/job-nothere/reports").status_code == 404
