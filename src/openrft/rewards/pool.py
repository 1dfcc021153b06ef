"""Reward worker processes and the threads in the trainer that drive them.

Why `subprocess` and not `multiprocessing`: the worker must start with a clean environment
(``/proc/self/environ`` keeps the *initial* environment, so scrubbing ``os.environ`` after a
spawn is not enough), inside the bubblewrap sandbox (`jail`), and must speak a protocol that
never unpickles its output in the trainer (`protocol`). A subprocess with an explicit ``env``,
a command prefix and two pipes gives all three.

Isolation modes (`PoolSettings.isolation`, default ``$OPENRFT_REWARD_ISOLATION`` or ``auto``):

- ``sandbox``: the bubblewrap sandbox of `jail` (user, PID, network namespaces, an unprivileged
  uid, a read-only view of only the Python and the reward's source, seccomp); required: where it
  does not work, starting a pool raises `RewardError` saying why. The server runs tenants' code so.
- ``auto``: the sandbox where it works; else the weaker ``namespaces`` (or ``hooks``) mode, said
  once as a warning (a user's own machine without bubblewrap, macOS).
- ``namespaces``: ``unshare`` PID + network namespaces, rlimits, the audit hook (the pre-sandbox
  isolation: the worker keeps the caller's uid and sees the whole file system).
- ``hooks``: rlimits and the audit hook only.

Each `WorkerPool` serves one `Profile` (network on/off, memory cap) with ``size`` warm workers,
each driven by one thread (`_Slot`) that takes requests from a shared queue. The slot turns
every way a call can end into an `Outcome`:

- a result line: a value (classified by the caller: range clip, cap) or a user error;
- no result within ``timeout_s + grace`` (the worker's own SIGALRM failed: C code, blocked
  signals): the worker is killed, the sample counted as a "timeout" user error, the rest of the
  request re-sent to a fresh worker;
- the worker died: killed by a signal (OOM killer, segfault, killed from outside) is an
  *infrastructure* error: the sample is retried once on a fresh worker, then excluded (NaN);
  an ordinary exit status (the user's code called ``os._exit``) is a user error.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from openrft.errors import RewardError
from openrft.rewards import jail, seccomp
from openrft.rewards.outcomes import Outcome
from openrft.rewards.protocol import INTERNAL_ERROR_EXIT, MAX_LINE, decode_line, encode_frame, write_all
from openrft.rewards.sandbox import make_pids_cgroup, remove_cgroup, user_process_count
from openrft.rewards.url_guard import POLICY_ENV

log = logging.getLogger("openrft.rewards")

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", POLICY_ENV)  # POLICY_ENV: a server's outbound rules
ISOLATION_MODES = ("auto", "sandbox", "namespaces", "hooks")
ISOLATION_ENV = "OPENRFT_REWARD_ISOLATION"


@dataclass(frozen=True)
class Profile:
    """What distinguishes one pool's workers from another's."""

    allow_network: bool = False
    memory_mb: int = 2048
    env: tuple[str, ...] = ()  # trainer environment variables passed into these workers (by name)
    read_only: tuple[str, ...] = ()  # host paths the sandboxed workers see (the functions' sources)


@dataclass(frozen=True)
class PoolSettings:
    """Knobs shared by all pools of a `RewardSet`."""

    size: int = 2
    isolation: str = "auto"  # see the module docstring; `default_isolation()` reads the environment
    tmp_mb: int = 256  # size of the sandbox's private /tmp (memory-backed)
    cpu_s: int = 3600  # RLIMIT_CPU per worker (backstop); workers are recycled at 80% of it
    fsize_mb: int = 1024  # largest file a reward may write
    max_procs: int = 16  # processes a worker may have: pids cgroup (root) or RLIMIT_NPROC head-room
    start_timeout_s: float = 60.0
    load_timeout_s: float = 120.0  # importing a user module (before the first call's clock starts)
    network_policy: str | None = None  # url_guard.POLICY_ENV value for the workers; None: the trainer's


# ----------------------------------------------------------------------------------------------
# Isolation helpers
# ----------------------------------------------------------------------------------------------

_prefix_cache: dict[bool, list[str] | None] = {}
_prefix_lock = threading.Lock()


def namespace_prefix(allow_network: bool) -> list[str] | None:
    """The ``unshare`` command prefix that works on this machine (new PID + mount namespace with
    its own /proc, and a new network namespace unless `allow_network`), or None."""
    with _prefix_lock:
        if allow_network in _prefix_cache:
            return _prefix_cache[allow_network]
        found = None
        if shutil.which("unshare"):
            base = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
            for extra in ([], ["--user", "--map-root-user"]):
                cmd = [base[0], *extra, *base[1:], *([] if allow_network else ["--net"])]
                try:
                    ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
                if ok:
                    found = cmd
                    break
        _prefix_cache[allow_network] = found
        return found


def default_isolation() -> str:
    """``$OPENRFT_REWARD_ISOLATION`` when set (one of `ISOLATION_MODES`), else ``auto``."""
    value = os.environ.get(ISOLATION_ENV, "").strip() or "auto"
    if value not in ISOLATION_MODES:
        raise RewardError(f"{ISOLATION_ENV}={value!r}: use one of {', '.join(ISOLATION_MODES)}")
    return value


_warned: set[str] = set()


def resolve_isolation(mode: str, allow_network: bool) -> str:
    """The mode a worker really runs in: 'sandbox', 'namespaces' or 'hooks' (see the module
    docstring); `RewardError` when a required mode does not work here."""
    if mode not in ISOLATION_MODES:
        raise RewardError(f"reward isolation {mode!r}: use one of {', '.join(ISOLATION_MODES)}")
    if mode in ("sandbox", "auto"):
        why = jail.available(allow_network)
        if why is None:
            return "sandbox"
        if mode == "sandbox":
            raise RewardError(f"reward sandbox required but unavailable: {why}")
        fallback = "namespaces" if namespace_prefix(allow_network) is not None else "hooks"
        with _prefix_lock:
            if why not in _warned:
                _warned.add(why)
                log.warning(
                    "reward sandbox unavailable (%s): reward code runs with %s isolation only "
                    "(its own uid, the whole file system readable)",
                    why,
                    fallback,
                )
        return fallback
    if mode == "namespaces" and namespace_prefix(allow_network) is None:
        raise RewardError("reward isolation: namespaces were required but `unshare` does not work here")
    return mode


def _stage_unreadable(folders: tuple[str, ...], into: str) -> dict[str, str]:
    """Copies of the source folders that the sandbox user cannot read, the folder itself or a file
    in it (see `jail.stage`)."""
    uid, gid = jail.sandbox_ids()
    staged = {}
    for folder in jail.minimal_roots(folders):
        try:
            files = [e.path for e in os.scandir(folder) if e.is_file()]
        except OSError:  # not a folder, or one the trainer cannot list either: nothing to copy
            continue
        if not all(jail.readable_by(p, uid, gid) for p in (folder, *files)):
            try:
                staged[folder] = jail.stage(folder, into)
            except (OSError, ValueError) as e:
                raise RewardError(f"reward sandbox: cannot copy {folder} for the sandbox ({e})") from None
    return staged


def worker_env(
    home: str, passthrough: tuple[str, ...] = (), network_policy: str | None = None
) -> dict[str, str]:
    """The whole environment of a worker: nothing from the trainer but locale, PATH, a server's
    network policy (`url_guard.POLICY_ENV`) and the variables its profile names (`Profile.env`,
    e.g. a judge's API key; missing ones are skipped)."""
    env = {k: os.environ[k] for k in (*_ENV_KEEP, *passthrough) if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(HOME=home, TMPDIR=home, PYTHONPATH=jail.PKG_ROOT, PYTHONDONTWRITEBYTECODE="1")
    if network_policy is not None:
        env[POLICY_ENV] = network_policy
    return env


def describe_status(status: int | None) -> str:
    if status is None:
        return "unknown exit status"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        why = " (out of memory, or killed from outside)" if -status == signal.SIGKILL else ""
        return f"killed by {name}{why}"
    return f"exit status {status}"


# ----------------------------------------------------------------------------------------------
# One worker process
# ----------------------------------------------------------------------------------------------


class WorkerGone(Exception):
    """The worker process ended (or broke the protocol)."""

    def __init__(self, status: int | None, log: str, why: str = "") -> None:
        super().__init__(why or describe_status(status))
        self.status, self.log, self.protocol = status, log, bool(why)


class WorkerProcess:
    """A started worker: pipes, temp dir, log file."""

    def __init__(
        self, profile: Profile, settings: PoolSettings, root: str, sys_path: list[str], generation: int = 0
    ) -> None:
        self.generation = generation  # the pool's generation when started (see `WorkerPool.recycle`)
        self.dir = tempfile.mkdtemp(prefix="w-", dir=root)
        self.log_path = self.dir + ".log"
        self.mode = resolve_isolation(settings.isolation, profile.allow_network)
        self.namespaced = self.mode != "hooks"
        self.cgroup = make_pids_cgroup(settings.max_procs) if os.geteuid() == 0 else None
        argv = [sys.executable, "-m", "openrft.rewards.worker"]
        env, fds = worker_env(self.dir, profile.env, settings.network_policy), ()
        if self.mode == "sandbox":
            view = jail.view(jail.python_paths(), profile.read_only)
            staged = _stage_unreadable(profile.read_only, self.dir)
            fds = (seccomp.program_fd(),)
            argv = jail.command(
                argv,
                view,
                network=profile.allow_network,
                seccomp_fd=fds[0],
                tmp_mb=settings.tmp_mb,
                staged=staged,
            )
            argv = jail.with_cgroup(argv, self.cgroup)
            # the sandbox's own /tmp is its home; the host's PATH names folders it does not have
            env.update(HOME=jail.SANDBOX_TMP, TMPDIR=jail.SANDBOX_TMP, PATH=jail.sandbox_path())
        elif self.mode == "namespaces":
            argv = [*(namespace_prefix(profile.allow_network) or []), *argv]
        try:
            with open(self.log_path, "wb") as log_file:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    cwd=self.dir,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=fds,
                    bufsize=0,
                )
        finally:
            for fd in fds:
                os.close(fd)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.in_fd, self.out_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._buf = bytearray()
        self.limits: dict[str, bool] = {}
        self.cpu_s = settings.cpu_s
        # RLIMIT_NPROC binds every uid but root's: the sandbox's (nobody) or the caller's.
        uid = jail.sandbox_ids()[0] if self.mode == "sandbox" else os.getuid()
        nproc = None if uid == 0 else user_process_count(uid) + settings.max_procs
        self.send(
            {
                "memory_mb": profile.memory_mb,
                "cpu_s": settings.cpu_s,
                "fsize_mb": settings.fsize_mb,
                "nproc": nproc,
                # In the sandbox the trampoline joined the cgroup already (the worker sees no /sys).
                "cgroup": None if self.mode == "sandbox" else self.cgroup,
                "allow_network": profile.allow_network,
                "sys_path": sys_path,
            }
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_tail(self, since: int = 0, limit: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(since, self.log_size() - limit))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def status(self) -> int | None:
        """The worker's exit status; negative = killed by that signal. bwrap reports a child
        killed by signal N as exit status 128 + N, read back as -N here (a reward that calls
        ``os._exit(128 + N)`` itself is taken for a crash: retried, then excluded)."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if self.mode == "sandbox" and code is not None and 128 < code < 128 + signal.NSIG:
            return -(code - 128)
        return code

    def gone(self, why: str = "", since: int = 0) -> WorkerGone:
        if why:  # the worker is alive but broke the protocol
            self.kill()
        return WorkerGone(self.status(), self.log_tail(since), why)

    def send(self, obj: Any) -> None:
        try:
            write_all(self.in_fd, encode_frame(obj))
        except OSError:
            raise self.gone() from None

    def recv(self, deadline: float, since: int = 0) -> dict[str, Any] | None:
        """The next message, or None when `deadline` (monotonic) passes first."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                try:
                    return decode_line(line)
                except ValueError:
                    raise self.gone("protocol: the worker wrote a malformed line", since) from None
            if len(self._buf) > MAX_LINE:
                raise self.gone("protocol: the worker wrote an over-long line", since)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.out_fd], [], [], min(remaining, 0.1))
            if not ready:
                if self.proc.poll() is not None:  # died, though a stray child may hold the pipe open
                    raise self.gone(since=since)
                continue
            chunk = os.read(self.out_fd, 1 << 16)
            if not chunk:
                raise self.gone(since=since)
            self._buf += chunk

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def close(self, graceful: bool = True) -> None:
        if graceful and self.alive():
            try:
                self.send({"op": "exit"})
                self.proc.wait(timeout=2)
            except (WorkerGone, subprocess.TimeoutExpired):
                pass
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        remove_cgroup(self.cgroup)
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------


