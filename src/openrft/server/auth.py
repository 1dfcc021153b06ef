"""API-key authentication, the OpenAI way: `Authorization: Bearer KEY` on every request.

The admin key comes from the settings, else $OPENRFT_API_KEY, else `<data_dir>/api_key` (mode
0600), generated at first start; it is compared with `hmac.compare_digest` (constant time). Users'
keys are created by the admin and found by their sha256 (see `openrft.server.accounts`). Every
path answers 401 without a valid key except the public ones: the health check, the OpenAPI spec and
docs, and the dashboard's static files (the dashboard asks for the key and keeps it in the browser).
The check is an ASGI middleware, so it runs before routing and before any body is read; it puts
the caller in `scope["state"]["caller"]` (read by `openrft.server.deps.current_caller`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from openrft.fsutil import write_atomic
from openrft.server.accounts import Caller

PUBLIC_EXACT = frozenset({"/", "/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
PUBLIC_PREFIXES = ("/static/",)
KEY_FILE = "api_key"


def load_or_create_key(data_dir: Path, configured: str | None = None) -> tuple[str, str]:
    """The API key and where it came from: 'settings', 'environment', 'file' or 'generated'."""
    if configured:
        return configured, "settings"
    env = os.environ.get("OPENRFT_API_KEY", "").strip()
    if env:
        return env, "environment"
    path = data_dir / KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, "file"
    key = "ork-" + secrets.token_urlsafe(32)
    write_atomic(path, key + "\n", mode=0o600)
    return key, "generated"


def is_public(path: str) -> bool:
    return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthMiddleware:
    """401 for every non-public HTTP request without `Authorization: Bearer <key>` of a caller.

    `resolve(token)` says whose key a bearer token is (None: nobody's); it may read the store, so
    it runs on a worker thread, on every request: a revoked key is refused at once.
    """

    def __init__(self, app: Any, resolve: Callable[[str | None], Caller | None]) -> None:
        self.app = app
        self.resolve = resolve

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        caller = await run_in_threadpool(self.resolve, bearer_token(scope.get("headers", [])))
        if caller is not None:
            scope["state"] = {**scope.get("state", {}), "caller": caller}  # this request's own copy
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "message": "missing, wrong or revoked API key: send the header 'Authorization: Bearer "
                    "<key>' (the admin key is printed at server start and saved in <data-dir>/api_key; "
                    "the admin creates users' keys with `openrft server keys create --user NAME`)",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
