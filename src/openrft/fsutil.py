"""File helpers shared by checkpoints, adapters and the model cache (no torch import)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path, on_chunk: Callable[[int], object] | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (`on_chunk` gets each chunk's size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a directory after a rename makes the rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
