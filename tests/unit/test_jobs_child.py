"""The training process's stop protocol and how the worker reads a finished process: the first
SIGTERM asks for a stop after the current step, the second stops at once; a job that finished is
succeeded whatever was asked during its last step; a comparison has succeeded when its report is
written; a server shutdown does not signal a job that is already stopping for a pause."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openrft.engine.loop import clear_stop, request_stop, stop_requested
from openrft.jobs import procs, queue
from openrft.jobs.child import Stopped, StopRequest
from openrft.jobs.worker import JobWorker, Running, outcome
from openrft.server.store import Store

# A stand-in for a training process in its step: a second SIGTERM would end it with 99 at once.
IN_A_STEP = """
import signal, sys, time
seen = []
signal.signal(signal.SIGTERM, lambda *a: sys.exit(99) if seen else seen.append(1))
print("ready", flush=True)
time.sleep(1.5)
sys.exit(143)
"""


@pytest.fixture
def stop() -> Iterator[StopRequest]:
    clear_stop()
    request = StopRequest()
    previous = signal.signal(signal.SIGTERM, request.on_signal)
    yield request
    request.closed.set()
    signal.signal(signal.SIGTERM, previous)
    time.sleep(0.05)  # the watchers have ended
    clear_stop()


def test_the_first_sigterm_asks_for_a_stop_after_the_step_and_the_second_stops_now(stop: StopRequest) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # handled here: nothing is raised mid-step
    assert stop_requested() and stop.requested.is_set()
    with pytest.raises(Stopped):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_request_outlives_the_engine_clearing_its_flag_and_a_stop_the_engine_took_is_kept(
    stop: StopRequest,
) -> None:
    threading.Thread(target=stop.watch, args=(os.getppid(), 60.0, 0.01), daemon=True).start()
    stop.ask()
    clear_stop()  # as engine.train.train does when it starts
    assert _eventually(stop_requested)
    stop.closed.set()
    time.sleep(0.05)
    clear_stop()
    other = StopRequest()
    threading.Thread(target=other.watch, args=(os.getppid(), 60.0, 0.01), daemon=True).start()
    try:
        assert not other.requested.is_set()
        request_stop()  # as the engine's own SIGTERM handler does while it trains
        assert _eventually(other.requested.is_set)
    finally:
        other.closed.set()


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("requested", ["pause", "cancel", None])
def test_a_job_that_finished_during_a_pause_or_cancel_succeeded(
    tmp_path: Path, requested: str | None
) -> None:
    (tmp_path / "adapter").mkdir()
    assert outcome(0, {"status": "succeeded"}, requested, tmp_path) == ("succeeded", None)


def test_a_full_finetune_succeeds_with_its_model_folder(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    assert outcome(0, {"status": "succeeded"}, None, tmp_path) == ("succeeded", None)


def test_a_comparison_succeeded_when_its_report_is_written(tmp_path: Path) -> None:
    assert outcome(0, {"status": "succeeded"}, None, tmp_path, "compare")[0] == "failed"
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "report.md").write_text("# report\n")
    assert outcome(0, {"status": "succeeded"}, None, tmp_path, "compare") == ("succeeded", None)
    assert outcome(143, {"status": "stopped"}, "pause", tmp_path / "x", "compare") == ("paused", None)


def test_a_server_shutdown_does_not_signal_a_job_already_stopping_for_a_pause(tmp_path: Path) -> None:
    store = Store(tmp_path).init()
    job = queue.enqueue(store, config={"model": {"name": "m"}, "data": {"train": "x"}, "max_steps": 2})
    worker = JobWorker(store, stop_grace_s=30)
    assert queue.claim(store, worker.me) is not None
    proc = subprocess.Popen([sys.executable, "-c", IN_A_STEP], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    queue.set_process(store, job["id"], proc.pid, procs.start_time(proc.pid))
    queue.request(store, job["id"], "pause")
    log = queue.job_log_path(tmp_path / "run")
    log.parent.mkdir()
    worker.running[job["id"]] = Running(job["id"], tmp_path / "run", proc, log.open("ab"))
    worker.tick()  # the pause: the first SIGTERM
    worker.stop()  # the shutdown: no second one, the step finishes
    assert proc.returncode == 143
    assert store.get_job(job["id"])["status"] == "paused"
