"""`openrft models` sub-commands (pull, list, verify) on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from openrft.cli.models import app

runner = CliRunner()


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    return tmp_path


def test_pull_list_verify(fresh_home: Path) -> None:
    listed = runner.invoke(app, ["list"], terminal_width=200)
    assert listed.exit_code == 0 and "not provisioned" in listed.stdout

    pulled = runner.invoke(app, ["pull", "tiny-random-llama"])
    assert pulled.exit_code == 0, pulled.output
    path = fresh_home / "models" / "tiny-random-llama"
    assert pulled.stdout.strip().splitlines()[-1] == str(path)

    listed = runner.invoke(app, ["list"], terminal_width=200)
    row = next(line for line in listed.stdout.splitlines() if "tiny-random-llama" in line)
    assert "provisioned" in row and "not provisioned" not in row and "KB" in row

    ok = runner.invoke(app, ["verify", "tiny-random-llama"])
    assert ok.exit_code == 0 and "all files match" in ok.stdout

    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    bad = runner.invoke(app, ["verify", str(path)])
    assert bad.exit_code == 1
    assert "model.safetensors: sha256 differs" in bad.stderr


def test_pull_force_repairs(fresh_home: Path) -> None:
    assert runner.invoke(app, ["pull", "tiny-random-llama"]).exit_code == 0
    (fresh_home / "models" / "tiny-random-llama" / "tokenizer.json").unlink()
    assert runner.invoke(app, ["verify", "tiny-random-llama"]).exit_code == 1
    assert runner.invoke(app, ["pull", "tiny-random-llama", "--force"]).exit_code == 0
    assert runner.invoke(app, ["verify", "tiny-random-llama"]).exit_code == 0
