"""Shared state of one app (built by `create_app`) and the FastAPI dependencies that reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from openrft.jobs.worker import JobWorker
from openrft.server.accounts import Caller
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


def current_caller(request: Request) -> Caller:
    """The user the request's key belongs to, resolved once by `AuthMiddleware`."""
    caller = request.scope.get("state", {}).get("caller")
    if not isinstance(caller, Caller):  # only reachable if a route is mounted outside the middleware
        raise HTTPException(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
    return caller


CurrentCaller = Annotated[Caller, Depends(current_caller)]


def require_admin(caller: CurrentCaller) -> Caller:
    """403 for every key but the admin's."""
    if not caller.admin:
        raise HTTPException(403, "only the admin key may manage API keys (this key belongs to a user)")
    return caller
