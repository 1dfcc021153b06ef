"""The training process's stop protocol and how the worker reads a finished process: the first
SIGTERM asks for a stop after the current step, the second stops at once; a job that finished is
succeeded whatever was asked during its last step; a comparison has succeeded when its report is
written."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrft.engine.loop import clear_stop, stop_requested
from openrft.jobs.child import StopOnSignal, Stopped
from openrft.jobs.worker import outcome


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
