"""/v1/datasets: upload (raw body, size-capped, validated, stored by sha256), list, get, preview, delete."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from openrft.server import services
from openrft.server.deps import Ctx, CurrentCaller

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201)
async def upload_dataset(
    request: Request,
    ctx: Ctx,
    caller: CurrentCaller,
    filename: Annotated[str, Query(description="Original file name; its extension picks the format.")],
) -> dict[str, Any]:
    """Upload a dataset file as the raw request body (`Content-Type: application/octet-stream`).

    The body is streamed to disk while hashed; it is parsed and every row checked before it is
    stored as `datasets/<sha256>.<ext>`. Uploading the same bytes again returns the same dataset.
    Over the size cap: 413, without the body being read.
    """
    services.upload_name(filename)
    folder = ctx.store.tmp_dir / secrets.token_hex(8)
    folder.mkdir(parents=True)
    tmp = folder / "upload"
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as f:
            async for chunk in request.stream():
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
        saved = await run_in_threadpool(
            services.save_dataset, ctx.store, caller, tmp, filename, digest.hexdigest(), size
        )
        return _public(saved)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@router.get("")
def list_datasets(ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """The caller's datasets (the admin: everyone's), newest first."""
    return {"data": [_public(d) for d in ctx.store.list_datasets(caller.sees)]}


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    return _public(services.require_dataset(ctx.store, caller, dataset_id))


@router.get("/{dataset_id}/preview")
def preview_dataset(
    dataset_id: str, ctx: Ctx, caller: CurrentCaller, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> dict[str, Any]:
    """The first `limit` rows, as the trainer and reward functions will see them."""
    return services.preview_dataset(ctx.store, caller, dataset_id, limit)


@router.delete("/{dataset_id}")
def delete_dataset(dataset_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Delete a dataset (409 while a queued, running or paused job uses it)."""
    services.delete_dataset(ctx.store, caller, dataset_id)
    return {"id": dataset_id, "deleted": True}


def _public(ds: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ds.items() if k != "path"}
