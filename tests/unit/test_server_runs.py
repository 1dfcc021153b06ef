"""Reading run directories for the API (metrics, curves, sample index) and the optional sinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from openrft.server.runs import SampleIndex, curves, group_samples, last_metrics, read_metrics
from openrft.tracking.run_dir import RunDir
from openrft.tracking.sinks import available, flatten, make_sinks, numeric


def _sample(step: int, group: int, adv: float) -> dict:
    return {"step": step, "group": group, "prompt": f"p{group}", "completion": "c", "rewards": {"a": 1.0},
            "reward": 1.0, "advantage": adv, "length": 3, "truncated": False}  # fmt: skip


def test_metrics_and_curves(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.log_metrics({"step": 1, "reward": 0.5, "reward_std": 0.1, "rewards/a/mean": 0.5, "rewards/a/std": 0.2,
                     "kl": 0.0, "loss": 1.0, "completions/mean_length": 9})  # fmt: skip
    run.log_metrics({"step": 2, "reward": float("nan"), "rewards/a/mean": 0.7, "rewards/b/mean": 1.0})
    with run.metrics_file.open("a") as f:
        f.write('{"step": 3, "rew')  # torn last line: being written
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]
    assert [m["step"] for m in read_metrics(tmp_path, since=1)] == [2]
    c = curves(read_metrics(tmp_path))
    assert c["step"] == [1, 2]
    assert c["reward"] == {"mean": [0.5, None], "std": [0.1, None]}
    assert list(c["rewards"]) == ["a", "b"]
    assert c["rewards"]["b"]["mean"] == [None, 1.0]
    assert c["length"] == [9, None] and c["loss"] == [1.0, None]
    assert last_metrics(tmp_path)["step"] == 2
    assert last_metrics(tmp_path / "nothing") is None


def test_sample_index_grows_and_survives_a_rewrite(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    index = SampleIndex()
    assert index.steps(tmp_path) == {}
    run.log_samples([_sample(1, 0, 1.0), _sample(1, 0, -1.0), _sample(1, 1, 0.0)])
    assert index.steps(tmp_path) == {1: 3}
    run.log_samples([_sample(2, 0, 0.5)] * 2)
    assert index.steps(tmp_path) == {1: 3, 2: 2}
    groups = group_samples(index.samples(tmp_path, 1))
    assert [g["group"] for g in groups] == [0, 1]
    assert [c["advantage"] for c in groups[0]["completions"]] == [1.0, -1.0]
    # a resume truncates the file after its checkpoint (a new inode) and re-runs step 2
    run.truncate_after(1)
    run.log_samples([_sample(2, 0, -0.25)])
    assert index.steps(tmp_path) == {1: 3, 2: 1}
    assert [s["advantage"] for s in index.samples(tmp_path, 2)] == [-0.25]
    assert index.samples(tmp_path, 7) == []


def test_sample_index_waits_for_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    line = json.dumps(_sample(1, 0, 0.0))
    path.write_text(line + "\n" + line[:10])
    index = SampleIndex()
    assert index.steps(tmp_path) == {1: 1}
    with path.open("a") as f:
        f.write(line[10:] + "\n")
        f.flush()
        os.fsync(f.fileno())
    assert index.steps(tmp_path) == {1: 2}


def test_sinks_helpers_and_missing_packages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert numeric({"step": 3, "reward": 0.5, "x": None, "y": float("nan"), "ok": True, "n": 2}) == {
        "reward": 0.5,
        "n": 2.0,
    }
    assert flatten({"grpo": {"beta": 0.0}, "seed": 1}) == {"grpo.beta": "0.0", "seed": "1"}
    with pytest.raises(ValueError, match="unknown tracker"):
        make_sinks(["wandb"], tmp_path)
    missing = [n for n in ("tensorboard", "mlflow") if not available(n)]
    assert make_sinks(missing, tmp_path) == []
    err = capsys.readouterr().err
    for name in missing:
        assert f"tracker {name!r} skipped: `pip install {name}`" in err


@pytest.mark.skipif(not available("tensorboard"), reason="tensorboard is not installed (optional)")
def test_tensorboard_sink_writes_events(tmp_path: Path) -> None:
    (sink,) = make_sinks(["tensorboard"], tmp_path)
    sink.log({"step": 1, "reward": 0.5}, 1)
    sink.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
