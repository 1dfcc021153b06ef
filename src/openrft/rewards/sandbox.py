"""The isolation a reward worker runs under, and the parts of it the worker sets up itself.

Layers, strongest first (the parent sets up the first two when it starts the worker):

1. **The bubblewrap sandbox** (`jail`, isolation mode ``sandbox``; see `pool` for the modes):
   user, PID, IPC, UTS and network namespaces, an unprivileged uid (``nobody`` when the trainer
   is root), a read-only view of only the Python installation and the reward's source, no
   capabilities, ``no_new_privs`` and a seccomp filter (`seccomp`). This is the security
   boundary; the layers below also hold inside it. Without bubblewrap (mode ``namespaces``):
   ``unshare`` PID and network namespaces only, the worker keeping the trainer's uid and view.
2. **A scrubbed environment**: the worker is started with only PATH, HOME/TMPDIR (its own temp
   dir), LANG/LC_ALL/TZ, PYTHONPATH and a server's network policy, so the trainer's secrets
   never enter it.
3. **Resource limits** (`apply_limits`): address space (a 4 GB allocation raises MemoryError),
   file size, CPU seconds (backstop; the parent's wall-clock timeout is the real one), no core
   dumps, and a cap on processes: RLIMIT_NPROC for every uid but root's; for root a ``pids``
   cgroup per worker where cgroups are writable (`make_pids_cgroup`; a sandboxed worker joins
   it before the sandbox starts, `jail.with_cgroup`).
4. **An audit hook** (`install_audit_hook`, PEP 578): refuses, with PermissionError, Python-level
   process creation (fork, exec, spawn, subprocess, system), signals to processes (os.kill,
   killpg, pthread_kill), raising resource limits, reading other processes' ``/proc`` entries
   and, unless the function allows network, creating non-Unix sockets, connecting, binding and
   resolving names. Under a server's network policy (`url_guard.POLICY_ENV` set), a function
   that has network may connect only where the policy allows (each address checked as the
   HTTP graders check theirs), and no function may connect to a Unix socket.

Limits of layer 4: audit hooks see only what Python raises events for; code that calls libc
through ``ctypes`` or a C extension gets past them. They turn mistakes and model-written code
into clear errors; they are not a boundary. Without the sandbox (no bubblewrap, macOS) the
worker reads what the trainer's uid reads, and as root it could act on the machine's mounts:
so a server refuses tenants' code there unless its operator trusts it (`--trust-reward-code`).
`WorkerPool.isolation` says which mode the workers run in.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

_SPAWN_EVENTS = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.system",
        "os.startfile",
        "subprocess.Popen",
        "pty.spawn",
    }
)
_SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg", "signal.pthread_kill"})
_LIMIT_EVENTS = frozenset({"resource.setrlimit", "resource.prlimit"})
_NET_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
    }
)
_LOCAL_FAMILIES = frozenset({int(socket.AF_UNIX)})
_EGRESS_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
_IP_FAMILIES = frozenset({int(socket.AF_INET), int(socket.AF_INET6)})

_trusted_depth = 0


@contextlib.contextmanager
def trusted_spawn() -> Iterator[None]:
    """Let *our own* grader code (e.g. `python_tests`) start a subprocess while the hook is on.

    Not a capability: user code in the same process could enter it too. It exists so built-in
    graders can run model-written code in a further-restricted child process.
    """
    global _trusted_depth
    _trusted_depth += 1
    try:
        yield
    finally:
        _trusted_depth -= 1


def _other_proc_path(path: Any, own_pid: str) -> bool:
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    if not isinstance(path, str) or "/proc/" not in path:
        return False
    parts = os.path.normpath(os.path.join(os.getcwd(), path) if not path.startswith("/") else path).split("/")
    return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_pid


def _check_egress(policy: Any, event: str, args: tuple, allow_network: bool) -> None:
    """Under a server's network policy: refuse any Unix socket connection, and (for a function
    with network) a connection or datagram to an address the policy does not allow."""
    from openrft.rewards.url_guard import approved

    sock = args[0] if args else None
    address = args[1] if len(args) > 1 else None
    family = sock.family if isinstance(sock, socket.socket) else None
    if family in _LOCAL_FAMILIES and event == "socket.connect":
        raise PermissionError("reward sandbox: connecting to Unix sockets is not allowed on this server")
    if not allow_network or family not in _IP_FAMILIES or not isinstance(address, tuple) or len(address) < 2:
        return
    host, port = str(address[0]), int(address[1])
    if host not in approved:
        policy.resolve(host, port)  # BlockedURL (a PermissionError) names the rule


_resolving = threading.local()


def _approve_listed_name(policy: Any, host: Any, port: Any) -> None:
    """A name the operator listed may resolve anywhere: resolve it now and let connections to its
    addresses through (the hook sees only the address at `socket.connect`)."""
    from openrft.rewards.url_guard import BlockedURL, approved, literal_ip, system_resolver

    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if getattr(_resolving, "on", False) or not isinstance(host, str) or literal_ip(host) is not None:
        return
    if not policy.host_listed(host):
        return
    _resolving.on = True  # our own lookup raises this event again
    try:
        approved.update(system_resolver(host, port if isinstance(port, int | str) else 0))
    except BlockedURL:
        pass
    finally:
        _resolving.on = False


def make_audit_hook(allow_network: bool, policy: Any = None) -> Any:
    """The audit hook function (see the module docstring for what it refuses); `policy`: the
    server's `url_guard.NetworkPolicy`, or None on the user's own machine."""
    own_pid = str(os.getpid())

    def hook(event: str, args: tuple) -> None:
        if _trusted_depth:
            return
        if event in _SPAWN_EVENTS:
            raise PermissionError(f"reward sandbox: starting processes is not allowed ({event})")
        if event in _SIGNAL_EVENTS:
            raise PermissionError(f"reward sandbox: sending signals is not allowed ({event})")
        if event in _LIMIT_EVENTS:
            raise PermissionError("reward sandbox: changing resource limits is not allowed")
        if event == "open" and args and _other_proc_path(args[0], own_pid):
            raise PermissionError(f"reward sandbox: other processes' /proc entries are hidden ({args[0]})")
        if policy is not None and allow_network and event == "socket.getaddrinfo" and args:
            _approve_listed_name(policy, args[0], args[1] if len(args) > 1 else 0)
        if policy is not None and event in _EGRESS_EVENTS:
            _check_egress(policy, event, args, allow_network)
        new_socket = event == "socket.__new__" and len(args) > 1
        if policy is not None and new_socket and args[1] not in _LOCAL_FAMILIES | _IP_FAMILIES:
            raise PermissionError("reward sandbox: only IP and Unix sockets are allowed on this server")
        if allow_network:
            return
        if event == "socket.__new__" and len(args) > 1 and args[1] not in _LOCAL_FAMILIES:
            raise PermissionError(
                "reward sandbox: network access is off for this reward (set allow_network: true in its spec)"
            )
        if event in _NET_EVENTS:
            sock = args[0] if args else None
            if isinstance(sock, socket.socket) and sock.family in _LOCAL_FAMILIES:
                return
            raise PermissionError(
                f"reward sandbox: network access is off for this reward ({event}; "
                "set allow_network: true in its spec)"
            )

    return hook


def install_audit_hook(allow_network: bool) -> None:
    """Install the hook for the rest of this process's life (audit hooks cannot be removed); the
    server's network policy, if any, is read from the environment now, before user code runs."""
    from openrft.rewards.url_guard import NetworkPolicy

    sys.addaudithook(make_audit_hook(allow_network, NetworkPolicy.from_env()))


