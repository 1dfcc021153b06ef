"""The hostile-tenant corpus: reward functions that try to escape the bubblewrap sandbox.

Each probe returns 1.0 when its escape WORKED and 0.0 when it was stopped (raising counts as
stopped too: a user error, scored 0). Every probe must score 0 and the set must keep scoring.
The corpus runs as this process's user (root here, so the worker is `nobody`) and, in a child
process, as an ordinary user (uid 1000 of a user namespace: the non-root code path, one bwrap
with its own user namespace). The secrets and targets are made by the test: a fake data dir
(API key file, SQLite file, another tenant's reward), a host folder open to everyone for
writing, an environment secret, a loopback listener standing in for the server's port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrft.rewards import RewardSet, jail

pytestmark = pytest.mark.skipif(
    jail.available() is not None, reason=f"the bubblewrap sandbox is not available here: {jail.available()}"
)

PROBES = r"""
import ctypes, os, socket, struct

libc = ctypes.CDLL(None, use_errno=True)


def _readable(path):
    try:
        with open(path, "rb") as fh:
            return len(fh.read(64)) >= 0
    except OSError:
        return False


def reads_the_api_key(prompt, completion, example):
    return float(_readable(example["data_dir"] + "/api_key"))


def reads_the_database(prompt, completion, example):
    return float(_readable(example["data_dir"] + "/openrft.db"))


def lists_the_data_dir(prompt, completion, example):
    try:
        return float(len(os.listdir(example["data_dir"])) > 0)
    except OSError:
        return 0.0


def reads_another_tenants_reward(prompt, completion, example):
    return float(_readable(example["other_reward"]))


def appends_to_another_tenants_reward(prompt, completion, example):
    try:
        with open(example["other_reward"], "a") as fh:
            fh.write("\nEVIL = 1\n")
        return 1.0
    except OSError:
        return 0.0


def reads_etc_shadow(prompt, completion, example):
    return float(_readable("/etc/shadow"))


def reads_the_trainers_environment(prompt, completion, example):
    found = "OPENRFT_ESCAPE_SECRET" in os.environ
    for pid in [example["trainer_pid"], *[p for p in os.listdir("/proc") if p.isdigit()]]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                found = found or b"OPENRFT_ESCAPE_SECRET" in fh.read()
        except OSError:
            pass
    return float(found)


def sees_other_processes(prompt, completion, example):
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    return float(example["trainer_pid"] in pids or len(pids) > 8)


def unmounts_proc(prompt, completion, example):
    return float(libc.umount2(b"/proc", 2) == 0)


def mounts_a_tmpfs(prompt, completion, example):
    return float(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0)


def runs_libc_system(prompt, completion, example):
    status = libc.system(b"echo pwned > " + example["outside"].encode() + b"/system")
    return float(status == 0 or os.path.exists(example["outside"] + "/system"))


def writes_outside_its_sandbox(prompt, completion, example):
    try:
        with open(example["outside"] + "/written", "w") as fh:
            fh.write("pwned")
        return 1.0
    except OSError:
        return 0.0


def writes_its_own_source_folder(prompt, completion, example):
    try:
        with open(os.path.join(os.path.dirname(__file__), "dropped.py"), "w") as fh:
            fh.write("pwned")
        return 1.0
    except OSError:
        return 0.0


def connects_to_the_servers_port_via_libc(prompt, completion, example):
    fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM, under the audit hook
    if fd < 0:
        return 0.0
    addr = struct.pack("!HH4s8x", 2, example["port"], socket.inet_aton("127.0.0.1"))
    return float(libc.connect(fd, ctypes.c_char_p(addr), len(addr)) == 0)


def connects_to_the_servers_port(prompt, completion, example):
    try:
        socket.create_connection(("127.0.0.1", example["port"]), timeout=1).close()
        return 1.0
    except OSError:
        return 0.0


def joins_pid_1s_network_namespace(prompt, completion, example):
    try:
        fd = os.open("/proc/1/ns/net", os.O_RDONLY)
    except OSError:
        return 0.0
    return float(libc.setns(fd, 0x40000000) == 0)


def makes_a_user_namespace(prompt, completion, example):
    return float(libc.unshare(0x10000000) == 0)


def clones_into_a_new_namespace(prompt, completion, example):
    return float(libc.unshare(0x00020000) == 0 or libc.unshare(0x20000000) == 0)


def ptraces_pid_1(prompt, completion, example):
    return float(libc.ptrace(16, 1, None, None) == 0)  # PTRACE_ATTACH


def kills_the_trainer(prompt, completion, example):
    return float(libc.kill(example["trainer_pid"], 0) == 0)


def uses_keyctl(prompt, completion, example):
    return float(libc.syscall(250, 0, 0, 0, 0, 0) >= 0 or ctypes.get_errno() != 1)  # keyctl: EPERM


def loads_a_bpf_program(prompt, completion, example):
    return float(libc.syscall(321, 0, 0, 0) >= 0 or ctypes.get_errno() != 1)  # bpf: EPERM


def chroots(prompt, completion, example):
    return float(libc.chroot(b"/tmp") == 0)


def is_root_or_has_capabilities(prompt, completion, example):
    with open("/proc/self/status") as fh:
        caps = [line.split()[1] for line in fh if line.startswith("CapEff")]
    return float(os.getuid() == 0 or os.getgid() == 0 or caps != ["0000000000000000"])


