"""/v1/local-runs: run directories that `openrft train` wrote under the server's `--runs-dir`, read-only.

The runs dir belongs to the operator, so only the admin key (which is also the single-user mode's
key) sees it; a user's key gets 404 on every route here, as if there were no local runs. A run is
named by its folder name, a stage of a chained run by `?stage=NAME` (see
`openrft.server.local_runs`). The data come from the same readers as the jobs' runs
(`openrft.server.runs`), and nothing here changes a file: there is no pause, cancel or delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from openrft.errors import NotFound
from openrft.server.deps import Ctx, CurrentCaller
from openrft.server.local_runs import LocalRuns
from openrft.server.runs import curves, read_events, read_metrics, sample_page

router = APIRouter(prefix="/v1/local-runs", tags=["local runs"])

Stage = Annotated[str | None, Query(description="A chained run's stage (its folder under stages/).")]


def local_runs(ctx: Ctx, caller: CurrentCaller) -> LocalRuns | None:
    """The runs dir for the admin (None when the server has none); NotFound for a user's key."""
    if not caller.admin:
        raise NotFound("no local runs: the server's --runs-dir is listed for the admin key only")
    return LocalRuns(ctx.settings.runs_dir) if ctx.settings.runs_dir is not None else None


Runs = Annotated[LocalRuns | None, Depends(local_runs)]


def _runs(runs: LocalRuns | None) -> LocalRuns:
    if runs is None:
        raise NotFound("no local runs: start the server with --runs-dir DIR (a folder `openrft train` wrote)")
    return runs


@router.get("")
def list_local_runs(ctx: Ctx, runs: Runs) -> dict[str, Any]:
    """Every run directory under the runs dir, the most recently changed first: name, kind (run or
    chained, with its stages), method, base model, steps done / max_steps, last reward, modified
    time and a status guessed from the files (finished, in_progress, stopped). `runs_dir` is the folder
    as the operator named it."""
    if runs is None:
        return {"runs_dir": None, "data": []}
    return {"runs_dir": str(ctx.settings.runs_dir), "data": runs.list()}


@router.get("/{run_name}")
def local_run(run_name: str, runs: Runs) -> dict[str, Any]:
    """One run's summary (as in the list)."""
    return _runs(runs).summary(run_name)


@router.get("/{run_name}/config")
def local_run_config(run_name: str, runs: Runs, stage: Stage = None) -> dict[str, Any]:
    """The config the run (or its stage) was trained with; a chained run's also has its stage record."""
    return _runs(runs).config(run_name, stage)


@router.get("/{run_name}/metrics")
def local_run_metrics(
    run_name: str,
    runs: Runs,
    stage: Stage = None,
    since: Annotated[int, Query(ge=0, description="Only steps after this one.")] = 0,
) -> dict[str, Any]:
    """Metric rows (one per step, as in metrics.jsonl) after `since`."""
    return {"data": read_metrics(_dir(runs, run_name, stage), since)}


@router.get("/{run_name}/curves")
def local_run_curves(run_name: str, runs: Runs, stage: Stage = None) -> dict[str, Any]:
    """Chart series: total reward and each reward function (mean, std), KL, loss, length, and every
    other numeric metric (eval/..., ...) under `series`."""
    return curves(read_metrics(_dir(runs, run_name, stage)))


@router.get("/{run_name}/steps")
def local_run_sample_steps(run_name: str, ctx: Ctx, runs: Runs, stage: Stage = None) -> dict[str, Any]:
    """Steps that have logged samples, with how many samples each."""
    steps = ctx.samples.steps(_dir(runs, run_name, stage))
    return {"data": [{"step": s, "samples": n} for s, n in steps.items()]}


@router.get("/{run_name}/samples")
def local_run_samples(
    run_name: str,
    ctx: Ctx,
    runs: Runs,
    stage: Stage = None,
    step: Annotated[int | None, Query(description="Step; default: the latest with samples.")] = None,
    group: Annotated[int | None, Query(description="Only this prompt group.")] = None,
) -> dict[str, Any]:
    """Completions of one step grouped by prompt: each with its rewards, total and advantage."""
    return sample_page(ctx.samples, _dir(runs, run_name, stage), step, group)


@router.get("/{run_name}/events")
def local_run_events(run_name: str, runs: Runs, stage: Stage = None) -> dict[str, Any]:
    """The run's events.jsonl rows (empty when it has none)."""
    return {"data": read_events(_dir(runs, run_name, stage))}


def _dir(runs: LocalRuns | None, name: str, stage: str | None) -> Path:
    return _runs(runs).run_dir(name, stage)
