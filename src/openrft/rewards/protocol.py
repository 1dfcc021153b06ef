"""The wire between the trainer and a reward worker (two pipes).

- trainer -> worker: frames of ``8-byte big-endian length + pickle``. Pickle lets dataset
  columns of any type (numpy arrays, datetimes) reach the reward; it only flows *into* the
  sandbox, where unpickling is harmless.
- worker -> trainer: one JSON object per line. JSON, never pickle, because the worker runs
  untrusted code and unpickling its output in the trainer would let that code run there.
  Lines are capped at `MAX_LINE` bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct(">Q")
MAX_LINE = 16 * 2**20
INTERNAL_ERROR_EXIT = 70  # the worker's own code failed (not the user's): an infrastructure error


def encode_frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """Worker side: the next message, or None at end of input (the trainer went away)."""
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    body = _read_exact(fd, size)
    if body is None:
        return None
    return pickle.loads(body)


def encode_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, allow_nan=True, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    """Trainer side: parse one line; ValueError if it is not a JSON object."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("protocol: expected a JSON object")
    return obj
