"""The job worker: a thread of the server process that runs queued jobs in child processes.

Each tick (every `poll_interval_s`, or at once when woken) it
1. heartbeats the jobs it runs,
2. collects finished training processes and records how they ended (one killed by a signal the
   server did not send, e.g. by the OOM killer, is retried from its last checkpoint:
   `queue.retry`),
3. stops processes whose job was cancelled or paused: SIGTERM to the training process alone
   (it finishes its current step and writes a checkpoint, `openrft.jobs.child`), SIGKILL to its
   whole process group if it has not exited `stop_grace_s` seconds later,
4. claims queued jobs while it has free slots (`max_concurrent` training jobs at once), and
5. every 30 s, re-queues jobs left running by a worker that died (`queue.recover`).

On `stop()` (server shutdown) the running jobs are stopped the same way and put back in the
queue: the next server resumes them from their last checkpoint (a job that finished its last
step meanwhile is recorded as succeeded).

A training process starts with a scrubbed environment (`job_environment`): the few variables
the engine needs, the operator's `job_env`, the reward variables the operator allow-listed, and
the server's outbound network policy for the HTTP graders (`openrft.rewards.url_guard`) and the
reward workers' isolation (the bubblewrap sandbox, required, where it works); never the API key
nor any other variable of the server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from openrft.fsutil import write_json_atomic
from openrft.jobs import procs, queue
from openrft.jobs.child import COMPARE_DIR, DEFAULT_STOP_GRACE_S, RESULT
from openrft.rewards.pool import ISOLATION_ENV
from openrft.rewards.url_guard import POLICY_ENV, NetworkPolicy
from openrft.server.store import Store

log = logging.getLogger("openrft.jobs")

# What a training process keeps of the server's environment (besides `job_env` and the
# allow-listed reward variables): paths, locale, caches, thread counts, accelerator settings.
JOB_ENV_KEEP = frozenset(
    {
        *("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"),
        *("OPENRFT_HOME", "OPENRFT_CPU_KERNELS", "OPENRFT_KEEP_FREED_MEMORY", "OPENRFT_HUGE_PAGES"),
        *("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"),
        *("XDG_CACHE_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "GLIBC_TUNABLES", "TOKENIZERS_PARALLELISM"),
        *("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"),
        *("CUDA_VISIBLE_DEVICES", "CUDA_HOME", "LD_LIBRARY_PATH", "PYTORCH_CUDA_ALLOC_CONF"),
    }
)
JOB_ENV_PREFIXES = ("LC_", "MALLOC_")
_NEVER = frozenset({"OPENRFT_API_KEY"})


def job_environment(
    server_env: Mapping[str, str],
    job_env: Mapping[str, str],
    reward_env: Sequence[str],
    network: NetworkPolicy,
    reward_isolation: str = "sandbox",
) -> dict[str, str]:
    """The whole environment of a training process (see the module docstring); its reward workers
    run in `reward_isolation` (`openrft.rewards.pool`), whatever the server's own environment says."""
    env = {
        k: v
        for k, v in server_env.items()
        if (k in JOB_ENV_KEEP or k.startswith(JOB_ENV_PREFIXES) or k in reward_env) and k not in _NEVER
    }
    env.setdefault("PATH", os.defpath)
    env.update({k: v for k, v in job_env.items() if k not in _NEVER})
    env.update(PYTHONUNBUFFERED="1")
    env[POLICY_ENV] = network.to_env()
    env[ISOLATION_ENV] = reward_isolation
    return env


@dataclass
class Running:
    job_id: str
    run_dir: Path
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]
    signalled_at: float | None = None
    killed: bool = False


