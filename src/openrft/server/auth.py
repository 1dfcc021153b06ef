"""API-key authentication, the OpenAI way: `Authorization: Bearer KEY` on every request.

The key comes from the settings, else $OPENRFT_API_KEY, else `<data_dir>/api_key` (mode 0600),
generated at first start. Keys are compared with `hmac.compare_digest` (constant time). Every
path answers 401 without the key except the public ones: the health check, the OpenAPI spec and
docs, and the dashboard's static files (the dashboard asks for the key and keeps it in the browser).
The check is an ASGI middleware, so it runs before routing and before any body is read.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

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
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    os.replace(path.with_suffix(".tmp"), path)
    os.chmod(path, 0o600)
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


def key_matches(given: str | None, key: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))


class AuthMiddleware:
    """401 for every non-public HTTP request without `Authorization: Bearer <key>`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if key_matches(bearer_token(scope.get("headers", [])), self.key):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "message": "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                    "(the key is printed at server start and saved in <data-dir>/api_key)",
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
