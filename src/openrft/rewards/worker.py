"""The reward worker process: ``python -m openrft.rewards.worker`` (started by `pool.WorkerProcess`).

It reads its settings (first frame), limits itself (`sandbox`), then serves requests:

- ``{"op": "inspect", "fn": FN}``: load the function; reply its call style or the load error.
- ``{"op": "call", "fn": FN, "items": [(i, prompt, completion, example), ...], "timeout_s": t}``:
  reply one line per item as it finishes (``{"i", "v"}`` or ``{"i", "err", "msg"}``), then
  ``{"done": true, "cpu": seconds}``. Sync per-sample items run one after another, each under a
  SIGALRM timeout (a Python-level hang becomes a "timeout" error and the worker lives on); async
  per-sample items run concurrently; a batched function gets all items in one call.

``FN`` is ``{"key", "function", "base_dir", "kwargs"}``; loaded functions are cached by key.
User stdout/stderr go to the worker's log file, never to the protocol pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import inspect
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from openrft.rewards import loader
from openrft.rewards.outcomes import to_wire
from openrft.rewards.protocol import INTERNAL_ERROR_EXIT, encode_line, read_frame, write_all
from openrft.rewards.sandbox import apply_limits, install_audit_hook, join_cgroup

_TB_LIMIT = 4000


class _Timeout(BaseException):
    """Raised into user code by SIGALRM; a BaseException so ``except Exception`` cannot eat it."""


class _Alarm:
    """A one-shot wall-clock timeout around a block of user code."""

    armed = False

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.armed:
            cls.armed = False
            raise _Timeout()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        _Alarm.armed = True
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))

    def __exit__(self, *exc: object) -> None:
        _Alarm.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def format_error(exc: BaseException) -> str:
    """The traceback without this module's frames, capped at a few KB."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, loader.__file__):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if len(text) > _TB_LIMIT:
        text = text[:500] + "\n  ...\n" + text[-(_TB_LIMIT - 600) :]
    return text


