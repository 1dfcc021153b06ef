"""Hostile reward functions: each ends in its defined outcome, is counted, and the run goes on.

One RewardSet runs every hostile function over two samples in each isolation mode: the bubblewrap
sandbox, `unshare` namespaces, and hooks only (the degraded mode leans on rlimits and the audit
hook alone). tests/integration/test_sandbox_escapes.py holds the escapes the sandbox must stop.
Network tests only ever target a loopback port served by the test itself.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrft.rewards import RewardScores, RewardSet, jail
from openrft.rewards.pool import namespace_prefix

HOSTILE = """
import ctypes, os, signal, socket, subprocess, time

def spin(prompt, completion, example):
    while True:
        pass

def sleepy(prompt, completion, example):
    time.sleep(10**6)

def alloc(prompt, completion, example):
    data = bytearray(4 * 2**30)
    return float(len(data) > 0)

def forky(prompt, completion, example):
    while True:
        os.fork()

def ctypes_forks(prompt, completion, example):
    # Bypasses the audit hook: only the process cap (pids cgroup or RLIMIT_NPROC) stops it.
    libc = ctypes.CDLL(None)
    n = 0
    for _ in range(100):
        pid = libc.fork()
        if pid == 0:
            libc.sleep(5)
            libc._exit(0)
        if pid < 0:
            break
        n += 1
    return float(n)

def shell(prompt, completion, example):
    subprocess.run(["true"])
    return 1.0

def net(prompt, completion, example):
    with socket.create_connection(("127.0.0.1", example["port"]), timeout=1):
        return 1.0

def any_socket(prompt, completion, example):
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    return 1.0

def net_ctypes(prompt, completion, example):
    # Bypasses the audit hook (libc directly): only a network namespace stops it.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(2, 1, 0)
    addr = (2).to_bytes(2, "little") + example["port"].to_bytes(2, "big") + bytes([127, 0, 0, 1]) + bytes(8)
    ok = libc.connect(fd, ctypes.c_char_p(addr), 16) == 0
    os.close(fd)
    return 1.0 if ok else 0.0

def secret(prompt, completion, example):
    found = "OPENRFT_TEST_SECRET" in os.environ
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    found = found or b"OPENRFT_TEST_SECRET" in fh.read()
            except OSError:
                pass
    return 1.0 if found else 0.0

def where(prompt, completion, example):
    cwd = os.getcwd()
    home_ok = os.environ["HOME"] == cwd and (cwd == "/tmp" or "openrft-rewards-" in cwd)
    home_ok = home_ok and os.environ.get("PWD", cwd) == cwd  # bwrap sets PWD after its chdir
    return 1.0 if home_ok and set(os.environ) <= {"PATH", "HOME", "TMPDIR", "PYTHONPATH", "LANG",
        "LC_ALL", "LC_CTYPE", "TZ", "PYTHONDONTWRITEBYTECODE", "PWD"} else 0.0

def nan(prompt, completion, example):
    return float("nan")

def inf(prompt, completion, example):
    return float("inf")

def huge(prompt, completion, example):
    return 1e30

def text(prompt, completion, example):
    return "0.5"

def not_applicable(prompt, completion, example):
    return None

def wrong_length(prompts, completions, **columns):
    return [1.0]

def exits(prompt, completion, example):
    os._exit(1)

def kills_itself(prompt, completion, example):
    os.kill(os.getpid(), signal.SIGKILL)

def segfault(prompt, completion, example):
    ctypes.string_at(0)

def deaf_sleep(prompt, completion, example):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(10**6)

def prints(prompt, completion, example):
    print("noise on stdout")
    os.write(1, b"raw noise on fd 1\\n")
    return 0.25
