"""The run directory: config.json, metrics.jsonl, samples.jsonl, events.jsonl, checkpoints/, adapter/.

Lines are appended and flushed per step, so a dashboard or `tail -f` sees them live. On resume,
lines from steps after the checkpoint are dropped: those steps run again.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from openrft.config import RunConfig, dump_config
from openrft.fsutil import write_atomic


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.adapter = self.path / "adapter"
        self.metrics_file = self.path / "metrics.jsonl"
        self.samples_file = self.path / "samples.jsonl"
        self.events_file = self.path / "events.jsonl"

    def create(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        dump_config(cfg, self.path / "config.json")

    def _append(self, file: Path, rows: list[dict[str, Any]]) -> None:
        with file.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(_clean(row), ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        self._append(self.metrics_file, [metrics])

    def log_samples(self, samples: list[dict[str, Any]]) -> None:
        self._append(self.samples_file, samples)

    def log_event(self, event: str, *, step: int, **detail: Any) -> None:
        """One event of the run (a kept best adapter, a health alert): {"step", "event", "at", ...}."""
        self._append(self.events_file, [{"step": step, "event": event, "at": time.time(), **detail}])

    def truncate_after(self, step: int) -> None:
        """Drop metric, sample and event lines of steps > `step` (and any torn last line)."""
        for file in (self.metrics_file, self.samples_file, self.events_file):
            if not file.exists():
                continue
            kept = []
            for line in file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if int(row.get("step", 0)) <= step:
                    kept.append(line)
            write_atomic(file, "".join(k + "\n" for k in kept), durable=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [
            json.loads(x) for x in self.metrics_file.read_text(encoding="utf-8").splitlines() if x.strip()
        ]
