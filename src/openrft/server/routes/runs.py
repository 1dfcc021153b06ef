"""/v1/runs: what a job's run directory holds: metrics, per-reward curves, samples by step.

A run's id is its job's id. Everything is read from the run directory (see `openrft.server.runs`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from openrft.server import services
from openrft.server.deps import Ctx, CurrentCaller
from openrft.server.routes.jobs import public_job
from openrft.server.runs import curves, read_metrics, sample_page

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.get("")
def list_runs(
    ctx: Ctx, caller: CurrentCaller, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> dict[str, Any]:
    """The caller's runs (one per job; the admin: everyone's), newest first, with status, step and
    latest reward."""
    return {"data": [public_job(j) for j in ctx.store.list_jobs(None, limit, caller.sees)]}


@router.get("/{run_id}/metrics")
def run_metrics(
    run_id: str,
    ctx: Ctx,
    caller: CurrentCaller,
    since: Annotated[int, Query(ge=0, description="Only steps after this one.")] = 0,
) -> dict[str, Any]:
    """Metric rows (one per step, TRL names) after `since`, plus the job's status."""
    job = services.require_job(ctx.store, caller, run_id)
    return {"status": job["status"], "data": read_metrics(job["run_dir"], since)}


@router.get("/{run_id}/curves")
def run_curves(run_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Chart series: total reward and each reward function (mean, std), KL, loss, length."""
    job = services.require_job(ctx.store, caller, run_id)
    return {"status": job["status"], **curves(read_metrics(job["run_dir"]))}


@router.get("/{run_id}/steps")
def run_sample_steps(run_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Steps that have logged samples, with how many samples each."""
    job = services.require_job(ctx.store, caller, run_id)
    steps = ctx.samples.steps(job["run_dir"])
    return {"data": [{"step": s, "samples": n} for s, n in steps.items()]}


@router.get("/{run_id}/samples")
def run_samples(
    run_id: str,
    ctx: Ctx,
    caller: CurrentCaller,
    step: Annotated[int | None, Query(description="Step; default: the latest with samples.")] = None,
    group: Annotated[int | None, Query(description="Only this prompt group.")] = None,
) -> dict[str, Any]:
    """Completions of one step grouped by prompt: each with its rewards, total and advantage."""
    job = services.require_job(ctx.store, caller, run_id)
    return sample_page(ctx.samples, job["run_dir"], step, group)