"""

NAMES = [line[4 : line.index("(")] for line in HOSTILE.splitlines() if line.startswith("def ")]
USER_ERRORS = {
    "spin": "timeout: no result within 0.5s",
    "sleepy": "timeout: no result within 0.5s",
    "alloc": "MemoryError",
    "forky": "starting processes is not allowed (os.fork)",
    "shell": "starting processes is not allowed (subprocess.Popen)",
    "net": "network access is off for this reward",
    "any_socket": "network access is off for this reward",
    "nan": "returned nan",
    "inf": "returned inf",
    "huge": "returned 1e+30",
    "text": "returned '0.5' (str)",
    "wrong_length": "must return a list of 2 values",
    "exits": "ended the worker process (exit status 1)",
    "kills_itself": "sending signals is not allowed",
    "deaf_sleep": "did not respond to the alarm and was killed",
}
HAVE_NAMESPACES = namespace_prefix(False) is not None
HAVE_SANDBOX = jail.available() is None


@pytest.fixture(scope="module", params=["sandbox", "namespaces", "hooks"])
def hostile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, loopback_port: int
) -> Iterator[tuple[str, RewardScores, RewardSet]]:
    mode = request.param
    if mode == "namespaces" and not HAVE_NAMESPACES:
        pytest.skip("unshare namespaces are not available here")
    if mode == "sandbox" and not HAVE_SANDBOX:
        pytest.skip(f"the bubblewrap sandbox is not available here: {jail.available()}")
    path = tmp_path_factory.mktemp("hostile") / "hostile.py"
    path.write_text(HOSTILE)
    specs = [{"name": n, "function": f"{path}:{n}", "timeout_s": 0.5} for n in NAMES]
    specs.append({"name": "net_allowed", "function": f"{path}:net", "allow_network": True})
    os.environ["OPENRFT_TEST_SECRET"] = "hunter2"
    try:
        rs = RewardSet(specs, max_error_rate=1.0, isolation=mode)
    finally:
        del os.environ["OPENRFT_TEST_SECRET"]
    try:
        examples = [{"port": loopback_port}, {"port": loopback_port}]
        scores = rs.score(["p", "p"], ["a", "b"], examples)
        yield mode, scores, rs
    finally:
        rs.close()


@pytest.mark.parametrize("name", sorted(USER_ERRORS))
def test_user_errors_score_zero_and_are_counted(
    hostile: tuple[str, RewardScores, RewardSet], name: str
) -> None:
    _, scores, _ = hostile
    assert scores.column(name) == [0.0, 0.0]
    assert scores.errors[name] == 2
    assert scores.infra_errors[name] == 0
    assert any(USER_ERRORS[name] in tb for tb in scores.tracebacks[name]), scores.tracebacks[name]
    assert scores.metrics()[f"rewards/{name}/errors"] == 2.0


def test_user_tracebacks_point_at_user_code(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, _ = hostile
    tb = scores.tracebacks["forky"][-1]
    assert "hostile.py" in tb and "in forky" in tb
    assert "worker.py" not in tb


def test_none_is_not_applicable(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, _ = hostile
    assert all(math.isnan(v) for v in scores.column("not_applicable"))
    assert scores.none["not_applicable"] == 2 and scores.errors["not_applicable"] == 0


def test_worker_death_by_signal_is_infra_retried_then_excluded(
    hostile: tuple[str, RewardScores, RewardSet],
) -> None:
    _, scores, _ = hostile
    assert all(math.isnan(v) for v in scores.column("segfault"))
    assert scores.infra_errors["segfault"] == 2 and scores.errors["segfault"] == 0
    assert scores.infra_retries["segfault"] == 2
    assert "SIGSEGV" in scores.tracebacks["segfault"][-1]


def test_secrets_and_environment_are_not_visible(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, _ = hostile
    assert scores.column("secret") == [0.0, 0.0]
    assert scores.column("where") == [1.0, 1.0]


def test_network_allowed_per_function(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, _ = hostile
    assert scores.column("net_allowed") == [1.0, 1.0]


def test_network_namespace_stops_libc_level_connect(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    mode, scores, _ = hostile
    if mode == "hooks":
        pytest.skip("without a network namespace, libc-level sockets bypass the audit hook (documented)")
    assert scores.column("net_ctypes") == [0.0, 0.0]


def test_process_cap_stops_libc_level_fork_bombs(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, rs = hostile
    limits = rs.isolation()[0]["limits"]
    if not (limits.get("pids_cgroup") or limits.get("nproc")):
        pytest.skip("no process cap binds here (root without writable cgroups): the audit hook alone")
    assert all(v < 20 for v in scores.column("ctypes_forks"))


def test_user_output_does_not_break_the_protocol(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, _ = hostile
    assert scores.column("prints") == [0.25, 0.25]


def test_hostile_values_cannot_blow_up_totals(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, scores, _ = hostile
    f_forks = scores.names.index("ctypes_forks")  # returns a count, not a hostile value
    finite = [v for row in scores.values for f, v in enumerate(row) if f != f_forks and not math.isnan(v)]
    assert max(abs(v) for v in finite) <= 1.0
    assert all(math.isfinite(t) for t in scores.total)


def test_the_set_keeps_working_after_all_that(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, _, rs = hostile
    again = rs.score(["p"], ["x"], [{"port": 1}], ["prints", "huge"])
    assert again.column("prints") == [0.25]
    assert again.errors["huge"] == 1
    assert rs.stats()["huge"]["calls"] == 3


def test_memory_cap_refuses_4gb_quickly(hostile: tuple[str, RewardScores, RewardSet]) -> None:
    _, _, rs = hostile
    t0 = time.perf_counter()
    scores = rs.score(["p"], ["x"], [{}], ["alloc"])
    assert time.perf_counter() - t0 < 2.0
    assert scores.errors["alloc"] == 1 and "MemoryError" in scores.tracebacks["alloc"][-1]


def _state(pid: int) -> str:
    """A process's state letter ('Z': a zombie, finished); '' when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2 :].split()[0]


def _descendants(pid: int) -> set[int]:
    """The processes below `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            children.setdefault(int(stat[stat.rfind(")") + 2 :].split()[1]), []).append(int(entry))
        except (OSError, ValueError):
            continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.parametrize("mode", ["sandbox", "namespaces"])
def test_worker_killed_from_outside_is_retried_without_penalty(tmp_path: Path, mode: str) -> None:
    if mode == "sandbox" and not HAVE_SANDBOX:
        pytest.skip(f"the bubblewrap sandbox is not available here: {jail.available()}")
    if mode == "namespaces" and not HAVE_NAMESPACES:
        pytest.skip("unshare namespaces are not available here")
    (tmp_path / "r.py").write_text(
        "import time\ndef slow(prompt, completion, example):\n    time.sleep(1.5)\n    return 0.75\n"
    )
    with RewardSet([{"name": "r", "function": "r.py:slow"}], tmp_path, pool_size=1, isolation=mode) as rs:
        future = rs.submit(["p"], ["c"], [{}])
        time.sleep(0.7)  # the warm worker is inside the call by now
        killed = set(rs.worker_pids())
        inside = set().union(*(_descendants(pid) for pid in killed))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)  # in the sandbox: the outer bwrap; everything inside dies too
        scores = future.result(timeout=30)
        left = [(pid, _state(pid)) for pid in inside if _state(pid) not in ("", "Z")]
        assert left == []  # no orphan survives its worker
    assert scores.column("r") == [0.75]
    assert scores.errors["r"] == 0 and scores.infra_errors["r"] == 0
    assert scores.infra_retries["r"] == 1
