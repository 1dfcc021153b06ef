"""/v1/adapters: the LoRA adapters of finished jobs (id = the job id): list, files, download, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from openrft.server import services
from openrft.server.deps import Ctx, CurrentCaller

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("")
def list_adapters(ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """Every job of the caller that has a final adapter, newest first."""
    return {"data": services.list_adapters(ctx.store, caller)}


@router.get("/{adapter_id}")
def get_adapter(adapter_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """An adapter's files with their sizes and sha256 sums."""
    info = services.adapter_info(services.require_job(ctx.store, caller, adapter_id))
    if info is None:
        raise services.NotFound(f"job {adapter_id} has no adapter (yet)")
    return info


@router.get("/{adapter_id}/files/{filename}")
def download_adapter_file(adapter_id: str, filename: str, ctx: Ctx, caller: CurrentCaller) -> FileResponse:
    """One file of the adapter (PEFT format: adapter_config.json, adapter_model.safetensors), or of
    the whole model a full fine-tuning wrote."""
    job = services.require_job(ctx.store, caller, adapter_id)
    folder = services.artifact_dir(job["run_dir"])
    path = folder / filename if folder is not None else None
    if Path(filename).name != filename or path is None or not path.is_file():
        raise services.NotFound(f"adapter {adapter_id} has no file {filename!r}")
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.delete("/{adapter_id}")
def delete_adapter(adapter_id: str, ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    services.delete_adapter(ctx.store, caller, adapter_id)
    return {"id": adapter_id, "deleted": True}