def _set(limit: int, soft: int, hard: int | None = None) -> bool:
    hard = soft if hard is None else hard
    _, cur_hard = resource.getrlimit(limit)
    if cur_hard != resource.RLIM_INFINITY and hard > cur_hard:
        hard = cur_hard
    soft = min(soft, hard) if hard != resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(limit, (soft, hard))
    except (ValueError, OSError):
        return False
    return True


def apply_limits(memory_mb: int, cpu_s: int, fsize_mb: int, nproc: int | None) -> dict[str, bool]:
    """Set this process's resource limits; returns which ones took effect.

    ``nproc`` is the RLIMIT_NPROC value (the kernel counts all processes of the real user, so the
    parent passes "processes the user has now + a few"); None skips it (the parent passes None
    when it runs as root, whom the kernel exempts; a pids cgroup caps processes then).
    """
    done = {
        "memory": _set(resource.RLIMIT_AS, memory_mb * 2**20),
        "cpu": _set(resource.RLIMIT_CPU, cpu_s, cpu_s + 5),
        "fsize": _set(resource.RLIMIT_FSIZE, fsize_mb * 2**20),
        "core": _set(resource.RLIMIT_CORE, 0),
        "nproc": False,
    }
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-size write raises OSError instead
    if nproc is not None:
        done["nproc"] = _set(resource.RLIMIT_NPROC, nproc)
    return done


