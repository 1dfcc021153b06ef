"""The training process's stop protocol and how the worker reads a finished process: the first
SIGTERM asks for a stop after the current step, the second stops at once; a job that finished is
succeeded whatever was asked during its last step; a comparison has succeeded when its report is
written; a server shutdown does not signal a job that is already stopping for a pause."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrft.engine.loop import clear_stop, stop_requested
from openrft.jobs import procs, queue
from openrft.jobs.child import StopOnSignal, Stopped
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
def handler() -> Iterator[StopOnSignal]:
    clear_stop()
    on_term = StopOnSignal()
    previous = signal.signal(signal.SIGTERM, on_term)
    yield on_term
    signal.signal(signal.SIGTERM, previous)
    clear_stop()


def test_the_first_sigterm_asks_for_a_stop_after_the_step_and_the_second_stops_now(
    handler: StopOnSignal,
) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # handled here: nothing is raised mid-step
    assert stop_requested() and handler.signals == 1
    with pytest.raises(Stopped):
        os.kill(os.getpid(), signal.SIGTERM)


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
