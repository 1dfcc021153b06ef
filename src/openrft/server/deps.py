"""Shared state of one app (built by `create_app`) and the FastAPI dependencies that reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from openrft.jobs.worker import JobWorker
from openrft.server.runs import SampleIndex
from openrft.server.settings import ServerSettings
from openrft.server.store import Store


@dataclass
class AppContext:
    settings: ServerSettings
    store: Store
    samples: SampleIndex
    worker: JobWorker | None = None

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]

# Documents the scheme in OpenAPI (the "Authorize" button of /docs). The check itself is
# `openrft.server.auth.AuthMiddleware`, which runs before routing.
bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def documented_auth(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Any:
    return credentials