@dataclass
class CallRequest:
    """Score `items` with one function. Callbacks run on the slot's thread."""

    fn: dict[str, Any]
    items: list[tuple[int, Any, Any, dict]]
    concurrent: bool  # items run together in the worker (async per-sample, or a batched call)
    timeout_s: float
    classify: Callable[[float | None], Outcome]
    on_outcome: Callable[[int, Outcome], None]
    on_done: Callable[[BaseException | None], None]
    cancelled: Callable[[], bool] = lambda: False
    on_retry: Callable[[int], None] = lambda i: None

    def run(self, slot: _Slot) -> None:
        _run_call(slot, self)
        self.on_done(None)

    def fail(self, exc: BaseException) -> None:
        self.on_done(exc)


@dataclass
class InspectRequest:
    """Load a function in a worker; the future gets the worker's reply dict."""

    fn: dict[str, Any]
    future: Future = field(default_factory=Future)

    def run(self, slot: _Slot) -> None:
        worker = slot.ensure()
        since = worker.log_size()
        try:
            worker.send({"op": "inspect", "fn": self.fn})
            msg = worker.recv(time.monotonic() + slot.pool.settings.load_timeout_s, since)
        except WorkerGone as gone:
            slot.forget()
            why = describe_status(gone.status)
            msg = {"ok": False, "msg": f"the worker died while loading the function ({why})", "tb": gone.log}
        if msg is None:
            slot.restart()
            msg = {"ok": False, "msg": "loading the function timed out", "tb": ""}
        self.future.set_result(msg)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _wire_outcome(req: CallRequest, msg: dict[str, Any]) -> Outcome | None:
    """The outcome a result line reports, or None if the line is not a valid result."""
    if "v" in msg:
        value = msg["v"]
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            return None
        return req.classify(value)
    kind, text = msg.get("err"), msg.get("msg")
    if not isinstance(kind, str) or not isinstance(text, str):
        return None
    return Outcome.error(text if text.startswith(kind) else f"{kind}: {text}")


