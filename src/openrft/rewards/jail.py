"""The strong reward sandbox: each reward worker runs inside bubblewrap (``bwrap``).

Why bubblewrap and not our own namespace code: it is the sandbox Flatpak and many build systems
run untrusted code in, small enough to audit, and packaged everywhere (Debian: ``bubblewrap``);
OpenRFT only chooses what the sandbox sees. What a worker gets:

- its own user namespace, in which it is an unprivileged uid/gid with no capabilities: the
  caller's own uid when OpenRFT runs as an ordinary user; ``nobody`` when it runs as root (then
  an outer bwrap, as root, builds the file view, and ``setpriv`` drops to ``nobody`` before an
  inner bwrap makes the user namespace, so the worker is ``nobody`` on the host too);
  ``--disable-userns`` forbids nesting another one;
- new PID (its own ``/proc``: no other process exists for it), IPC, UTS and cgroup namespaces,
  and a new network namespace (no interface but a down loopback) unless the reward may use the
  network;
- a read-only view of only what the function needs: ``/usr/lib`` (shared libraries), the
  Python prefix and site-packages, OpenRFT's package, the reward's own source folder, plus
  ``/etc`` resolver and CA files for network rewards; no shell, no ``/usr/bin``, no home, no
  data dir, no API key, no other tenant's files; a private size-capped ``/tmp`` (also its
  HOME and working directory);
- ``no_new_privs`` and the seccomp filter of `openrft.rewards.seccomp` (mount, setns, unshare,
  ptrace, bpf, keyctl and friends answer EPERM);
- the resource limits of `openrft.rewards.sandbox` (set by the worker itself) and, as root, a
  pids cgroup that the worker joins before the sandbox starts (the ``sh`` trampoline below).

`available()` runs the real sandbox once per process and says why it does not work where it
does not (no bwrap, no libseccomp, user namespaces disabled, macOS).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import openrft

PKG_ROOT = str(Path(openrft.__file__).resolve().parent.parent)
SANDBOX_TMP = "/tmp"
_SYSTEM_READ_ONLY = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/share/zoneinfo", "/etc/localtime")
_NETWORK_READ_ONLY = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/etc/pki",
)
# Host paths that are never bound, even when a Python path lies under them as a whole.
_NEVER = ("/", "/root", "/home", "/etc", "/var", "/proc", "/sys", "/dev", "/tmp", "/run", "/srv", "/mnt")


def sandbox_ids() -> tuple[int, int]:
    """(uid, gid) the sandboxed worker runs as: the caller's, or nobody's when the caller is root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _real(path: str) -> str | None:
    try:
        real = os.path.realpath(path)
    except OSError:
        return None
    return real if os.path.exists(real) else None


def python_paths() -> list[str]:
    """The interpreter, its prefixes and import roots (without the working directory, which is
    on `sys.path` for ``python -m`` and may be a data folder)."""
    cwd = os.path.realpath(os.getcwd())
    paths = [sys.executable, os.path.realpath(sys.executable), sys.prefix, sys.exec_prefix, PKG_ROOT]
    if sys.base_prefix not in ("/usr", "/"):  # Debian's python: /usr/lib is bound already
        paths += [sys.base_prefix, sys.base_exec_prefix]
    paths += [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) != cwd]
    return list(dict.fromkeys(r for p in paths if (r := _real(p)) and r not in _NEVER))


def view(python: Sequence[str], sources: Sequence[str]) -> list[str]:
    """The folders to bind read-only: the `python` paths that do not hold one of the `sources`
    (a source folder is bound by itself, so that the way to it inside the sandbox runs through
    folders made by bwrap, open to all, never through a host folder the sandbox user may not
    enter), and the sources."""
    real_sources = [r for s in sources if (r := _real(s))]
    kept = [p for p in python if not any(_inside(s, p) for s in real_sources)]
    return minimal_roots([*kept, *real_sources])


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def minimal_roots(paths: Iterable[str]) -> list[str]:
    """Existing real paths, without those inside another one of the list or refused by `_NEVER`."""
    found = sorted({r for p in paths if (r := _real(p)) and r not in _NEVER})
    roots: list[str] = []
    for path in found:
        if not any(_inside(path, r) for r in roots):
            roots.append(path)
    return roots


