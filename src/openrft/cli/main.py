"""`openrft` command line. Commands are thin: they parse options and call library functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from openrft.cli import err_console, run_app
from openrft.cli.models import app as models_app
from openrft.cli.rewards import app as rewards_app
from openrft.cli.server import app as server_app
from openrft.errors import UserError
from openrft.fsutil import write_atomic

app = typer.Typer(
    help="OpenRFT: reinforcement fine-tuning (GRPO) of LoRA adapters from a handful of prompts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: dotted.key=value (repeatable)."),
]


@app.command()
def train(
    config: ConfigArg,
    overrides: SetOpt = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last complete checkpoint.")
    ] = False,
) -> None:
    """Train as the config says (GRPO, SFT, DPO or chained stages) with a live progress bar."""
    from openrft.config import load_config
    from openrft.engine.loop import TrainingStopped
    from openrft.engine.train import final_artifact
    from openrft.engine.train import train as run_training
    from openrft.tracking.progress import RichReporter

    cfg = load_config(config, overrides or [])
    try:  # the first Ctrl-C / SIGTERM finishes the step and checkpoints (engine.loop)
        run = run_training(cfg, output_dir=output_dir, resume=resume, reporter=RichReporter(err_console))
    except TrainingStopped as e:
        err_console.print(f"[yellow]{e}[/]", soft_wrap=True)
        raise typer.Exit(130) from None
    err_console.print(f"[green]done:[/] {final_artifact(run)}")


@app.command("eval")
def eval_(
    config: ConfigArg,
    overrides: SetOpt = None,
    adapter: Annotated[Path | None, typer.Option(help="Adapter directory; omit for the base model.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Rows to evaluate; default: the config's held-out rows.")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Completions per row (K for pass@K).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the full report (JSON) here.")] = None,
) -> None:
    """Evaluate the base model or an adapter: each reward's mean, accuracy, pass@K."""
    from openrft.config import load_config
    from openrft.evaluation.evaluate import evaluate, write_report
    from openrft.tracking.progress import RichReporter

    cfg = load_config(config, overrides or [])
    report = evaluate(
        cfg,
        adapter=adapter,
        data=str(data) if data else None,
        samples=samples,
        reporter=RichReporter(err_console),
    )
    if output:
        write_report(report, output)
    summary = {k: v for k, v in report.items() if k != "details"}
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def compare(
    config: ConfigArg,
    overrides: SetOpt = None,
    train_sizes: Annotated[
        str | None, typer.Option("--train-sizes", help="Training rows per cell, e.g. 12,100.")
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Methods to train, from sft,rft,sft_rft (default: all).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the report and runs.")] = Path(
        "runs/compare"
    ),
) -> None:
    """Base vs SFT vs RFT vs SFT-then-RFT at several training sizes, equal budgets, same held-out
    rows: writes report.md, report.json and accuracy.png. Rerun to resume."""
    import shlex

    from openrft.config import load_config
    from openrft.evaluation.compare import compare as run_compare
    from openrft.tracking.progress import RichReporter

    cfg = load_config(config, overrides or [])
    sizes = None
    if train_sizes:
        try:
            sizes = [int(x) for x in train_sizes.split(",") if x.strip()]
        except ValueError:
            raise UserError(
                f"--train-sizes {train_sizes!r}: write whole numbers separated by commas, e.g. 12,100"
            ) from None
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    words = ["openrft", "compare", str(config)]
    words += ["--train-sizes", train_sizes] if train_sizes else []
    words += ["--methods", methods] if methods else []
    words += ["--output", str(output)]
    for item in overrides or []:
        words += ["--set", item]
    command = shlex.join(words)
    report = run_compare(
        cfg,
        output=output,
        train_sizes=sizes,
        methods=chosen,
        reporter=RichReporter(err_console),
        command=command,
    )
    for r in report["results"]:
        size = "" if r["train_size"] is None else f"n={r['train_size']} "
        lo, hi = r["accuracy_ci95"] or (None, None)
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        typer.echo(f"{size}{r['method']}: accuracy {r['accuracy']:.3f}{ci}")
    err_console.print(f"[green]done:[/] {output / 'report.md'}")


data_app = typer.Typer(help="Datasets: generate task data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("countdown")
def data_countdown(
    n: Annotated[int, typer.Option(help="Rows to write.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output .jsonl file.")] = Path("countdown.jsonl"),
    num_count: Annotated[int, typer.Option(help="Numbers per puzzle.")] = 3,
    min_num: Annotated[int, typer.Option()] = 1,
    max_num: Annotated[int, typer.Option()] = 99,
    min_target: Annotated[int, typer.Option()] = 1,
    max_target: Annotated[int, typer.Option()] = 100,
    exclude: Annotated[
        Path | None, typer.Option(help="Leave out puzzles present in this .jsonl (for a disjoint eval set).")
    ] = None,
) -> None:
    """Write a Countdown dataset (columns `nums` and `target`; every row solvable)."""
    from openrft.data import load_rows
    from openrft.tasks import countdown

    seen = {(tuple(sorted(r["nums"])), r["target"]) for r in load_rows(exclude)} if exclude else set()
    try:
        rows = countdown.generate(
            n + len(seen),
            num_count=num_count,
            min_num=min_num,
            max_num=max_num,
            min_target=min_target,
            max_target=max_target,
            seed=seed,
        )
    except ValueError as e:
        raise UserError(f"countdown: {e}") from None
    rows = [r for r in rows if (tuple(sorted(r["nums"])), r["target"]) not in seen][:n]
    write_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    typer.echo(f"wrote {len(rows)} rows to {out}")


app.add_typer(models_app, name="models")
app.add_typer(rewards_app, name="rewards")
app.add_typer(server_app, name="server")


def main() -> None:
    """Console entry point (see `run_app`)."""
    run_app(app)


if __name__ == "__main__":  # pragma: no cover
    main()
