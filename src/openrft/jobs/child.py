"""The process of one job: `python -m openrft.jobs.child JOB_JSON`.

JOB_JSON holds {"config": <resolved RunConfig>, "run_dir": ..., "trackers": [...], "kind": "train" or
"compare", "stop_grace_s": ...}. A `train` job calls the same `openrft.engine.train.train` as
`openrft train` (GRPO, SFT, DPO or chained stages), always with resume=True (a first attempt finds
no checkpoint and starts at step 0; a later one continues from the last complete checkpoint). A
`compare` job runs `openrft compare` with the config's `compare` section into `<run dir>/compare/`
(resumable too: finished cells are reused). The process logs one plain line per step to stdout
(the job log), and writes `result.json` in the run directory (atomically): {"status": "succeeded"},
{"status": "stopped"} or {"status": "failed", "error": "<one line>", "user_error": bool}.

Stopping is clean, as Ctrl-C is for `openrft train`: the first SIGTERM (a cancel, a pause, a
server shutdown) asks the training loop to stop after the current step, which writes a checkpoint
and raises `TrainingStopped`; the process then exits with 143 and the job resumes later with no
step lost or repeated. A SIGTERM while a stop is already requested stops at once (the steps since
the last checkpoint run again on resume); the worker sends SIGKILL to the process group when the
process has not exited `stop_grace_s` seconds after the first. `engine.train.train` handles
SIGTERM this way while it runs; `StopRequest` does it outside it and keeps the request across
`train`'s start and end. If its server dies, the process stops cleanly by itself the same way
(and exits at the latest `stop_grace_s` later): the job is re-queued and resumed by the next
server, never run by two processes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from openrft.fsutil import write_json_atomic

RESULT = "result.json"
COMPARE_DIR = "compare"  # a compare job's output folder inside its run directory
DEFAULT_STOP_GRACE_S = 600.0


class Stopped(BaseException):
    """Raised in the main thread by a second SIGTERM: stop now, without waiting for the step."""


class LineReporter:
    """A `Reporter` that prints one timestamped line per event (for a log file, not a terminal)."""

    def __init__(self, sinks: list[Any] | None = None) -> None:
        self.total = 0
        self.sinks = sinks or []

    def _say(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    def start(self, total: int, completed: int, description: str) -> None:
        self.total = total
        self._say(f"{description}: starting at step {completed} of {total}")

    def update(self, completed: int, metrics: dict[str, Any]) -> None:
        from openrft.tracking.progress import summary

        self._say(f"step {completed}/{self.total}: {summary(metrics)}")
        for sink in self.sinks:
            sink.log(metrics, completed)

    def message(self, text: str) -> None:
        self._say(text)

    def stop(self) -> None:
        for sink in self.sinks:
            sink.close()


class StopRequest:
    """This process's stop request: set by SIGTERM or by the death of its server, kept until exit.

    While `engine.train.train` runs, its own handler takes SIGTERM the same way (the first stops
    after the current step with a checkpoint, a second at once), and it keeps a stop asked before
    it started; but it clears the engine's stop flag when it ends. `watch` therefore records a
    stop the engine's handler took and sets the engine's flag again while a stop is requested, so
    that a stop asked for between the trainings of a comparison is never lost."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.closed = threading.Event()  # ends `watch`

    def on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM outside `train`: the first asks for a stop, one after that stops at once."""
        if self.requested.is_set():
            raise Stopped()
        self.ask()
        # os.write, not print: a print here could interrupt one in progress (a reentrant-call error)
        os.write(sys.stdout.fileno(), b"stop requested: finishing the current step, then a checkpoint\n")

    def ask(self) -> None:
        from openrft.engine.loop import request_stop

        self.requested.set()
        request_stop()

    def watch(self, parent: int, grace_s: float, poll_s: float = 0.1) -> None:
        """Keep the request (see the class); stop cleanly when the server that started this
        process is gone (we were re-parented), and exit at the latest `grace_s` seconds later."""
        from openrft.engine.loop import stop_requested

        orphaned_at: float | None = None
        while not self.closed.wait(poll_s):
            if orphaned_at is None and os.getppid() != parent:
                orphaned_at = time.monotonic()
                print("server gone: stopping after the current step (the job resumes from it)", flush=True)
                self.ask()
            if stop_requested():
                self.requested.set()
            elif self.requested.is_set():
                self.ask()
            if orphaned_at is not None and time.monotonic() - orphaned_at > grace_s:
                print(f"server gone: still running after {grace_s:g} s; exiting now", flush=True)
                os._exit(3)


def _write_result(run_dir: Path, result: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RESULT, result, indent=None)


def _work(spec: dict[str, Any], run_dir: Path, stop: StopRequest) -> str | None:
    """Run the job; returns what it produced, for the log (None: stopped before it began)."""
    from openrft.config import RunConfig
    from openrft.engine.train import final_artifact, train
    from openrft.tracking.sinks import make_sinks

    cfg = RunConfig.model_validate(spec["config"])
    if spec.get("kind", "train") == "compare":
        from openrft.evaluation.compare import compare

        out = run_dir / COMPARE_DIR
        command = f"comparison job {spec.get('job_id', '')} of an OpenRFT server"
        stopping = stop.requested.is_set
        compare(cfg, output=out, reporter=LineReporter(), command=command, should_stop=stopping)
        return f"report written: {COMPARE_DIR}/report.md"
    reporter = LineReporter(make_sinks(spec.get("trackers", []), run_dir, cfg))
    if stop.requested.is_set():  # asked before training began: nothing to checkpoint
        return None
    run = train(cfg, output_dir=run_dir, resume=True, reporter=reporter)
    return f"{final_artifact(run).name}/ written"


def run(job_file: Path) -> int:
    """Run the job described by `job_file`; the process exit code."""
    spec = json.loads(job_file.read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    (run_dir / RESULT).unlink(missing_ok=True)

    from openrft.engine.loop import TrainingStopped, clear_stop
    from openrft.errors import UserError
    from openrft.evaluation.compare import CompareStopped

    clear_stop()
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop.on_signal)
    parent = int(spec.get("parent_pid") or os.getppid())
    grace = float(spec.get("stop_grace_s") or DEFAULT_STOP_GRACE_S)
    threading.Thread(target=stop.watch, args=(parent, grace), daemon=True).start()

    try:
        produced = _work(spec, run_dir, stop)
    except TrainingStopped as e:
        print(f"stopped: {e}", flush=True)
        _write_result(run_dir, {"status": "stopped", "step": e.step})
        return 143
    except CompareStopped as e:
        print(f"stopped: {e}", flush=True)
        _write_result(run_dir, {"status": "stopped"})
        return 143
    except (Stopped, KeyboardInterrupt):  # KeyboardInterrupt: the engine's handler, second signal
        print("stopped by a second signal (steps since the last checkpoint run again on resume)", flush=True)
        _write_result(run_dir, {"status": "stopped"})
        return 143
    except UserError as e:
        print(f"error: {e}", flush=True)
        _write_result(run_dir, {"status": "failed", "error": str(e), "user_error": True})
        return 2
    except Exception as e:
        traceback.print_exc()
        sys.stdout.flush()
        _write_result(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}", "user_error": False})
        return 1
    if produced is None:
        print("stopped before training began", flush=True)
        _write_result(run_dir, {"status": "stopped"})
        return 143
    print(f"done: {produced}", flush=True)
    _write_result(run_dir, {"status": "succeeded"})
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m openrft.jobs.child JOB_JSON", file=sys.stderr)
        sys.exit(64)
    sys.exit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
