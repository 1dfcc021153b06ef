"""The durable queue's transitions on a real SQLite store: atomic claims, requests, recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from openrft.jobs import procs, queue
from openrft.jobs.worker import JobWorker, Running, outcome
from openrft.server.store import Store

OOM = "out of memory, or killed from outside"
CONFIG = {"method": "grpo", "model": {"name": "m"}, "data": {"train": "x"}, "max_steps": 2}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path).init()


def test_claims_are_exclusive_across_threads(store: Store) -> None:
    ids = [queue.enqueue(store, config=CONFIG)["id"] for _ in range(20)]
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (job := queue.claim(store, f"w{n}")) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # each exactly once
    assert all(j["status"] == "running" and j["attempts"] == 1 for j in store.list_jobs())


def test_claim_order_and_finish(store: Store) -> None:
    a = queue.enqueue(store, config=CONFIG)
    time.sleep(0.01)
    b = queue.enqueue(store, config=CONFIG)
    assert queue.claim(store, "me")["id"] == a["id"]
    queue.finish(store, a["id"], "succeeded")
    done = store.get_job(a["id"])
    assert done["status"] == "succeeded" and done["finished_at"] and done["worker"] is None
    queue.finish(store, a["id"], "failed", "late")  # only a running job can finish
    assert store.get_job(a["id"])["status"] == "succeeded"
    assert queue.claim(store, "me")["id"] == b["id"]
    assert queue.claim(store, "me") is None


def test_requests_follow_the_state(store: Store) -> None:
    job = queue.enqueue(store, config=CONFIG)
    assert queue.request(store, job["id"], "pause")["status"] == "paused"
    assert queue.claim(store, "me") is None  # paused jobs are not claimed
    assert queue.request(store, job["id"], "resume")["status"] == "queued"
    queue.claim(store, "me")
    running = queue.request(store, job["id"], "cancel")
    assert (running["status"], running["requested"]) == ("running", "cancel")
    queue.finish(store, job["id"], "cancelled")
    with pytest.raises(ValueError, match="only queued, paused or running"):
        queue.request(store, job["id"], "cancel")
    assert queue.request(store, "job-missing", "cancel") is None
    with pytest.raises(ValueError, match="unknown action"):
        queue.request(store, job["id"], "explode")


def test_recover_requeues_jobs_of_a_dead_worker_and_stops_their_process(store: Store) -> None:
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        job = queue.enqueue(store, config=CONFIG)
        dead_worker = "999999:12345"  # no such process
        queue.claim(store, dead_worker)
        queue.set_process(store, job["id"], orphan.pid, procs.start_time(orphan.pid))
        live = queue.enqueue(store, config=CONFIG)
        queue.claim(store, procs.identity())  # a live worker (this process): left alone

        changed = queue.recover(store, me="someone-else", grace_s=2, max_attempts=3)
        assert changed == [job["id"]]
        assert orphan.wait(timeout=10) is not None  # the orphaned training process was stopped
        again = store.get_job(job["id"])
        assert (again["status"], again["pid"], again["attempts"]) == ("queued", None, 1)
        assert store.get_job(live["id"])["status"] == "running"
        assert [e["event"] for e in store.job_events(job["id"])][-1] == "recovered"
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_recover_fails_a_job_after_max_crashes_and_honours_requests(store: Store) -> None:
    a = queue.enqueue(store, config=CONFIG)
    queue.claim(store, "1:1")
    queue.finish(store, a["id"], "queued")  # a graceful restart: does not count as a crash
    for crash in range(3):
        assert queue.claim(store, "1:1")["id"] == a["id"]
        queue.recover(store, me="me", grace_s=0, max_attempts=3)
        expected = "queued" if crash < 2 else "failed"
        assert store.get_job(a["id"])["status"] == expected
    assert "interrupted 3 times" in store.get_job(a["id"])["error"]
    assert store.get_job(a["id"])["attempts"] == 4
    b = queue.enqueue(store, config=CONFIG)
    queue.claim(store, "1:1")
    queue.request(store, b["id"], "cancel")
    c = queue.enqueue(store, config=CONFIG)
    queue.claim(store, "1:1")
    queue.request(store, c["id"], "pause")
    queue.recover(store, me="me", grace_s=0, max_attempts=3)
    assert store.get_job(b["id"])["status"] == "cancelled"
    assert store.get_job(c["id"])["status"] == "paused"


def _running(store: Store, job_id: str) -> None:
    assert queue.claim(store, "1:1")["id"] == job_id
    queue.set_process(store, job_id, 4242, None)


def _checkpoint(job: dict) -> None:
    step = Path(job["run_dir"]) / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text("{}")


def test_a_killed_process_is_retried_until_max_attempts_then_the_job_fails_with_the_cause(
    store: Store,
) -> None:
    job = queue.enqueue(store, config=CONFIG)
    _checkpoint(job)
    cause = f"training process killed by SIGKILL ({OOM})"
    for attempt in (2, 3):
        _running(store, job["id"])
        assert queue.retry(store, job["id"], cause, max_attempts=3) == "queued"
        row = store.get_job(job["id"])
        assert (row["status"], row["pid"], row["worker"], row["error"]) == ("queued", None, None, None)
        last = store.job_events(job["id"])[-1]
        assert (last["event"], json.loads(last["detail"])) == ("retry", {"attempt": attempt, "cause": cause})
    _running(store, job["id"])
    assert queue.retry(store, job["id"], cause, max_attempts=3) == "failed"
    failed = store.get_job(job["id"])
    assert failed["status"] == "failed" and failed["finished_at"] and failed["attempts"] == 3
    assert failed["error"] == (
        f"{cause}; interruption 3 of max_attempts=3; resume the job to continue from its last checkpoint"
    )
    assert [e["event"] for e in store.job_events(job["id"])].count("retry") == 2
    assert queue.retry(store, job["id"], cause, max_attempts=3) == "failed"  # only a running job changes


def test_server_crashes_and_killed_processes_count_together(store: Store) -> None:
    job = queue.enqueue(store, config=CONFIG)
    _running(store, job["id"])
    queue.recover(store, me="me", grace_s=0, max_attempts=2)  # the server died: interruption 1
    _running(store, job["id"])
    assert queue.retry(store, job["id"], "training process killed by SIGSEGV", max_attempts=2) == "failed"
    error = store.get_job(job["id"])["error"]
    assert error == "training process killed by SIGSEGV; interruption 2 of max_attempts=2"  # no checkpoint


def test_a_failed_job_with_a_checkpoint_resumes_and_its_count_starts_again(store: Store) -> None:
    job = queue.enqueue(store, config=CONFIG)
    _running(store, job["id"])
    queue.retry(store, job["id"], "killed", max_attempts=1)
    with pytest.raises(ValueError, match="failed before writing a checkpoint, so there is nothing to resume"):
        queue.request(store, job["id"], "resume")
    _checkpoint(job)
    resumed = queue.request(store, job["id"], "resume")
    assert (resumed["status"], resumed["error"], resumed["finished_at"]) == ("queued", None, None)
    last = store.job_events(job["id"])[-1]
    assert (last["event"], last["detail"]) == (
        "resumed",
        "from its last checkpoint after: killed; interruption 1 of max_attempts=1",
    )
    _running(store, job["id"])
    assert queue.retry(store, job["id"], "killed", max_attempts=2) == "queued"  # 1 of 2 since the resume
    _running(store, job["id"])
    queue.finish(store, job["id"], "succeeded")
    with pytest.raises(ValueError, match="only a paused job, or a failed one with a checkpoint"):
        queue.request(store, job["id"], "resume")


def _collect(store: Store, job_id: str, code: str, *, signalled: bool) -> str:
    """Let a JobWorker collect a real process (running `code`) as the job's training process."""
    worker = JobWorker(store, max_attempts=3)
    job = queue.claim(store, worker.me)
    assert job is not None and job["id"] == job_id
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    queue.set_process(store, job_id, proc.pid, procs.start_time(proc.pid))
    proc.wait(timeout=30)
    log = queue.job_log_path(job["run_dir"])
    log.parent.mkdir(parents=True, exist_ok=True)
    run = Running(job_id, Path(job["run_dir"]), proc, log.open("ab"), signalled_at=1.0 if signalled else None)
    worker._collect(run)
    return store.get_job(job_id)["status"]