def readable_by(path: str, uid: int, gid: int) -> bool:
    """Whether `uid`/`gid` (without supplementary groups) may read `path`, and list and enter it
    when it is a folder, by its mode bits alone (the checks the kernel makes inside the sandbox
    once the path is bound there; its host ancestors do not matter)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
    bits = (st.st_mode >> 6) if st.st_uid == uid else (st.st_mode >> 3) if st.st_gid == gid else st.st_mode
    return uid == 0 or (bits & need) == need


STAGE_MAX_FILE = 1 << 20
STAGE_MAX_TOTAL = 64 << 20
_STAGE_SKIP = frozenset({"__pycache__", ".git", ".venv", "node_modules"})


def stage(folder: str, into: str) -> str:
    """Copy the readable parts of a source folder that the sandbox user cannot read (a reward
    next to a config in a mode-0700 folder, run as root) into `into`, readable by everyone; the
    copy is bound at the folder's path. Files over 1 MiB and tool folders are left out; over
    64 MiB in all is refused (`ValueError`): the reward's code belongs in a small folder."""
    total = 0

    def skip(directory: str, names: list[str]) -> set[str]:
        nonlocal total
        left_out = set()
        for name in names:
            full = os.path.join(directory, name)
            if name in _STAGE_SKIP or os.path.islink(full):
                left_out.add(name)
            elif os.path.isfile(full):
                size = os.path.getsize(full)
                if size > STAGE_MAX_FILE:
                    left_out.add(name)
                else:
                    total += size
        if total > STAGE_MAX_TOTAL:
            raise ValueError(f"{folder}: over {STAGE_MAX_TOTAL >> 20} MiB of files to copy into the sandbox")
        return left_out

    target = os.path.join(into, "src-" + str(abs(hash(folder))))
    shutil.copytree(folder, target, ignore=skip, copy_function=shutil.copyfile)
    for root, _dirs, files in os.walk(target):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return target


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _view_args(read_only: Sequence[str], network: bool, staged: Mapping[str, str]) -> list[str]:
    """bwrap arguments for the file view: read-only binds (of a `stage`d copy where `staged`
    names one), the /lib links."""
    args: list[str] = []
    for link in ("lib", "lib64", "lib32"):
        host = f"/{link}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    system = [p for p in (*_SYSTEM_READ_ONLY, *(_NETWORK_READ_ONLY if network else ())) if os.path.exists(p)]
    made: set[str] = set()
    for path in [*system, *minimal_roots(read_only)]:
        for parent in _ancestors(path):
            if parent not in made and not os.path.islink(parent):
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", staged.get(path, path), path]
    return args


def command(
    argv: Sequence[str],
    read_only: Sequence[str],
    *,
    network: bool,
    seccomp_fd: int,
    tmp_mb: int,
    staged: Mapping[str, str] | None = None,
) -> list[str]:
    """The command line that runs `argv` in the sandbox (see the module docstring); `staged`
    maps folders of `read_only` to the copies to bind in their place."""
    staged = staged or {}
    uid, gid = sandbox_ids()
    bwrap, setpriv = shutil.which("bwrap") or "bwrap", shutil.which("setpriv") or "setpriv"
    namespaces = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    namespaces += [] if network else ["--unshare-net"]
    common = ["--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
    common += ["--perms", "1777", "--size", str(tmp_mb * 2**20), "--tmpfs", SANDBOX_TMP]
    user = ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--disable-userns"]
    inner = [*user, "--chdir", SANDBOX_TMP, "--seccomp", str(seccomp_fd), "--", *argv]
    if os.geteuid() != 0:
        view = _view_args(read_only, network, staged)
        return [bwrap, *namespaces, *common, *view, *inner]
    # As root: the outer bwrap (root) builds the view, which may include root-only paths
    # (a Python under /root); setpriv drops to nobody; the inner bwrap makes the user namespace.
    view = _view_args([*read_only, bwrap, setpriv], network, staged)
    drop = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]
    drop += ["--bounding-set=-all", "--no-new-privs", "--"]
    inner_bwrap = [bwrap, "--die-with-parent", "--dev-bind", "/", "/", *inner]
    return [bwrap, *namespaces, *common, *view, "--chdir", SANDBOX_TMP, "--", *drop, *inner_bwrap]


def with_cgroup(cmd: list[str], cgroup: str | None) -> list[str]:
    """Prefix `cmd` so that its first process joins `cgroup` before anything else runs (its
    descendants, the sandbox included, are then counted by the cgroup's pids.max)."""
    if not cgroup:
        return cmd
    procs = os.path.join(cgroup, "cgroup.procs")
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *cmd]


_probe: dict[bool, str | None] = {}
_probe_lock = threading.Lock()


def available(network: bool = False) -> str | None:
    """None when the sandbox works here; else why not (one line). Runs it once per process."""
    with _probe_lock:
        if network not in _probe:
            _probe[network] = _try(network)
        return _probe[network]


def _try(network: bool) -> str | None:
    from openrft.rewards import seccomp

    if sys.platform != "linux":
        return f"bubblewrap needs Linux (this is {sys.platform})"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        fd = seccomp.program_fd()
    except OSError as e:
        return f"the seccomp filter cannot be built ({e}; install libseccomp2)"
    code = "import openrft.rewards.worker"
    cmd = command([sys.executable, "-c", code], python_paths(), network=network, seccomp_fd=fd, tmp_mb=16)
    try:
        done = subprocess.run(cmd, pass_fds=(fd,), capture_output=True, timeout=60, env=_probe_env())
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap did not start ({e})"
    finally:
        os.close(fd)
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return f"bubblewrap failed here ({why[0][:300]})"
    return None


def sandbox_path() -> str:
    """$PATH inside the sandbox: the interpreter's folder (nothing else there runs)."""
    return os.path.dirname(sys.executable)


def _probe_env() -> dict[str, str]:
    return {"PATH": sandbox_path(), "PYTHONPATH": PKG_ROOT, "HOME": SANDBOX_TMP}
