"""The app factory: `create_app(settings)` builds a FastAPI app; nothing is built at import time.

    from openrft.server import ServerSettings, create_app
    app = create_app(ServerSettings(data_dir="openrft-data"))   # then: uvicorn.run(app)

On startup (lifespan) the store is initialised, the admin API key loaded (or generated), and the job
worker started: it first re-queues jobs that a previous server left running, then runs queued
ones. On shutdown, running jobs are stopped and re-queued; the next start resumes them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from openrft import __version__
from openrft.errors import UserError
from openrft.jobs.worker import JobWorker
from openrft.rewards import jail
from openrft.server import accounts, services
from openrft.server.auth import AuthMiddleware, load_or_create_key
from openrft.server.deps import AppContext, documented_auth
from openrft.server.limits import BodyLimitMiddleware, HeaderLimitMiddleware
from openrft.server.policy import RewardCodeRefused, RewardPolicy
from openrft.server.routes import adapters, datasets, jobs, keys, meta, rewards, runs
from openrft.server.routes import local_runs as local_runs_routes
from openrft.server.runs import SampleIndex
from openrft.server.settings import ServerSettings
from openrft.server.store import Store

log = logging.getLogger("openrft.server")

UPLOAD_PATHS = ("/v1/datasets",)


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}, "detail": message}, status_code=status
    )


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the OpenRFT server app for `settings` (store in `settings.data_dir`)."""
    settings = settings or ServerSettings()
    store = Store(settings.data_dir).init()
    key, key_source = load_or_create_key(store.root, settings.api_key)
    ctx = AppContext(settings=settings, store=store, samples=SampleIndex())

    policy = RewardPolicy.from_settings(settings)
    if jail.available() is not None:
        log.warning(
            "reward sandbox unavailable (%s): %s",
            jail.available(),
            "tenants' reward code runs with weaker isolation (--trust-reward-code)"
            if settings.trust_reward_code
            else "submitted reward code is refused (install bubblewrap, or start with --trust-reward-code)",
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.max_concurrent_jobs > 0:
            worker = JobWorker(
                store,
                max_concurrent=settings.max_concurrent_jobs,
                poll_interval_s=settings.poll_interval_s,
                stop_grace_s=settings.cancel_grace_s,
                max_attempts=settings.max_attempts,
                env=settings.job_env,
                reward_env=settings.allow_reward_env,
                network=policy.network,
                reward_isolation=policy.isolation,
            )
            await run_in_threadpool(worker.start)
            ctx.worker = worker
        try:
            yield
        finally:
            if ctx.worker is not None:
                await run_in_threadpool(ctx.worker.stop)
                ctx.worker = None

    app = FastAPI(
        title="OpenRFT",
        version=__version__,
        description="Reinforcement fine-tuning platform: datasets, reward functions, jobs, runs, adapters. "
        "Every route except /health, the docs and the dashboard needs `Authorization: Bearer <key>`: "
        "a user's key sees that user's resources, the admin key everyone's (and manages keys at /v1/keys).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.api_key_source = key_source
    app.state.api_key = key

    app.include_router(meta.public)
    auth = [Depends(documented_auth)]
    for module in (datasets, rewards, jobs, runs, adapters, keys):
        app.include_router(module.router, dependencies=auth)
    app.include_router(local_runs_routes.router, dependencies=auth)
    app.include_router(meta.private, dependencies=auth)
    app.mount("/static", StaticFiles(directory=meta.STATIC_DIR), name="static")

    def one_line(message: str) -> str:
        """A message as the client sees it: one line, data-dir paths relative to the data dir."""
        return services.relativise(" ".join(message.split()), store.root)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        if isinstance(exc, services.NotFound):
            return _error(404, one_line(str(exc)), code="not_found")
        if isinstance(exc, services.Conflict):
            return _error(409, one_line(str(exc)), code="conflict")
        if isinstance(exc, RewardCodeRefused):
            return _error(403, one_line(str(exc)), code="reward_code_refused")
        return _error(422, one_line(str(exc)), code=type(exc).__name__)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, one_line(str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return _error(422, one_line(message), code="validation_error")

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        message = "the request holds values nested too deeply; send flatter JSON"
        return _error(422, message, code="nested_too_deeply")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback is logged by the server (uvicorn); the client gets no detail.
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        message = "internal server error; the server log has the details"
        return _error(500, message, kind="server_error", code="server_error")

    def limit_for(path: str) -> int:
        return settings.max_upload_bytes if path in UPLOAD_PATHS else settings.max_body_bytes

    def resolve(token: str | None) -> accounts.Caller | None:
        return accounts.resolve(store, key, token)

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(AuthMiddleware, resolve=resolve)
    app.add_middleware(HeaderLimitMiddleware)  # added last = outermost: runs first
    return app
