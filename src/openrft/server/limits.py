"""Request body size caps, enforced without reading an oversized body.

A request whose Content-Length is over the cap is answered 413 before the app runs and before a
byte of the body is read. A body without Content-Length (chunked) is counted as it streams in; at
the first byte over the cap the middleware answers 413 itself, tells the app the client left (so
an upload in progress stops and cleans up) and drops whatever the app tries to send after.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def _too_large(limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps(
        {
            "error": {
                "message": f"request body is larger than the server's limit of {limit} bytes "
                "(raise it with `openrft server --max-upload-mb`)",
                "type": "invalid_request_error",
                "code": "payload_too_large",
            }
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimitMiddleware:
    """Cap request bodies; `limit_for(path)` gives the cap in bytes for a path."""

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = None
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            for message in _too_large(limit):
                await send(message)
            return

        state = {"seen": 0, "rejected": False, "started": False}

        async def limited_receive() -> dict[str, Any]:
            if state["rejected"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["rejected"] = True
                    if not state["started"]:
                        for m in _too_large(limit):
                            await send(m)
                        state["started"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["rejected"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["rejected"]:
                raise
