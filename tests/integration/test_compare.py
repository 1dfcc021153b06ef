"""`openrft compare` end to end on the tiny model with tiny settings: the three files, numbers
that `openrft eval` reproduces, resume without recomputing, refusals. About ten seconds."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openrft.cli.main import app
from openrft.config import load_config
from openrft.errors import ConfigError
from openrft.evaluation.compare import compare


def write_setup(tmp: Path) -> Path:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(3)) for _ in range(40)]
    rows = [{"prompt": f"say {w}", "completion": w.upper(), "answer": w.upper()} for w in words]
    (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp / "cmp.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            model: {name: tiny-random-llama, dtype: float32, threads: 1}
            lora: {r: 4, alpha: 8}
            data: {train: rows.jsonl, eval_fraction: 0.5}
            rewards:
              - {name: exact, function: exact_match}
              - {name: upper, function: regex, kwargs: {pattern: '^[A-Z]+$', mode: fullmatch}}
            success_reward: exact
            sft: {batch_size: 4}
            grpo: {num_generations: 4, prompts_per_step: 2, max_new_tokens: 6}
            optim: {lr: 0.02, micro_batch_size: 8}
            eval: {max_new_tokens: 6, max_rows: 5}
            max_steps: 2
            save_every: 0
            compare: {train_sizes: [4], eval_rows: 12, sft_overrides: {optim.lr: 0.05}}
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("compare")
    setup = write_setup(tmp)
    out = tmp / "out"
    result = CliRunner().invoke(app, ["compare", str(setup), "--train-sizes", "4", "--output", str(out)])
    return setup, out, result.output


def test_writes_report_md_json_and_plot(done: tuple[Path, Path, str]) -> None:
    _, out, output = done
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    cells = [(r["method"], r["train_size"]) for r in report["results"]]
    assert cells == [("base", None), ("sft", 4), ("rft", 4), ("sft_rft", 4)]
    assert report["eval"]["rows"] == 12  # compare.eval_rows, not eval.max_rows
    for r in report["results"]:
        assert r["n"] == 12
        lo, hi = r["accuracy_ci95"]
        assert lo <= r["accuracy"] <= hi
        assert set(r["rewards"]) == {"exact", "upper"}
        for v in r["rewards"].values():
            assert v["ci95"][0] <= v["mean"] <= v["ci95"][1]
        assert r["eval_time_s"] > 0
        assert (r["train_time_s"] > 0) == (r["method"] != "base")
    # equal budgets: 2 GRPO steps x (2 prompts x 4 samples) = 16 sequences for every method
    b = report["budget"]
    assert (b["sequences"], b["sft"], b["rft"], b["sft_rft"]) == (16, 16, 16, 16)
    assert (b["sft_steps"], b["rft_steps"], b["sft_rft_sft_steps"], b["sft_rft_rft_steps"]) == (4, 2, 2, 1)
    md = (out / "report.md").read_text()
    assert "16 training sequences" in md and "![accuracy by training size](accuracy.png)" in md
    assert report["command"] == f"openrft compare {done[0]} --train-sizes 4 --output {out}"
    assert report["command"] in md
    assert "n=4 sft: accuracy" in output


def test_cells_train_what_the_budget_says(done: tuple[Path, Path, str]) -> None:
    _, out, _ = done

    def steps(run: Path) -> int:
        return len((run / "metrics.jsonl").read_text().splitlines())

    cells = out / "cells"
    assert steps(cells / "n4-sft" / "run") == 4
    assert steps(cells / "n4-rft" / "run") == 2
    assert steps(cells / "n4-sft_rft" / "run" / "stages" / "sft") == 2
    assert steps(cells / "n4-sft_rft" / "run" / "stages" / "rft") == 1
    sft_cfg = json.loads((cells / "n4-sft" / "run" / "config.json").read_text())
    assert sft_cfg["optim"]["lr"] == 0.05  # compare.sft_overrides
    assert len((out / "data" / "train-4.jsonl").read_text().splitlines()) == 4
    train_rows = set((out / "data" / "train-4.jsonl").read_text().splitlines())
    assert not train_rows & set((out / "data" / "eval.jsonl").read_text().splitlines())


def test_openrft_eval_reproduces_the_numbers(done: tuple[Path, Path, str]) -> None:
    _, out, _ = done
    report = json.loads((out / "report.json").read_text())
    for r in report["results"]:
        args = r["eval_command"].split()[1:]  # drop "openrft"
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output[result.output.index("{") :])
        assert summary["accuracy"] == r["accuracy"]
        assert summary["accuracy_ci95"] == r["accuracy_ci95"]
        assert summary["rewards/upper/mean"] == pytest.approx(r["rewards"]["upper"]["mean"])


def test_rerun_reuses_finished_cells(done: tuple[Path, Path, str]) -> None:
    setup, out, _ = done
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    (out / "cells" / "n4-rft" / "result.json").unlink()
    report = compare(load_config(setup), output=out, train_sizes=[4])
    for p, t in stamps.items():
        if p.parent.name != "n4-rft":
            assert p.stat().st_mtime_ns == t, p  # not recomputed
    assert (out / "cells" / "n4-rft" / "result.json").is_file()
    # the rft training had finished: it was resumed (nothing to do), not trained again
    assert len((out / "cells" / "n4-rft" / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert [r["method"] for r in report["results"]] == ["base", "sft", "rft", "sft_rft"]


def test_a_changed_config_is_refused(done: tuple[Path, Path, str]) -> None:
    setup, out, _ = done
    with pytest.raises(ConfigError, match="different config"):
        compare(load_config(setup, ["optim.lr=0.5"]), output=out)


def test_too_few_held_out_rows_is_refused(tmp_path: Path) -> None:
    setup = write_setup(tmp_path)
    with pytest.raises(ConfigError, match=r"compare\.eval_rows=200 held-out rows but the config has 20"):
        compare(load_config(setup, ["compare.eval_rows=200"]), output=tmp_path / "out")
