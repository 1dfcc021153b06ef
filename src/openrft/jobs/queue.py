"""The durable job queue: state transitions of the `jobs` table, each one atomic.

States::

    queued --claim--> running --exit 0--> succeeded
      ^  \\                |  \\--error--> failed
      |   cancel           |--cancel--> cancelled
      |      \\             |--pause---> paused --resume--> queued
      |       -> cancelled  |--server restart / crash--> queued (resumes from its last checkpoint)
      |                     \\--process killed by a signal--> queued ('retry': from its last checkpoint)
      \\--<--resume-- failed (one with a checkpoint)

An interruption that is not the job's fault (its server died under it, or its training process was
killed by a signal: out of memory, kill -9, a native crash) re-queues the job; the `max_attempts`-th
interruption since the user last resumed it fails the job instead.

A job is claimed with one `UPDATE ... WHERE id=(oldest queued) AND status='queued'`, so two
workers can never both run it. The worker that runs a job is written on the row ('PID:START' of
the server process) with a heartbeat; the training process's pid and start time too. `recover`
re-queues jobs whose worker is gone (after making sure their training process is gone as well).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from openrft.jobs import procs
from openrft.server.store import ADMIN, Store

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running", "paused")
KINDS = ("train", "compare")  # what a job runs: `openrft train` or `openrft compare` on its config


def method_label(config: dict[str, Any], kind: str = "train") -> str:
    """What a job's `method` column shows: the config's method, its stages' ('sft+grpo'), or
    'compare' for a comparison job."""
    if kind == "compare":
        return "compare"
    stages = config.get("stages") or []
    if stages:
        return "+".join(str(stage.get("method")) for stage in stages)
    return str(config.get("method", "grpo"))


def job_kind(job: dict[str, Any]) -> str:
    """'compare' for a comparison job (its `method` column says so), else 'train'."""
    return "compare" if job.get("method") == "compare" else "train"


def new_job_id() -> str:
    return "job-" + secrets.token_hex(6)


def log_event(db: Any, job_id: str, event: str, detail: str | None = None) -> None:
    db.execute(
        "INSERT INTO job_events (job_id, at, event, detail) VALUES (?,?,?,?)",
        (job_id, time.time(), event, detail),
    )


def enqueue(
    store: Store,
    *,
    config: dict[str, Any],
    name: str | None = None,
    trackers: list[str] | None = None,
    dataset_id: str | None = None,
    job_id: str | None = None,
    owner: str = ADMIN,
    kind: str = "train",
) -> dict[str, Any]:
    """Add a queued job of `owner` whose run directory is `runs/<id>`. Its `method` column is the
    config's method, or 'compare' for a job of kind `compare`."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; use one of {', '.join(KINDS)}")
    job_id = job_id or new_job_id()
    run_dir = store.runs_dir / job_id
    now = time.time()
    with store.tx() as db:
        db.execute(
            "INSERT INTO jobs (id, name, status, method, base_model, dataset_id, config, trackers, run_dir,"
            " created_at, updated_at, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job_id,
                name,
                "queued",
                method_label(config, kind),
                config.get("model", {}).get("name", ""),
                dataset_id,
                json.dumps(config),
                json.dumps(trackers or []),
                str(run_dir),
                now,
                now,
                owner,
            ),
        )
        log_event(db, job_id, "queued")
    job = store.get_job(job_id)
    assert job is not None
    return job


def claim(store: Store, worker: str) -> dict[str, Any] | None:
    """Atomically take the oldest queued job for `worker`; None if the queue is empty."""
    now = time.time()
    with store.tx() as db:
        row = db.execute(
            "SELECT id FROM jobs WHERE status='queued' ORDER BY created_at, id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        changed = db.execute(
            "UPDATE jobs SET status='running', worker=?, heartbeat=?, attempts=attempts+1, requested=NULL,"
            " pid=NULL, pid_start=NULL, error=NULL, started_at=COALESCE(started_at, ?), updated_at=?"
            " WHERE id=? AND status='queued'",
            (worker, now, now, now, row["id"]),
        ).rowcount
        if changed != 1:
            return None
        log_event(db, row["id"], "claimed", worker)
    return store.get_job(row["id"])