def has_no_new_privs_off(prompt, completion, example):
    with open("/proc/self/status") as fh:
        lines = [line for line in fh if line.startswith(("NoNewPrivs", "Seccomp"))]
    flags = {line.split(":")[0]: line.split()[1] for line in lines}
    return float(flags.get("NoNewPrivs") != "1" or flags.get("Seccomp") != "2")


def control_reads_its_own_source_and_writes_tmp(prompt, completion, example):
    with open(__file__) as fh:
        fh.read()
    with open("/tmp/scratch", "w") as fh:
        fh.write("ok")
    return 0.0
"""

NAMES = [
    line[4 : line.index("(")] for line in PROBES.splitlines() if line.startswith("def ") and line[4] != "_"
]


def run_corpus(folder: Path, example: dict) -> dict[str, list]:
    """Score every probe twice; {name: [values], "errors": ...} (JSON-able).

    Only ever in the sandbox (required here: no fallback): run as root without it, probes such
    as `unmounts_proc` and `mounts_a_tmpfs` would act on this machine itself."""
    specs = [{"name": n, "function": f"{folder}/probes.py:{n}", "timeout_s": 5} for n in NAMES]
    with RewardSet(specs, max_error_rate=1.0, pool_size=1, isolation="sandbox") as rs:
        scores = rs.score(["p", "p"], ["a", "b"], [example, example])
        again = rs.score(["p"], ["c"], [example])
        return {
            "values": {n: scores.column(n) for n in NAMES},
            "errors": {n: scores.errors[n] for n in NAMES},
            "tracebacks": {n: scores.tracebacks[n][-1:] for n in NAMES},
            "again": again.column(NAMES[-1]),
            "mode": rs.isolation()[0]["mode"],
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, loopback_port: int) -> Iterator[tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("escape")
    data = root / "data"
    (data / "rewards" / "other" / "victim").mkdir(parents=True)
    (data / "api_key").write_text("ork-secret\n")
    os.chmod(data / "api_key", 0o600)
    (data / "openrft.db").write_text("SQLite format 3\0")
    victim = data / "rewards" / "other" / "victim" / "v1.py"
    victim.write_text("def score(p, c, e):\n    return 1.0\n")
    for path in (data, data / "openrft.db", victim, victim.parent, victim.parent.parent, data / "rewards"):
        os.chmod(
            path, 0o755 if path.is_dir() else 0o644
        )  # readable by anyone on the host: only the view stops it
    outside = root / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)
    mine = root / "tenant"
    mine.mkdir()
    (mine / "probes.py").write_text(PROBES)
    example = {
        "data_dir": str(data),
        "other_reward": str(victim),
        "outside": str(outside),
        "port": loopback_port,
        "trainer_pid": os.getpid(),
    }
    os.environ["OPENRFT_ESCAPE_SECRET"] = "hunter2"
    try:
        yield mine, example
    finally:
        del os.environ["OPENRFT_ESCAPE_SECRET"]


def _check(result: dict, example: dict) -> None:
    escaped = {n: v for n, v in result["values"].items() if v != [0.0, 0.0]}
    assert escaped == {}, {n: result["tracebacks"][n] for n in escaped}
    # probes that report a state (not an attempt) must run: an error there would hide a failure
    for name in ("control_reads_its_own_source_and_writes_tmp", "is_root_or_has_capabilities"):
        assert result["errors"][name] == 0, result["tracebacks"][name]
    for name in ("has_no_new_privs_off", "sees_other_processes"):
        assert result["errors"][name] == 0, result["tracebacks"][name]
    assert result["again"] == [0.0]  # the set keeps scoring after every attempt
    assert result["mode"] == "sandbox"
    assert sorted(os.listdir(example["outside"])) == []
    assert "EVIL" not in Path(example["other_reward"]).read_text()


def test_every_escape_fails_inside_the_sandbox(world: tuple[Path, dict]) -> None:
    folder, example = world
    result = run_corpus(folder, example)
    _check(result, example)
    assert not (folder / "dropped.py").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_every_escape_fails_when_openrft_runs_as_an_ordinary_user(world: tuple[Path, dict]) -> None:
    folder, example = world
    # uid 1000 in a user namespace: OpenRFT takes its non-root path (one bwrap, its own user
    # namespace, the caller's uid). The probes' host files stay root's, as for a real other user.
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from test_sandbox_escapes import run_corpus; from pathlib import Path; "
        "print(json.dumps(run_corpus(Path(sys.argv[2]), json.loads(sys.argv[3]))))"
    )
    cmd = ["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c", code]
    cmd += [str(Path(__file__).parent), str(folder), json.dumps(example)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _check(result, example)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the copy is made when the sandbox user differs from the caller"
)
def test_a_reward_file_only_root_can_read_is_copied_for_the_sandbox_and_stays_read_only(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    os.chmod(folder, 0o755)
    source = folder / "r.py"
    source.write_text(
        "def f(prompt, completion, example):\n"
        "    try:\n        open(__file__, 'a').write('#')\n        return 1.0\n"
        "    except OSError:\n        return 0.5\n"
    )
    os.chmod(source, 0o600)
    with RewardSet([{"name": "f", "function": f"{source}:f"}], pool_size=1, isolation="sandbox") as rs:
        assert rs.score(["p"], ["c"], [{}]).column("f") == [0.5]
    assert source.read_text().endswith("return 0.5\n")
