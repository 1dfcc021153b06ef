"""Request size caps: the body, enforced without reading an oversized body, and the headers.

A request whose Content-Length is over the cap is answered 413 before the app runs and before a
byte of the body is read. A body without Content-Length (chunked) is counted as it streams in; at
the first byte over the cap the middleware answers 413 itself, tells the app the client left (so
an upload in progress stops and cleans up) and drops whatever the app tries to send after.

Request line plus headers over `MAX_HEADER_BYTES` are answered 431 in two places: uvicorn's h11
parser stops buffering an unfinished head at that size (`uvicorn_limits` sets it and swaps in a
protocol that answers 431 instead of uvicorn's plain 400), and a head that arrived whole, which h11
does not measure, is caught by `HeaderLimitMiddleware` before the app runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024
"""Largest request line plus headers (bytes); h11's own default for an unfinished head."""


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()


def _closing_json(status: int, body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def _too_large(limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    message = (
        f"request body is larger than the server's limit of {limit} bytes "
        "(raise it with `openrft server --max-upload-mb`)"
    )
    return _closing_json(413, _error_body(message, "payload_too_large"))


HEADERS_TOO_LARGE = _error_body(
    f"request line and headers are larger than the server's limit of {MAX_HEADER_BYTES} bytes; "
    "send shorter headers and URLs",
    "header_fields_too_large",
)


def head_size(scope: dict[str, Any]) -> int:
    """Bytes of a request's path, query string and headers (about what its head took on the wire)."""
    headers = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))
    return (
        len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b"")) + headers
    )


class HeaderLimitMiddleware:
    """431 for a request whose line and headers together exceed `MAX_HEADER_BYTES`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and head_size(scope) > MAX_HEADER_BYTES:
            for message in _closing_json(431, HEADERS_TOO_LARGE):
                await send(message)
            return
        await self.app(scope, receive, send)


class HeaderLimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, except that an unfinished request head over h11's buffer limit
    (h11 raises its error with status hint 431) is answered 431 with a JSON error, not 400."""

    def send_400_response(self, msg: str) -> None:
        error = sys.exc_info()[1]  # uvicorn calls this while handling h11's RemoteProtocolError
        if getattr(error, "error_status_hint", None) != 431:
            super().send_400_response(msg)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(HEADERS_TOO_LARGE)).encode()),
            (b"connection", b"close"),
        ]
        reason = b"Request Header Fields Too Large"
        for event in (
            h11.Response(status_code=431, headers=headers, reason=reason),
            h11.Data(data=HEADERS_TOO_LARGE),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def uvicorn_limits() -> dict[str, Any]:
    """uvicorn.Config options that make it answer 431 to heads over `MAX_HEADER_BYTES`."""
    return {"http": HeaderLimitedH11Protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}


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
