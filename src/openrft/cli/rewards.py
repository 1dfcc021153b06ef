"""`openrft rewards ...`: golden tests, the pre-flight learnability report, live updates.

Thin wrappers: the logic lives in `openrft.rewards.golden`, `openrft.evaluation.preflight` and
`openrft.rewards.live`; this module parses options and prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Reward functions: test them on golden cases, check learnability before training, "
    "change them in a running job.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: dotted.key=value (repeatable)."),
]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, int | float) and not isinstance(x, bool) else str(x)


# ----------------------------------------------------------------------------------------------
# openrft rewards test
# ----------------------------------------------------------------------------------------------


@app.command("test")
def test(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Run each reward's golden cases (`tests:` in the config) in the isolated workers; exit 1 if
    one fails (training refuses to start then)."""
    from openrft.config import load_config
    from openrft.rewards.golden import golden_results

    cfg = load_config(config, overrides or [])
    results = golden_results(cfg.rewards, cfg.base_dir)
    if not results:
        console.print(
            "no golden cases: add `tests:` under a reward, e.g. "
            "tests: [{completion: '<answer>4</answer>', example: {answer: 4}, expected: 1.0}]"
        )
        return
    table = Table(title=f"golden tests: {config}")
    for col in ("reward", "#", "completion", "expected", "got", "result"):
        table.add_column(col, justify="right" if col in ("#", "expected", "got") else "left")
    for r in results:
        got = "error" if r.detail else _num(r.got, "g")
        verdict = "[green]pass[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(r.reward, str(r.case), _short(r.completion), _num(r.expected, "g"), got, verdict)
    console.print(table)
    failed = [r for r in results if not r.passed]
    for r in failed:
        if r.detail:
            console.print(f"[red]{r.reward} #{r.case}:[/]\n{r.detail.rstrip()}", highlight=False)
    console.print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed", style="bold red" if failed else "green"
    )
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------
# openrft rewards preflight
# ----------------------------------------------------------------------------------------------

_LEVEL = {"error": "bold red", "warn": "yellow", "info": "cyan", "ok": "green"}


def render_preflight(report: dict[str, Any], out: Console) -> None:
    """Print a preflight report: functions, total, success / group size, correlations, advice."""
    k, n = report["samples_per_prompt"], report["prompts"]
    comp = report["completions"]
    out.print(
        f"[bold]pre-flight[/]: {report['model']}{' + ' + report['adapter'] if report['adapter'] else ''}, "
        f"{n} prompts x {k} samples (temperature {report['sampling']['temperature']:g}, "
        f"max_new_tokens {report['sampling']['max_new_tokens']}), {report['time_s'].get('total', 0):.0f}s"
    )
    table = Table(title="reward functions")
    for col in ("reward", "weight", "mean", "std", "min", "max", "errors", "none", "flat", "share"):
        table.add_column(col, justify="left" if col == "reward" else "right", no_wrap=True)
    for name, st in report["functions"].items():
        table.add_row(
            name,
            _num(st["weight"], "g"),
            _num(st["mean"]),
            _num(st["std"]),
            _num(st["min"], "g"),
            _num(st["max"], "g"),
            f"[red]{st['errors']}[/]" if st["errors"] else "0",
            _num(st["none_fraction"], ".0%"),
            _num(st["zero_variance_fraction"], ".0%"),
            _num(st["variance_share"], ".0%"),
        )
    t = report["total"]
    table.add_row(
        "[bold]total[/]",
        "",
        _num(t["mean"]),
        _num(t["std"]),
        "",
        "",
        "",
        "",
        _num(t["zero_variance_fraction"], ".0%"),
        "",
    )
    out.print(table)
    out.print(
        "  [dim]flat: groups of K samples whose values are all equal (no gradient); share: part of the "
        "within-group differences of the total reward that the function drives[/]"
    )
    s = report.get("success")
    if s:
        needed = s["group_size_needed"]
        rate, pv = _num(s["rate"], ".1%"), _num(s["p_variance_at_group_size"], ".0%")
        counts = f"{s['prompts_never']} / {s['prompts_mixed']} / {s['prompts_always']}"
        out.print(
            f"[bold]success[/] ({s['reward']} >= {s['threshold']:g}): {s['successes']}/{s['samples']} "
            f"samples ({rate}); prompts never / sometimes / always solved: {counts}"
        )
        need = needed if needed is not None else "unreachable"
        out.print(
            f"  group size {s['group_size']}: P(group has a reward difference) ≈ {pv}; "
            f"needed for {s['target_p_variance']:.0%}: {need}"
        )
    corr = report["correlations"]
    if corr:
        out.print(
            "[bold]correlations[/] (Pearson over samples): "
            + ", ".join(f"{pair.replace('~', ' ~ ')} {_num(r, '+.2f')}" for pair, r in corr.items())
        )
    out.print(
        f"[bold]completions[/]: mean {_num(comp['mean_length'], '.1f')} tokens, max {comp['max_length']}, "
        f"clipped at max_new_tokens {_num(comp['clipped_ratio'], '.0%')}"
    )
    out.print("[bold]advice[/]:")
    for a in report["advice"]:
        out.print(f"  [{_LEVEL[a['level']]}]{a['level']:>5}[/] {escape(a['message'])}", highlight=False)


