"""Health check, models, and the dashboard (static files + the plotly.js that the `plotly` package ships)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from openrft import __version__
from openrft.server.deps import Ctx

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

public = APIRouter(tags=["meta"])
private = APIRouter(tags=["meta"])


def plotly_js_path() -> Path | None:
    """plotly.min.js inside the installed `plotly` Python package, or None if it is not installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@public.get("/health")
def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness (no key needed)."""
    return {"status": "ok", "version": __version__, "worker": ctx.worker is not None}


@public.get("/", include_in_schema=False)
def dashboard() -> FileResponse:
    """The dashboard page (it asks for the API key and keeps it in the browser)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@public.get("/static/plotly.min.js", include_in_schema=False)
def plotly_js() -> Any:
    path = plotly_js_path()
    if path is None:
        return JSONResponse(
            {"error": {"message": "the `plotly` package is not installed: pip install plotly"}},
            status_code=404,
        )
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@private.get("/v1/models")
async def models() -> dict[str, Any]:
    """Known base models and the ones provisioned on this server."""
    from openrft.models import list_models

    rows = await run_in_threadpool(list_models)
    return {"data": [{k: v for k, v in row.items() if k != "path"} for row in rows]}