def set_process(store: Store, job_id: str, pid: int, pid_start: str | None) -> None:
    with store.tx() as db:
        db.execute(
            "UPDATE jobs SET pid=?, pid_start=?, updated_at=? WHERE id=?",
            (pid, pid_start, time.time(), job_id),
        )
        log_event(db, job_id, "started", f"pid {pid}")


def heartbeat(store: Store, worker: str) -> None:
    store.execute("UPDATE jobs SET heartbeat=? WHERE worker=? AND status='running'", (time.time(), worker))


def finish(store: Store, job_id: str, status: str, error: str | None = None) -> None:
    """Move a running job to `status` (terminal, 'paused' or 'queued') and clear its process."""
    now = time.time()
    finished = now if status in TERMINAL else None
    with store.tx() as db:
        db.execute(
            "UPDATE jobs SET status=?, error=?, requested=NULL, pid=NULL, pid_start=NULL, worker=NULL,"
            " finished_at=?, updated_at=? WHERE id=? AND status='running'",
            (status, error, finished, now, job_id),
        )
        log_event(db, job_id, status, error)


def request(store: Store, job_id: str, action: str) -> dict[str, Any] | None:
    """Ask for `cancel`, `pause` or `resume`. Queued/paused jobs change at once; a running job is
    marked and its worker stops the process. Returns the job, or None if it does not exist.

    Raises ValueError (with a message for the user) when the action does not apply to the state.
    """
    now = time.time()
    with store.tx() as db:
        row = db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return None
        status = row["status"]
        if action == "cancel":
            if status in ("queued", "paused"):
                db.execute(
                    "UPDATE jobs SET status='cancelled', finished_at=?, updated_at=? WHERE id=?",
                    (now, now, job_id),
                )
                log_event(db, job_id, "cancelled")
            elif status == "running":
                db.execute("UPDATE jobs SET requested='cancel', updated_at=? WHERE id=?", (now, job_id))
                log_event(db, job_id, "cancel requested")
            else:
                raise ValueError(
                    f"job {job_id} is {status}; only queued, paused or running jobs can be cancelled"
                )
        elif action == "pause":
            if status == "queued":
                db.execute("UPDATE jobs SET status='paused', updated_at=? WHERE id=?", (now, job_id))
                log_event(db, job_id, "paused")
            elif status == "running":
                db.execute("UPDATE jobs SET requested='pause', updated_at=? WHERE id=?", (now, job_id))
                log_event(db, job_id, "pause requested")
            elif status != "paused":
                raise ValueError(f"job {job_id} is {status}; only queued or running jobs can be paused")
        elif action == "resume":
            if status == "paused":
                db.execute("UPDATE jobs SET status='queued', updated_at=? WHERE id=?", (now, job_id))
                log_event(db, job_id, "resumed")
            elif status == "failed":
                _resume_failed(db, job_id, now)
            elif status == "running":
                db.execute(
                    "UPDATE jobs SET requested=NULL, updated_at=? WHERE id=? AND requested='pause'",
                    (now, job_id),
                )
            elif status != "queued":
                raise ValueError(
                    f"job {job_id} is {status}; only a paused job, or a failed one with a checkpoint,"
                    " can be resumed"
                )
        else:
            raise ValueError(f"unknown action {action!r}; use cancel, pause or resume")
    return store.get_job(job_id)


def _resume_failed(db: Any, job_id: str, now: float) -> None:
    """Re-queue a failed job that has a checkpoint: it continues from there (ValueError if none)."""
    row = db.execute("SELECT run_dir, error FROM jobs WHERE id=?", (job_id,)).fetchone()
    if not has_checkpoint(row["run_dir"]):
        raise ValueError(
            f"job {job_id} failed before writing a checkpoint, so there is nothing to resume; submit it again"
        )
    db.execute(
        "UPDATE jobs SET status='queued', error=NULL, finished_at=NULL, updated_at=? WHERE id=?",
        (now, job_id),
    )
    log_event(db, job_id, "resumed", f"from its last checkpoint after: {row['error']}")


