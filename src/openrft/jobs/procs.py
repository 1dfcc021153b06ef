"""Process identity and termination (Linux `/proc`), so a recorded pid is never confused with a
later process that got the same number."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":  # a zombie has finished
        return None
    return fields[19] if len(fields) > 19 else None


def identity(pid: int | None = None) -> str:
    """'PID:START' of this (or another) process."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{start_time(pid)}"


def alive(pid: int | None, started: str | None) -> bool:
    """True if `pid` runs and is the process that started at `started` (when it is known)."""
    if not pid:
        return False
    now = start_time(pid)
    if now is None:
        return False
    return started in (None, "", "None") or now == started


def identity_alive(ident: str | None) -> bool:
    """`alive` for a 'PID:START' string."""
    if not ident or ":" not in ident:
        return False
    pid, _, started = ident.partition(":")
    return pid.isdigit() and alive(int(pid), started)


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (the job's session); ignore a gone group."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def signal_process(pid: int, sig: int) -> None:
    """Send `sig` to the process `pid` alone (not its group); ignore a gone process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def await_or_kill_group(pid: int, started: str | None, grace_s: float) -> None:
    """Wait up to `grace_s` for the group's leader to exit by itself, then SIGKILL the whole group.

    For the training process of a server that died: it stops by itself after its current step
    (with a checkpoint) when it sees its server gone, and a SIGTERM now would be a second stop
    request, which stops it at once (mid-step)."""
    if not alive(pid, started):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid, started):
            break
        time.sleep(0.05)
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(pid, started):
        _reap(pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
