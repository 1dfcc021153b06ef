"""The seccomp filter of the reward sandbox, compiled by libseccomp and loaded by bubblewrap.

Why libseccomp (through ctypes) and not a hand-written BPF program: libseccomp is the library
that systemd, Docker, Flatpak and bubblewrap's own users compile their filters with; it knows
each architecture's syscall numbers and closes the x32 and foreign-ABI holes (a syscall made
through another ABI is killed, not allowed). It ships with every Debian-family system (apt
depends on it). We only choose the rules.

The filter allows everything except, with EPERM (so a probing reward gets an error, not a kill):

- mounting and namespace changes: mount, umount2, pivot_root, chroot, setns, unshare, and
  clone/clone3 that ask for a new namespace (clone3 answers ENOSYS, so libc falls back to clone,
  whose flags a filter can read);
- looking into or driving other processes: ptrace, process_vm_readv/writev, pidfd_getfd, kcmp;
- kernel attack surface a reward never needs: bpf, keyctl/add_key/request_key, perf_event_open,
  userfaultfd, io_uring, the new mount API, open_by_handle_at, kernel modules, kexec, reboot,
  swap, clocks, syslog, quotactl, acct, personality, iopl/ioperm;
- pushing characters into a terminal (ioctl TIOCSTI).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

DENIED_SYSCALLS = (
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "quotactl",
    "acct",
    "personality",
    "iopl",
    "ioperm",
    "fanotify_init",
    "lookup_dcookie",
    "vhangup",
    "sethostname",
    "setdomainname",
)
# clone flags that create namespaces: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
# (CLONE_NEWTIME exists only for unshare and clone3, both refused whole)
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
TIOCSTI = 0x5412

_ACT_ALLOW = 0x7FFF0000
_CMP_EQ = 4
_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _lib() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _add(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a syscall on this architecture (e.g. iopl on arm64)
        return
    array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc != 0:
        raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")


@functools.cache
def filter_program() -> bytes | None:
    """The compiled BPF program (raw ``struct sock_filter`` array, as ``bwrap --seccomp`` reads
    it), or None when libseccomp is not installed."""
    lib = _lib()
    if lib is None:
        return None
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        return None
    try:
        eperm = _act_errno(errno.EPERM)
        for name in DENIED_SYSCALLS:
            _add(lib, ctx, eperm, name)
        for flag in CLONE_NAMESPACE_FLAGS:
            _add(lib, ctx, eperm, "clone", _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        _add(lib, ctx, _act_errno(errno.ENOSYS), "clone3")
        _add(lib, ctx, eperm, "ioctl", _ArgCmp(1, _CMP_MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
        fd = os.memfd_create("openrft-seccomp-export", 0)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def program_fd() -> int:
    """A fresh readable file descriptor holding `filter_program()` (bwrap reads it to the end;
    the caller passes it to the child and closes it after the start)."""
    program = filter_program()
    if program is None:
        raise OSError("libseccomp is not installed")
    fd = os.memfd_create("openrft-seccomp", 0)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
