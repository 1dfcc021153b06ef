"""The CLI on hostile input files: one red line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openrft.cli.main import app

DEEP = "[" * 200_000 + "]" * 200_000


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`openrft ARGS` as the console script runs it (through `main`, which turns UserError into exit 2)."""
    code = "from openrft.cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "deep.json").write_text('[{"a": ' + DEEP + "}]")
    (tmp_path / "deep.jsonl").write_text('{"nums": [1], "target": 1}\n{"a": ' + DEEP + "}\n")
    (tmp_path / "deep.yaml").write_text("model: " + DEEP + "\n")
    (tmp_path / "run.yaml").write_text(
        "model: {name: tiny-random-llama}\n"
        "data: {train: deep.jsonl}\n"
        "rewards: [{name: eq, function: countdown.equation}]\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "countdown", "--n", "3", "--exclude", "deep.json"], "deep.json:1: "),
        (["train", "run.yaml"], "deep.jsonl:2: "),
        (["train", "deep.yaml"], "deep.yaml: the YAML is nested too deeply"),
    ],
)
def test_deeply_nested_input_files_exit_2_with_one_line(files: Path, args: list[str], expected: str) -> None:
    result = run_cli(*args, cwd=files)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_server_offers_the_model_dir_allow_list() -> None:
    shown = CliRunner().invoke(app, ["server", "--help"], terminal_width=200)
    assert shown.exit_code == 0 and "--allow-model-dir" in shown.stdout