def _run_call(slot: _Slot, req: CallRequest) -> None:
    """Drive one request to the end: every item gets exactly one outcome (unless cancelled)."""
    settings = slot.pool.settings
    grace = 1.0 + 0.1 * req.timeout_s + (1.0 if req.concurrent else 0.0)
    pending = list(req.items)
    attempts: dict[int, int] = {}
    while pending:
        if req.cancelled() or slot.pool.closed:
            return
        worker = slot.ensure()
        since = worker.log_size()
        by_index = {item[0]: item for item in pending}
        try:
            worker.send({"op": "call", "fn": req.fn, "items": pending, "timeout_s": req.timeout_s})
            deadline = time.monotonic() + settings.load_timeout_s
            while True:
                msg = worker.recv(deadline, since)
                if msg is None:  # hard timeout: kill, blame the running sample(s), go on
                    slot.restart()
                    culprits = pending if req.concurrent else pending[:1]
                    for item in culprits:
                        req.on_outcome(
                            item[0],
                            Outcome.error(
                                f"timeout: no result within {req.timeout_s:g}s (the worker did not respond "
                                "to the alarm and was killed)"
                            ),
                        )
                    pending = pending[len(culprits) :]
                    break
                if msg.get("loaded"):
                    deadline = time.monotonic() + req.timeout_s + grace
                    continue
                if msg.get("done"):
                    cpu = msg.get("cpu")
                    if isinstance(cpu, int | float) and cpu > 0.8 * worker.cpu_s:
                        slot.restart(graceful=True)
                    if pending:  # the worker skipped items: treat as a crash on them
                        why = "protocol: the worker finished without answering every sample"
                        raise worker.gone(why, since)
                    break
                i = msg.get("i")
                outcome = _wire_outcome(req, msg) if isinstance(i, int) and i in by_index else None
                if outcome is None:
                    raise worker.gone("protocol: the worker wrote an unexpected message", since)
                req.on_outcome(i, outcome)
                pending.remove(by_index.pop(i))
                if not req.concurrent:
                    deadline = time.monotonic() + req.timeout_s + grace
                if req.cancelled() or slot.pool.closed:
                    if pending:
                        slot.restart()
                    return
        except WorkerGone as gone:
            slot.forget()
            culprits = pending if req.concurrent else pending[:1]
            status = gone.status
            log = f"\n--- worker log ---\n{gone.log}" if gone.log else ""
            user_exit = (
                status is not None and status >= 0 and status != INTERNAL_ERROR_EXIT and not gone.protocol
            )
            exit_text = f"exit: the reward function ended the worker process ({describe_status(status)}){log}"
            for item in culprits:
                if user_exit:
                    req.on_outcome(item[0], Outcome.error(exit_text))
                    pending.remove(item)
                    continue
                attempts[item[0]] = attempts.get(item[0], 0) + 1
                if attempts[item[0]] >= 2:
                    req.on_outcome(
                        item[0],
                        Outcome.infra(f"infra: the reward worker died twice on this sample ({gone}){log}"),
                    )
                    pending.remove(item)
                else:
                    req.on_retry(item[0])


