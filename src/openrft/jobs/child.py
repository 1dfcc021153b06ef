"""The training process of one job: `python -m openrft.jobs.child JOB_JSON`.

JOB_JSON (written by the worker) holds {"job_id", "config": <resolved RunConfig>, "run_dir",
"trackers": [...], "parent_pid"}. The process trains GRPO configs only (another method is a
user error) with the same `engine.train.train` as `openrft train`, always with resume=True (a
first attempt finds no checkpoint and starts at step 0; a later one continues from the last
complete checkpoint), logs one plain line per step to stdout (the job log) and to the job's
trackers, and writes `result.json` in the run directory (atomically): {"status": "succeeded"},
{"status": "stopped"} or {"status": "failed", "error": "<one line>", "user_error": bool}.

It runs in its own session (the worker's `start_new_session=True`), so the worker can stop it
and everything it started with one signal to the group. A SIGTERM before training starts is a
clean exit ("stopped", code 143); once `train` runs, the engine's handler has SIGTERM instead
(engine.loop: finish the current step, write a checkpoint, raise `TrainingStopped`). If its
server dies, it sends itself SIGTERM within a second, and exits 3 if still alive ten seconds
later: the job is re-queued and resumed by the next server, never run by two processes.
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


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM (a cancel, a pause, a server shutdown)."""


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


def _watch_parent(parent: int) -> None:
    """Stop this process group when the server that started it is gone (we were re-parented)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            print("server gone: stopping (the job resumes from its last checkpoint)", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
            os._exit(3)


def _write_result(run_dir: Path, result: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RESULT, result, indent=None)


def run(job_file: Path) -> int:
    """Train the job described by `job_file`; the process exit code."""
    spec = json.loads(job_file.read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    (run_dir / RESULT).unlink(missing_ok=True)

    def on_term(signum: int, frame: Any) -> None:
        raise Stopped()

    signal.signal(signal.SIGTERM, on_term)
    parent = int(spec.get("parent_pid") or os.getppid())
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

    from openrft.config import RunConfig
    from openrft.errors import UserError

    try:
        from openrft.engine.train import train
        from openrft.tracking.sinks import make_sinks

        cfg = RunConfig.model_validate(spec["config"])
        if cfg.method != "grpo":
            raise UserError(f"method {cfg.method!r} is not available yet; use method: grpo")
        reporter = LineReporter(make_sinks(spec.get("trackers", []), run_dir, cfg))
        train(cfg, output_dir=run_dir, resume=True, reporter=reporter)
    except Stopped:
        print("stopped by signal", flush=True)
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
    print("done: adapter written", flush=True)
    _write_result(run_dir, {"status": "succeeded"})
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m openrft.jobs.child JOB_JSON", file=sys.stderr)
        sys.exit(64)
    sys.exit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