def join_cgroup(path: str | None) -> bool:
    """Move this process into the (pids) cgroup the parent made for it; False if that fails."""
    if not path:
        return False
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as fh:
            fh.write("0")  # 0 = the writing process
    except OSError:
        return False
    return True


def _pids_cgroup_root() -> str | None:
    v1 = "/sys/fs/cgroup/pids"
    if os.path.isfile(os.path.join(v1, "cgroup.procs")) and os.access(v1, os.W_OK):
        return v1
    v2 = "/sys/fs/cgroup"
    try:
        with open(os.path.join(v2, "cgroup.subtree_control")) as fh:
            enabled = "pids" in fh.read().split()
    except OSError:
        return None
    return v2 if enabled and os.access(v2, os.W_OK) else None


_cgroup_count = 0


def make_pids_cgroup(limit: int) -> str | None:
    """A fresh cgroup whose processes may number at most `limit` (the process cap that binds
    root too, which RLIMIT_NPROC does not); None where cgroups are not writable."""
    global _cgroup_count
    root = _pids_cgroup_root()
    if root is None:
        return None
    if _cgroup_count == 0:
        _remove_stale_cgroups(root)
    _cgroup_count += 1
    path = os.path.join(root, f"openrft-reward-{os.getpid()}-{_cgroup_count}")
    try:
        os.mkdir(path)
    except OSError:
        return None
    try:
        with open(os.path.join(path, "pids.max"), "w") as fh:
            fh.write(str(limit))
    except OSError:
        remove_cgroup(path)
        return None
    return path


def _remove_stale_cgroups(root: str) -> None:
    """Remove cgroups left by trainers that died without cleaning up (their pid is gone)."""
    try:
        names = [n for n in os.listdir(root) if n.startswith("openrft-reward-")]
    except OSError:
        return
    for name in names:
        try:
            owner = int(name.split("-")[2])
            os.kill(owner, 0)
        except ProcessLookupError:
            remove_cgroup(os.path.join(root, name))
        except (ValueError, IndexError, OSError):
            continue


def remove_cgroup(path: str | None) -> None:
    """Kill what is left in one of our cgroups (a worker's stray descendants) and remove it
    (best effort: retries for up to a second)."""
    if not path:
        return
    for _ in range(100):
        try:
            with open(os.path.join(path, "cgroup.procs")) as fh:
                pids = [int(p) for p in fh.read().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def user_process_count(uid: int | None = None) -> int:
    """How many processes the (real) user owns now, from /proc; 0 when /proc is unreadable."""
    uid = os.getuid() if uid is None else uid
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        count += int(line.split()[1]) == uid
                        break
        except (OSError, ValueError, IndexError):
            continue
    return count


# The hook, as source, for child processes of built-in graders (python_tests): no network, no
# processes, no signals, no limits, no other /proc entries; nothing trusted.
CHILD_HOOK_SOURCE = """
import os as _os, sys as _sys, socket as _socket
def _openrft_hook(event, args, _pid=str(_os.getpid()), _deny=frozenset(DENY)):
    if event in _deny or event.startswith("socket."):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open" and args and isinstance(args[0], str) and args[0].startswith("/proc/"):
        part = args[0].split("/")[2] if args[0].count("/") >= 2 else ""
        if part.isdigit() and part != _pid:
            raise PermissionError("sandbox: other processes are hidden")
_sys.addaudithook(_openrft_hook)
""".replace("DENY", repr(sorted(_SPAWN_EVENTS | _SIGNAL_EVENTS | _LIMIT_EVENTS)))