class JobWorker:
    """Runs up to `max_concurrent` jobs of `store` at once, each in its own process group."""

    def __init__(
        self,
        store: Store,
        *,
        max_concurrent: int = 1,
        poll_interval_s: float = 0.5,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        max_attempts: int = 3,
        env: dict[str, str] | None = None,
        reward_env: Sequence[str] = (),
        network: NetworkPolicy | None = None,
        reward_isolation: str = "sandbox",
    ) -> None:
        self.store = store
        self.max_concurrent = max_concurrent
        self.poll_interval_s = poll_interval_s
        self.stop_grace_s = stop_grace_s  # after SIGTERM: time for a step and a checkpoint, then SIGKILL
        self.max_attempts = max_attempts
        self.env = env or {}
        self.reward_env = tuple(reward_env)  # allow-listed variables jobs' reward specs may name
        self.reward_isolation = reward_isolation  # how the jobs' reward workers are isolated
        self.network = network or NetworkPolicy()  # outbound rules of the jobs' HTTP graders
        self.me = procs.identity()
        self.running: dict[str, Running] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recover = 0.0
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover jobs of dead workers, then start the polling thread."""
        recovered = queue.recover(
            self.store, me=self.me, grace_s=self.stop_grace_s, max_attempts=self.max_attempts
        )
        if recovered:
            log.warning("re-queued interrupted jobs: %s", ", ".join(recovered))
        self._last_recover = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="openrft-job-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (after a job was created, cancelled, paused or resumed)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread; stop running jobs and put them back in the queue (or honour a pending
        cancel/pause)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for run in list(self.running.values()):
                if run.signalled_at is None:  # a second SIGTERM would stop a paused job mid-step
                    self._stop_cleanly(run)
            deadline = time.monotonic() + self.stop_grace_s
            for run in list(self.running.values()):
                try:
                    run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill(run)
                    run.proc.wait()
                job = self.store.get_job(run.job_id) or {}
                self._close(run)
                status, error = outcome(
                    run.proc.returncode,
                    read_result(run.run_dir),
                    job.get("requested"),
                    run.run_dir,
                    queue.job_kind(job) if job else "train",
                )
                if status == "retry":  # stopped for the shutdown: the next server resumes it
                    status, error = "queued", None
                queue.finish(self.store, run.job_id, status, error)
                log.info("job %s: server stopping, now %s", run.job_id, status)
            self.running.clear()

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self.tick()
            except Exception:
                log.exception("job worker tick failed")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        """One pass: heartbeat, collect, stop what was asked to stop, start what fits."""
        queue.heartbeat(self.store, self.me)
        for run in list(self.running.values()):
            if run.proc.poll() is not None:
                self._collect(run)
        self._handle_requests()
        while len(self.running) < self.max_concurrent and not self._stop.is_set():
            job = queue.claim(self.store, self.me)
            if job is None:
                break
            self._spawn(job)
        if time.monotonic() - self._last_recover > 30:
            self._last_recover = time.monotonic()
            queue.recover(self.store, me=self.me, grace_s=self.stop_grace_s, max_attempts=self.max_attempts)

    def _handle_requests(self) -> None:
        if not self.running:
            return
        marks = ",".join("?" * len(self.running))
        rows = self.store.query(
            f"SELECT id, requested FROM jobs WHERE id IN ({marks}) AND requested IS NOT NULL",
            tuple(self.running),
        )
        now = time.monotonic()
        for row in rows:
            run = self.running[row["id"]]
            if run.signalled_at is None:
                what, pid = row["requested"], run.proc.pid
                log.info(
                    "job %s: %s requested, stopping pid %s after its current step", run.job_id, what, pid
                )
                self._stop_cleanly(run)
                run.signalled_at = now
            elif not run.killed and now - run.signalled_at > self.stop_grace_s:
                log.warning(
                    "job %s: still running %g s after SIGTERM; SIGKILL", run.job_id, self.stop_grace_s
                )
                self._kill(run)
                run.killed = True

    # -- processes --------------------------------------------------------------------------------

    def _spawn(self, job: dict[str, Any]) -> None:
        run_dir = Path(job["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        job_file = run_dir / "job.json"
        spec = {
            "job_id": job["id"],
            "kind": queue.job_kind(job),
            "config": job["config"],
            "run_dir": str(run_dir),
            "trackers": job["trackers"],
            "parent_pid": os.getpid(),
            "stop_grace_s": self.stop_grace_s,
        }
        write_json_atomic(job_file, spec)
        log_file = queue.job_log_path(run_dir).open("ab")
        log_file.write(
            f"--- attempt {job['attempts']} started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode()
        )
        log_file.flush()
        env = job_environment(os.environ, self.env, self.reward_env, self.network, self.reward_isolation)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "openrft.jobs.child", str(job_file)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=run_dir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            log_file.close()
            queue.finish(self.store, job["id"], "failed", f"could not start the training process: {e}")
            return
        queue.set_process(self.store, job["id"], proc.pid, procs.start_time(proc.pid))
        self.running[job["id"]] = Running(job["id"], run_dir, proc, log_file)
        log.info("job %s: started pid %s (attempt %s)", job["id"], proc.pid, job["attempts"])

    def _stop_cleanly(self, run: Running) -> None:
        """SIGTERM to the training process alone: it stops after its current step, with a checkpoint
        (its reward workers and other helpers keep running until then)."""
        if run.proc.poll() is None:
            procs.signal_process(run.proc.pid, signal.SIGTERM)

    def _kill(self, run: Running) -> None:
        """SIGKILL to the training process's whole group."""
        if run.proc.poll() is None:
            procs.signal_group(run.proc.pid, signal.SIGKILL)

    def _close(self, run: Running) -> None:
        run.log_file.write(f"--- process exited with code {run.proc.returncode} ---\n".encode())
        run.log_file.close()

    def _collect(self, run: Running) -> None:
        """Record how a finished training process ended."""
        self.running.pop(run.job_id, None)
        self._close(run)
        job = self.store.get_job(run.job_id) or {}
        result = read_result(run.run_dir)
        kind = queue.job_kind(job) if job else "train"
        status, error = outcome(run.proc.returncode, result, job.get("requested"), run.run_dir, kind)
        if status == "retry" and run.signalled_at is not None:
            status, error = "queued", None  # stopped for a pause that was taken back: not a crash
        if status == "retry":
            status = queue.retry(self.store, run.job_id, str(error), max_attempts=self.max_attempts)
        else:
            queue.finish(self.store, run.job_id, status, error)
        log.info("job %s: %s", run.job_id, status if not error else f"{status}: {error}")