def test_the_worker_retries_a_killed_process_but_not_one_it_stopped_itself(store: Store) -> None:
    job = queue.enqueue(store, config=CONFIG)
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert _collect(store, job["id"], killed, signalled=False) == "queued"
    assert json.loads(store.job_events(job["id"])[-1]["detail"]) == {
        "attempt": 2,
        "cause": f"training process killed by SIGKILL ({OOM})",
    }
    # the worker stopped it for a pause that the user then took back: re-queued, not a crash
    assert _collect(store, job["id"], killed, signalled=True) == "queued"
    assert store.job_events(job["id"])[-1]["event"] == "queued"
    assert _collect(store, job["id"], "raise SystemExit(2)", signalled=False) == "failed"  # not retried
    assert [e["event"] for e in store.job_events(job["id"])].count("retry") == 1


def test_process_identity_guards_against_pid_reuse() -> None:
    me = procs.identity()
    assert procs.identity_alive(me)
    pid, _, start = me.partition(":")
    assert not procs.alive(int(pid), str(int(start) + 1))  # same pid, another start time
    assert not procs.identity_alive("999999:1") and not procs.identity_alive(None)


@pytest.mark.parametrize(
    ("code", "result", "requested", "adapter", "expected"),
    [
        (0, {"status": "succeeded"}, None, True, ("succeeded", None)),
        (
            0,
            {"status": "succeeded"},
            None,
            False,
            ("failed", "the training process exited with code 0; see the job log"),
        ),
        (2, {"status": "failed", "error": "bad row"}, None, False, ("failed", "bad row")),
        (1, {}, None, False, ("failed", "the training process exited with code 1; see the job log")),
        (143, {"status": "stopped"}, "cancel", False, ("cancelled", None)),
        (143, {"status": "stopped"}, "pause", False, ("paused", None)),
        (-9, {}, "cancel", False, ("cancelled", None)),  # the server's own SIGKILL after the grace period
        (-9, {}, None, False, ("retry", f"training process killed by SIGKILL ({OOM})")),
        (137, {}, None, False, ("retry", f"training process killed by SIGKILL ({OOM})")),
        (-11, {}, None, False, ("retry", "training process killed by SIGSEGV (a crash in native code)")),
        (-6, {}, None, False, ("retry", "training process killed by SIGABRT (aborted by native code)")),
        (
            143,
            {"status": "stopped"},
            None,
            False,
            ("retry", "training process killed by SIGTERM (stopped from outside the server)"),
        ),
        (
            -9,
            {"status": "failed", "error": "reward errors over 50%"},
            None,
            False,
            ("failed", "reward errors over 50%"),
        ),
        (130, {}, None, False, ("failed", "the training process exited with code 130; see the job log")),
    ],
)
def test_outcome(
    tmp_path: Path, code: int, result: dict, requested: str | None, adapter: bool, expected: tuple
) -> None:
    if adapter:
        (tmp_path / "adapter").mkdir()
    assert outcome(code, result, requested, tmp_path) == expected
