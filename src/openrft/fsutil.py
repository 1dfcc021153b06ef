"""File helpers shared by checkpoints, adapters, run directories and the model cache (no torch
import). Every atomic write in OpenRFT goes through `write_atomic`, `write_json_atomic`,
`atomic_file` (streamed content) or `replace_dir` (a whole folder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

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


@contextmanager
def atomic_file(path: str | Path, *, durable: bool = False, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `path` when the block ends without an
    exception: a temp file next to it (named per process and thread), then a rename, so a reader
    sees the old file or the new one, never a torn one. On an exception the temp file is removed
    and `path` is left as it was. For content streamed in pieces (a download, a plot); whole
    strings and bytes go through `write_atomic`. `durable` also fsyncs the file and its folder, so
    the new content survives a power cut (checkpoints, manifests); plain metadata skips the cost.
    `mode` (e.g. 0o600 for a secret) is set on the temp file before anything is written to it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is not None else 0o666)
        with open(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(target.parent)


def write_atomic(
    path: str | Path, data: str | bytes, *, durable: bool = False, mode: int | None = None
) -> None:
    """Write `data` (a str as UTF-8) to `path` atomically (`atomic_file`, same `durable` and `mode`)."""
    with atomic_file(path, durable=durable, mode=mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: str | Path, value: Any, *, indent: int | None = 2, durable: bool = False) -> None:
    """`write_atomic` of `value` as JSON (with a final newline)."""
    write_atomic(path, json.dumps(value, indent=indent) + "\n", durable=durable)


def replace_dir(target: str | Path, build: Callable[[Path], object], *, durable: bool = False) -> Path:
    """Replace the folder `target` with what `build(tmp)` writes into a fresh temp folder next to
    it. Readers see the old folder or the new one whole: the old one is moved aside, the new one
    renamed in, then the old one removed (put back if the rename fails). `durable` fsyncs every
    new file and the parent folder (adapters, models)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    moved_aside = False
    try:
        build(tmp)
        if durable:
            for file in tmp.rglob("*"):
                if file.is_file():
                    fsync_path(file)
        if target.exists():
            os.replace(target, old)
            moved_aside = True
        os.replace(tmp, target)
        if durable:
            fsync_path(target.parent)
    except BaseException:
        if moved_aside and not target.exists():
            os.replace(old, target)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def copy_dir(src: str | Path, dst: str | Path) -> None:
    """Replace `dst` with a copy of `src`, atomically (`replace_dir`)."""
    replace_dir(dst, lambda tmp: shutil.copytree(src, tmp))