class Worker:
    """Request loop state: the protocol fd, loaded functions, the asyncio loop."""

    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self.funcs: dict[str, tuple[Callable[..., Any], loader.CallStyle]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing --------------------------------------------------------------------------------
    def send(self, obj: dict[str, Any]) -> None:
        write_all(self.out_fd, encode_line(obj))

    def emit(self, i: int, value: Any) -> None:
        number, problem = to_wire(value)
        if problem:
            self.send({"i": i, "err": "type", "msg": problem})
        else:
            self.send({"i": i, "v": number})

    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop

    def reset_loop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.close()
        self._loop = None

    def load(self, fn: dict[str, Any]) -> tuple[Callable[..., Any], loader.CallStyle]:
        if fn["key"] not in self.funcs:
            func = loader.load_function(fn["function"], fn.get("base_dir"), fn.get("kwargs"))
            self.funcs[fn["key"]] = (func, loader.call_style(func))
        return self.funcs[fn["key"]]

    # -- ops -------------------------------------------------------------------------------------
    def inspect(self, msg: dict[str, Any]) -> None:
        try:
            _, style = self.load(msg["fn"])
        except BaseException as e:  # user code at import time: anything can happen
            self.send({"ok": False, "msg": f"{type(e).__name__}: {e}", "tb": format_error(e)})
            return
        self.send({"ok": True, "batched": style.batched, "is_async": style.is_async})

    def call(self, msg: dict[str, Any]) -> None:
        items, timeout = msg["items"], float(msg["timeout_s"])
        try:
            func, style = self.load(msg["fn"])
        except BaseException as e:
            text = "load: the function could not be loaded\n" + format_error(e)
            for item in items:
                self.send({"i": item[0], "err": "load", "msg": text})
            return
        self.send({"loaded": True})  # the call's clock starts now, not during a slow import
        if style.batched:
            self.call_batched(func, style, items, timeout)
        elif style.is_async:
            self.call_async(func, style, items, timeout)
        else:
            for i, prompt, completion, example in items:
                self.call_one(func, style, i, (prompt, completion, example), timeout)

    def call_one(self, func: Any, style: loader.CallStyle, i: int, args: tuple, timeout: float) -> None:
        try:
            with _Alarm(timeout):
                value = loader.call_per_sample(func, style, *args)
                if inspect.isawaitable(value):
                    value = self.loop().run_until_complete(value)
        except _Timeout:
            self.reset_loop()
            self.send({"i": i, "err": "timeout", "msg": f"timeout: no result within {timeout:g}s"})
            return
        except BaseException as e:
            self.send({"i": i, "err": "exception", "msg": format_error(e)})
            return
        self.emit(i, value)

    def call_async(self, func: Any, style: loader.CallStyle, items: list, timeout: float) -> None:
        pending = {item[0] for item in items}

        async def one(i: int, prompt: Any, completion: Any, example: Any) -> None:
            try:
                value = await asyncio.wait_for(
                    loader.call_per_sample(func, style, prompt, completion, example), timeout
                )
            except (TimeoutError, _Timeout):
                pending.discard(i)
                self.send({"i": i, "err": "timeout", "msg": f"timeout: no result within {timeout:g}s"})
                return
            except BaseException as e:
                pending.discard(i)
                self.send({"i": i, "err": "exception", "msg": format_error(e)})
                return
            pending.discard(i)
            self.emit(i, value)

        async def run_all() -> None:
            await asyncio.gather(*(one(*item) for item in items))

        try:
            with _Alarm(timeout + 1.0):  # backstop for code that blocks the event loop
                self.loop().run_until_complete(run_all())
        except _Timeout:
            self.reset_loop()
            for i in sorted(pending):
                self.send({"i": i, "err": "timeout", "msg": f"timeout: no result within {timeout:g}s"})

    def call_batched(self, func: Any, style: loader.CallStyle, items: list, timeout: float) -> None:
        idx = [item[0] for item in items]
        try:
            with _Alarm(timeout):
                values = loader.call_batched(
                    func, style, [it[1] for it in items], [it[2] for it in items], [it[3] for it in items]
                )
                if inspect.isawaitable(values):
                    values = self.loop().run_until_complete(asyncio.wait_for(values, timeout))
        except (TimeoutError, _Timeout):
            self.reset_loop()
            for i in idx:
                text = f"timeout: the batched call took over {timeout:g}s"
                self.send({"i": i, "err": "timeout", "msg": text})
            return
        except BaseException as e:
            text = format_error(e)
            for i in idx:
                self.send({"i": i, "err": "exception", "msg": text})
            return
        sized = hasattr(values, "__len__") and not isinstance(values, str | bytes | dict)
        if not sized or len(values) != len(idx):
            size = len(values) if hasattr(values, "__len__") else "no"
            text = (
                f"length: a batched reward must return a list of {len(idx)} values (one per completion), "
                f"got {type(values).__name__} with {size} items"
            )
            for i in idx:
                self.send({"i": i, "err": "length", "msg": text})
            return
        for i, value in zip(idx, list(values), strict=True):
            self.emit(i, value)

    def serve(self, in_fd: int) -> None:
        while True:
            msg = read_frame(in_fd)
            if msg is None or msg.get("op") == "exit":
                return
            if msg["op"] == "inspect":
                self.inspect(msg)
            elif msg["op"] == "call":
                self.call(msg)
                self.send({"done": True, "cpu": time.process_time()})
            else:
                raise ValueError(f"unknown op {msg.get('op')!r}")


def main() -> None:
    in_fd, out_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)  # user prints go to the log (our stderr), never into the protocol pipe
    try:
        cfg = read_frame(in_fd)
        if cfg is None:
            return
        limits = apply_limits(cfg["memory_mb"], cfg["cpu_s"], cfg["fsize_mb"], cfg.get("nproc"))
        limits["pids_cgroup"] = join_cgroup(cfg.get("cgroup"))
        for path in reversed(cfg["sys_path"]):
            if path not in sys.path:
                sys.path.insert(0, path)
        faulthandler.enable()
        signal.signal(signal.SIGALRM, _Alarm.handler)
        install_audit_hook(cfg["allow_network"])
        worker = Worker(out_fd)
        worker.send({"ready": True, "limits": limits})
        worker.serve(in_fd)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(INTERNAL_ERROR_EXIT)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
