"""Live reward updates: version comparison (hand values), request files, stored-sample reading."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from openrft.errors import ConfigError, RewardError
from openrft.rewards import live


def test_docstring_examples() -> None:
    result = doctest.testmod(live)
    assert result.attempted >= 3 and result.failed == 0


def test_compare_versions_hand_values() -> None:
    old = [0.0, 1.0, 0.0, 0.0, 1.0, 0.5, None, 1.0]
    new = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    keys = ["a", "a", "b", "b", "c", "c", "d", "d"]
    # other functions add 1.0 to every total; weight 2
    totals = [1 + 2 * v if v is not None else 1.0 for v in old]
    r = live.compare_versions(old, new, keys, totals, 2.0)
    assert r["n"] == 8 and r["groups"] == 4
    assert r["mean_old"] == pytest.approx(3.5 / 7) and r["mean_new"] == pytest.approx(4 / 8)
    # a: reversed (-1); c: (1, .5) vs (1, 0) same order (+1); b flat both; d: old has one value
    assert r["spearman_mean"] == pytest.approx(0.0) and r["groups_compared"] == 2
    assert r["groups_gaining_signal"] == 0 and r["groups_losing_signal"] == 0
    # advantages: a flips both (2), b stays 0, c: old (+.5,-.5) new (+1,-1) same signs,
    # d: old totals (1, 3) -> (-,+); new (3, 3) -> (0, 0): 2 changes
    assert r["advantage_sign_changes"] == pytest.approx(4 / 8)
    assert r["changed"] == pytest.approx(4 / 8)  # a(2), c second, d first (None -> 1)


def test_parse_assignments() -> None:
    assert live.parse_assignments(["a=x.py:f", "b = pkg.mod:g"]) == {"a": "x.py:f", "b": "pkg.mod:g"}
    for bad in (["a"], ["=x.py:f"], ["a="], []):
        with pytest.raises(ConfigError):
            live.parse_assignments(bad)
    with pytest.raises(ConfigError, match="given twice"):
        live.parse_assignments(["a=x.py:f", "a=y.py:f"])


def make_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"rewards": [{"name": "acc", "function": "/abs/r.py:acc", "kwargs": {}}]}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def test_request_update_validates_and_writes_atomically(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (tmp_path / "v2.py").write_text("def acc(prompt, completion, example):\n    return 1.0\n")
    path = live.request_update(run, {"acc": "v2.py:acc"}, cwd=tmp_path)
    assert path.parent == run / "reward_updates" and path.suffix == ".json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    req = json.loads(path.read_text())
    assert req["updates"][0]["function"] == f"{tmp_path / 'v2.py'}:acc"
    assert len(req["updates"][0]["sha256"]) == 64
    with pytest.raises(ConfigError, match="no reward named 'nope'"):
        live.request_update(run, {"nope": "v2.py:acc"}, cwd=tmp_path)
    with pytest.raises(RewardError, match="no top-level function 'missing'"):
        live.request_update(run, {"acc": "v2.py:missing"}, cwd=tmp_path)
    with pytest.raises(RewardError, match="file not found"):
        live.request_update(run, {"acc": "nothere.py:acc"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="not a run directory"):
        live.request_update(tmp_path, {"acc": "v2.py:acc"}, cwd=tmp_path)


def test_recent_samples_takes_the_last_steps_in_whole_groups(tmp_path: Path) -> None:
    rows = [
        {"step": s, "group": g, "completion": f"{s}-{g}-{i}"}
        for s in (1, 2, 3, 4)
        for g in (0, 1)
        for i in (0, 1)
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    got = live.recent_samples(tmp_path, before_step=4, steps=2)
    assert [r["step"] for r in got] == [2] * 4 + [3] * 4
    got = live.recent_samples(tmp_path, before_step=5, steps=3, limit=6)
    assert [(r["step"], r["group"]) for r in got] == [
        (3, 0),
        (3, 0),
        (3, 1),
        (3, 1),
        (4, 0),
        (4, 0),
        (4, 1),
        (4, 1),
    ][2:]
    assert live.recent_samples(tmp_path / "none", before_step=3) == []