def read_result(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def finished(run_dir: Path, kind: str = "train") -> bool:
    """True if the run directory holds what a job of `kind` produces at the end: the final adapter
    (or, after full fine-tuning, model), or a comparison's report."""
    if kind == "compare":
        return (run_dir / COMPARE_DIR / "report.md").is_file()
    from openrft.engine.train import final_artifact

    return final_artifact(run_dir).is_dir()


def outcome(
    returncode: int, result: dict[str, Any], requested: str | None, run_dir: Path, kind: str = "train"
) -> tuple[str, str | None]:
    """(status, error) of a job from its process's exit code, result file and pending request.

    A job that finished is `succeeded` even when a cancel or pause came during its last step. The
    status is 'retry' (and the error its cause) when the process was killed by a signal that the
    server did not send: the job then continues from its last checkpoint."""
    if returncode == 0 and result.get("status") == "succeeded" and finished(run_dir, kind):
        return "succeeded", None
    if requested == "cancel":
        return "cancelled", None
    if requested == "pause":
        return "paused", None
    if result.get("status") == "failed":
        return "failed", str(result.get("error") or "training failed")
    cause = killed_cause(returncode, result)
    if cause is not None:
        return "retry", cause
    return "failed", f"the training process exited with code {returncode}; see the job log"


# Why a process dies by these signals, for the `retry` event and the job's error.
SIGNAL_CAUSES = {
    signal.SIGKILL: "out of memory, or killed from outside",
    signal.SIGSEGV: "a crash in native code",
    signal.SIGBUS: "a bus error: memory or a memory-mapped file became unavailable",
    signal.SIGABRT: "aborted by native code",
    signal.SIGTERM: "stopped from outside the server",
}


def killed_cause(returncode: int, result: dict[str, Any]) -> str | None:
    """One line saying which signal killed the training process, or None if it exited by itself.

    Killed means: a negative return code (death by a signal), the child's own `stopped` result
    (it caught SIGTERM), or 128+N for one of `SIGNAL_CAUSES` with no result (a wrapper that
    reports its child's death the way a shell does)."""
    if returncode < 0:
        number = -returncode
    elif result.get("status") == "stopped":
        number = signal.SIGTERM
    elif returncode > 128 and not result and returncode - 128 in SIGNAL_CAUSES:
        number = returncode - 128
    else:
        return None
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"training process killed by signal {number}"
    why = SIGNAL_CAUSES.get(sig, "killed from outside")
    return f"training process killed by {sig.name} ({why})"