# ----------------------------------------------------------------------------------------------
# The pool
# ----------------------------------------------------------------------------------------------


class _Slot(threading.Thread):
    """One worker process and the thread that drives it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        super().__init__(name=f"openrft-reward-{index}", daemon=True)
        self.pool = pool
        self.worker: WorkerProcess | None = None

    def run(self) -> None:
        with contextlib.suppress(Exception):  # reported by the first request that needs the worker
            self.ensure()  # start warm
        while True:
            req = self.pool.queue.get()
            if req is None:
                break
            try:
                req.run(self)
            except BaseException as e:  # never let the thread die with a request unanswered
                req.fail(e)
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def ensure(self) -> WorkerProcess:
        if self.worker is not None and self.worker.generation < self.pool.generation:
            self.restart(graceful=True)  # recycled: user modules may have changed on disk
        if self.worker is not None and self.worker.alive():
            return self.worker
        self.forget()
        last = ""
        for _ in range(2):
            generation = self.pool.generation
            worker = WorkerProcess(
                self.pool.profile, self.pool.settings, self.pool.root, self.pool.sys_path, generation
            )
            try:
                msg = worker.recv(time.monotonic() + self.pool.settings.start_timeout_s)
            except WorkerGone as gone:
                msg, last = None, f"{gone}: {gone.log}"
            if msg is not None and msg.get("ready"):
                worker.limits = msg.get("limits", {})
                if worker.mode == "sandbox":
                    worker.limits["pids_cgroup"] = worker.cgroup is not None
                self.worker = worker
                return worker
            last = last or "no answer"
            worker.close(graceful=False)
        raise RewardError(f"reward worker failed to start twice ({last[-1500:]})")

    def forget(self) -> None:
        if self.worker is not None:
            self.worker.close(graceful=False)
            self.worker = None

    def restart(self, graceful: bool = False) -> None:
        """Drop the current worker (killed, or asked to exit); a new one starts when needed."""
        if self.worker is not None:
            self.worker.close(graceful=graceful)
            self.worker = None


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


class WorkerPool:
    """`size` warm workers for one profile, fed from one queue."""

    def __init__(self, profile: Profile, settings: PoolSettings, sys_path: list[str]) -> None:
        self.profile, self.settings, self.sys_path = profile, settings, sys_path
        self.root = tempfile.mkdtemp(prefix="openrft-rewards-")
        self.queue: queue.Queue[CallRequest | InspectRequest | None] = queue.Queue()
        self.closed = False
        self.generation = 0
        self.slots = [_Slot(self, k) for k in range(max(1, settings.size))]
        for slot in self.slots:
            slot.start()
        _live_pools.add(self)

    def submit(self, req: CallRequest | InspectRequest) -> None:
        if self.closed:
            raise RuntimeError("the reward pool is closed")
        self.queue.put(req)

    def inspect(self, fn: dict[str, Any]) -> dict[str, Any]:
        req = InspectRequest(fn)
        self.submit(req)
        return req.future.result()

    def recycle(self) -> None:
        """Replace every worker before its next request (their imported user modules are stale,
        e.g. after a reward file changed). Running requests finish on the old workers."""
        self.generation += 1

    def pids(self) -> list[int]:
        """PIDs (as the trainer sees them) of the live worker processes."""
        return [s.worker.pid for s in self.slots if s.worker is not None and s.worker.alive()]

    def isolation(self) -> dict[str, Any]:
        """Which isolation layers the workers run under (for logs and tests)."""
        workers = [s.worker for s in self.slots if s.worker is not None]
        limits = workers[0].limits if workers else {}
        return {
            "mode": workers[0].mode if workers else None,
            "namespaces": bool(workers) and all(w.namespaced for w in workers),
            "network": self.profile.allow_network,
            "limits": limits,
        }

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _ in self.slots:
            self.queue.put(None)
        for slot in self.slots:
            slot.join(timeout=10)
        for slot in self.slots:
            slot.forget()
        shutil.rmtree(self.root, ignore_errors=True)


@atexit.register
def _close_all() -> None:
    for pool in list(_live_pools):
        pool.close()


def default_pool_size() -> int:
    """min(2, CPU count): rewards share the machine with the trainer."""
    return max(1, min(2, os.cpu_count() or 1))