@app.command()
def preflight(
    config: ConfigArg,
    overrides: SetOpt = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", "-k", help="Completions per prompt (default: grpo.num_generations)."),
    ] = None,
    prompts: Annotated[int, typer.Option("--prompts", "-n", help="Training prompts to sample.")] = 16,
    adapter: Annotated[Path | None, typer.Option(help="Adapter directory; omit for the base model.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the full report (JSON) here.")
    ] = None,
) -> None:
    """Sample the model K times on N training prompts, score every reward, and report whether
    GRPO will have a learning signal: means, spread, zero-variance groups, correlations, advice."""
    from openrft.config import load_config
    from openrft.evaluation.evaluate import write_report
    from openrft.evaluation.preflight import preflight as run_preflight
    from openrft.tracking.progress import RichReporter

    cfg = load_config(config, overrides or [])
    report = run_preflight(
        cfg, samples=samples, prompts=prompts, adapter=adapter, reporter=RichReporter(err_console)
    )
    render_preflight(report, console)
    if output:
        write_report(report, output)
        console.print(f"report: {output}")


# ----------------------------------------------------------------------------------------------
# openrft rewards update
# ----------------------------------------------------------------------------------------------


def render_update(record: dict[str, Any], out: Console) -> None:
    name, status = record.get("name"), record.get("status")
    if status == "rejected":
        out.print(f"[bold red]rejected[/] {name}: {escape(str(record.get('error')))}", highlight=False)
        return
    version, step, function = record.get("version"), record.get("step"), record.get("function")
    out.print(f"[green]applied[/] {name} v{version} at step {step}: {function}")
    rs = record.get("rescore")
    if not rs:
        out.print("  (no stored completions to re-score yet)")
        return
    means = f"{_num(rs['mean_old'])} -> {_num(rs['mean_new'])}"
    rho = _num(rs["spearman_mean"], "+.2f")
    signal = f"{rs['groups_gaining_signal']} / {rs['groups_losing_signal']}"
    flips = _num(rs["advantage_sign_changes"], ".0%")
    out.print(
        f"  re-scored {rs['n']} completions of steps {rs['steps']}: mean {means}; rank agreement within "
        f"groups (Spearman) {rho} over {rs['groups_compared']} groups; groups gaining / losing signal "
        f"{signal}; advantage sign changes {flips}; new-version errors {rs['errors_new']}"
    )
    if not rs.get("examples_stored"):
        out.print(
            "  [yellow]note:[/] samples.jsonl holds no dataset rows; the re-score passed empty examples"
        )


@app.command()
def update(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a running job.", show_default=False)],
    functions: Annotated[
        list[str],
        typer.Argument(help="NAME=path/file.py:function (NAME: a reward of the run).", show_default=False),
    ],
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the job to apply it and print the re-score (0: don't).")
    ] = 0.0,
) -> None:
    """Ask a running job to switch reward functions at its next step. Before switching, the job
    re-scores its last steps' completions with the new version; the outcome goes to
    RUN_DIR/reward_versions.jsonl (and the metric rewards/NAME/version)."""
    from openrft.rewards.live import parse_assignments, request_update, wait_for_outcome

    path = request_update(run_dir, parse_assignments(functions))
    console.print(f"requested: {path} (applied at the job's next step)")
    if wait > 0:
        records = wait_for_outcome(run_dir, path, wait)
        if not records:
            console.print(f"[yellow]not applied within {wait:g}s[/] (is the job running?)")
            raise typer.Exit(1)
        for record in records:
            render_update(record, console)
        if any(r.get("status") == "rejected" for r in records):
            raise typer.Exit(1)
