"""/v1/jobs: create from a config, list, get, cancel, pause, resume, logs, events, and the report
files of a comparison job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from openrft.jobs import queue
from openrft.server import services
from openrft.server.deps import Ctx, CurrentCaller
from openrft.server.policy import RewardPolicy
from openrft.server.runs import last_metrics

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobCreate(BaseModel):
    """A job: a run config (as in YAML) whose data and rewards name stored resources."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(
        description="RunConfig; data.train = a dataset id, rewards[].function = a built-in name or "
        "'reward:<name>[@version]'."
    )
    kind: Literal["train", "compare"] = Field(
        "train",
        description="train: train as the config says (GRPO, SFT, DPO or stages), like `openrft train`; "
        "compare: base vs SFT vs RFT vs SFT-then-RFT as its `compare` section says, like `openrft "
        "compare` (the report files at /v1/jobs/{id}/reports).",
    )
    name: str | None = Field(None, description="A label shown in lists and the dashboard.")
    trackers: list[str] = Field(default_factory=list, description="Extra metric sinks: tensorboard, mlflow.")


@router.post("", status_code=201)
async def create_job(body: JobCreate, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Validate the config (data rows, reward functions) and queue the job."""
    policy = RewardPolicy.from_settings(ctx.settings)
    job = await run_in_threadpool(
        services.create_job,
        ctx.store,
        caller,
        body.config,
        body.name,
        body.trackers,
        ctx.settings.allowed_model_dirs,
        policy,
        body.kind,
    )
    ctx.wake_worker()
    return public_job(job)


@router.get("")
def list_jobs(
    ctx: Ctx,
    caller: CurrentCaller,
    status: Annotated[str | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> dict[str, Any]:
    """The caller's jobs (the admin: everyone's), newest first, each with its latest step and reward."""
    return {"data": [public_job(j) for j in ctx.store.list_jobs(status, limit, caller.sees)]}


@router.get("/{job_id}")
def get_job(job_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    return public_job(services.require_job(ctx.store, caller, job_id), with_config=True)


def _act(ctx: Ctx, caller: CurrentCaller, job_id: str, action: str) -> dict[str, Any]:
    services.require_job(ctx.store, caller, job_id)
    try:
        job = queue.request(ctx.store, job_id, action)
    except ValueError as e:
        raise services.Conflict(str(e)) from None
    ctx.wake_worker()
    assert job is not None
    return public_job(job)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Cancel: a queued or paused job at once; a running one's process is stopped within seconds."""
    return _act(ctx, caller, job_id, "cancel")


@router.post("/{job_id}/pause")
def pause_job(job_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Pause: the process stops; `resume` continues from the last complete checkpoint."""
    return _act(ctx, caller, job_id, "pause")


@router.post("/{job_id}/resume")
def resume_job(job_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Put a paused job, or a failed one that wrote a checkpoint, back in the queue: it continues
    from its last complete checkpoint."""
    return _act(ctx, caller, job_id, "resume")


@router.get("/{job_id}/logs")
def job_logs(
    job_id: str,
    ctx: Ctx,
    caller: CurrentCaller,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Byte offset to read from.")] = 0,
    limit: Annotated[int, Query(ge=1, le=4 * 1024**2)] = 256 * 1024,
) -> dict[str, Any]:
    """The training process's output (all attempts), from `offset`; `next_offset` continues it."""
    job = services.require_job(ctx.store, caller, job_id)
    path = queue.job_log_path(job["run_dir"])
    if not path.is_file():
        return {"text": "", "offset": offset, "next_offset": offset}
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(limit)
    text = services.relativise(data.decode("utf-8", "replace"), ctx.store.root)
    return {"text": text, "offset": offset, "next_offset": offset + len(data)}


@router.get("/{job_id}/events")
def job_events(job_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """State changes of a job (queued, claimed, started, retry, recovered, succeeded, ...)."""
    services.require_job(ctx.store, caller, job_id)
    return {"data": services.relativise(ctx.store.job_events(job_id), ctx.store.root)}


@router.get("/{job_id}/reports")
def list_reports(job_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """The report files a comparison job has written (report.md, report.json, accuracy.png; the
    last two once it has finished)."""
    return {"data": services.list_reports(ctx.store, caller, job_id)}


@router.get("/{job_id}/reports/{filename}")
def get_report(job_id: str, filename: str, ctx: Ctx, caller: CurrentCaller) -> Response:
    """One report file of a comparison job (text files with data-dir paths made relative)."""
    content, media_type = services.report_file(ctx.store, caller, job_id, filename)
    disposition = f'attachment; filename="{filename}"'
    return Response(content, media_type=media_type, headers={"Content-Disposition": disposition})


def public_job(job: dict[str, Any], *, with_config: bool = False) -> dict[str, Any]:
    keep = (
        *("id", "name", "status", "method", "base_model", "dataset_id", "attempts", "requested", "error"),
        *("owner", "trackers", "created_at", "started_at", "finished_at", "updated_at", "heartbeat"),
    )
    out = {k: job.get(k) for k in keep}
    out["kind"] = queue.job_kind(job)
    last, out["step"], out["max_steps"] = progress(job)
    out["reward"] = last.get("reward")
    out["has_adapter"] = services.artifact_dir(job["run_dir"]) is not None
    if with_config:
        out["config"] = job["config"]
    return services.relativise(out, Path(job["run_dir"]).parents[1])  # run_dir = <data dir>/runs/<id>


def progress(job: dict[str, Any]) -> tuple[dict[str, Any], int, int | None]:
    """(latest metrics row, steps done, steps in all) of a job; a chained config's steps are
    counted over its stages, each of which logs into `stages/<name>/`."""
    config, run_dir = job["config"], Path(job["run_dir"])
    stages = config.get("stages") or []
    if not stages:
        last = last_metrics(run_dir) or {}
        return last, int(last.get("step", 0)), config.get("max_steps")
    latest: dict[str, Any] = {}
    done = total = 0
    for stage in stages:
        steps = stage.get("overrides", {}).get("max_steps") or stage.get("max_steps") or config["max_steps"]
        row = last_metrics(run_dir / "stages" / str(stage["name"]))
        if row:
            latest, done = row, done + int(row.get("step", 0))
        total += int(steps)
    return latest, done, total