def retry(store: Store, job_id: str, cause: str, *, max_attempts: int) -> str:
    """A running job's training process was killed (`cause`, one line): re-queue it to continue
    from its last checkpoint, with a `retry` event {"attempt", "cause"}; or, if this is its
    `max_attempts`-th interruption, fail it with the cause. Returns the job's new status."""
    now = time.time()
    with store.tx() as db:
        row = db.execute(
            "SELECT attempts, run_dir FROM jobs WHERE id=? AND status='running'", (job_id,)
        ).fetchone()
        if row is None:
            return _status(db, job_id)
        if _interruptions(db, job_id) + 1 >= max_attempts:
            status, error = "failed", f"{cause}; interruption {max_attempts} of max_attempts={max_attempts}"
            if has_checkpoint(row["run_dir"]):
                error += "; resume the job to continue from its last checkpoint"
        else:
            status, error = "queued", ""
        db.execute(
            "UPDATE jobs SET status=?, error=?, requested=NULL, pid=NULL, pid_start=NULL, worker=NULL,"
            " finished_at=?, updated_at=? WHERE id=?",
            (status, error or None, now if status in TERMINAL else None, now, job_id),
        )
        if status == "queued":
            log_event(db, job_id, "retry", json.dumps({"attempt": row["attempts"] + 1, "cause": cause}))
        else:
            log_event(db, job_id, status, error)
    return status


def _status(db: Any, job_id: str) -> str:
    row = db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
    return row["status"] if row else "missing"


def recover(store: Store, *, me: str, grace_s: float, max_attempts: int) -> list[str]:
    """Re-queue jobs marked running whose worker process is gone (a crashed or restarted server).

    Their training process, if it still runs (it stops itself after its current step when its
    server dies), is awaited for up to `grace_s` and then killed, so a job never runs twice at
    once. A job whose `max_attempts`-th interruption this is (`_interruptions`) is failed instead
    (graceful server restarts do not count).
    Returns the ids of the jobs it changed.
    """
    changed = []
    for job in store.list_jobs(status="running", limit=100_000):
        worker = job["worker"]
        if worker == me or procs.identity_alive(worker):
            continue
        if job["pid"]:
            procs.await_or_kill_group(job["pid"], job["pid_start"], grace_s)
        requested = job["requested"]
        if requested == "cancel":
            status, error = "cancelled", None
        elif requested == "pause":
            status, error = "paused", None
        else:
            status, error = "queued", None
        now = time.time()
        with store.tx() as db:
            if status == "queued" and _interruptions(db, job["id"]) + 1 >= max_attempts:
                status = "failed"
                error = (
                    f"interrupted {max_attempts} times (max_attempts), the last time by a server that died"
                )
            n = db.execute(
                "UPDATE jobs SET status=?, error=?, requested=NULL, pid=NULL, pid_start=NULL, worker=NULL,"
                " finished_at=?, updated_at=? WHERE id=? AND status='running' AND worker IS ?",
                (status, error, now if status in TERMINAL else None, now, job["id"], worker),
            ).rowcount
            if n:
                log_event(db, job["id"], "recovered", f"worker {worker} gone; now {status}")
        if n:
            changed.append(job["id"])
    return changed


def _interruptions(db: Any, job_id: str) -> int:
    """How often a job was interrupted since it was created or a user last resumed it: recovered
    from a dead worker, or retried after its training process was killed (graceful restarts, pauses
    and cancels do not count)."""
    row = db.execute(
        "SELECT COUNT(*) AS n FROM job_events WHERE job_id=? AND event IN ('recovered', 'retry') AND seq >"
        " COALESCE((SELECT MAX(seq) FROM job_events WHERE job_id=? AND event='resumed'), 0)",
        (job_id, job_id),
    ).fetchone()
    return int(row["n"])


def has_checkpoint(run_dir: str | Path) -> bool:
    """True if the run directory holds a finished checkpoint (a `step-N` folder with its manifest;
    the engine verifies its files when it loads it)."""
    return any((Path(run_dir) / "checkpoints").glob("step-*/manifest.json"))


def job_log_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "job.log"
