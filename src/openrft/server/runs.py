"""Reading a run directory for the API: metrics, per-reward curves and samples by step.

The run directory is the source of truth (see `openrft.server.store`). `metrics.jsonl` is small
(one line per step) and read whole. `samples.jsonl` grows by batch x group lines per step, so
`SampleIndex` keeps, per file, the byte offsets of each step's lines, extended incrementally as the
file grows and rebuilt when the file was rewritten (a resume truncates it): reading one step costs
a seek and that step's bytes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; a torn last line (being written), a line
    that is not JSON or not an object are skipped; a missing file has none."""
    if not path.is_file():
        return []
    rows = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def read_metrics(run_dir: str | Path, since: int = 0) -> list[dict[str, Any]]:
    """Metric rows with step > `since`, in step order (a torn last line is skipped)."""
    return [row for row in read_jsonl(Path(run_dir) / "metrics.jsonl") if _step(row) > since]


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of the run's `events.jsonl` (what happened during training, one object a line)."""
    return read_jsonl(Path(run_dir) / "events.jsonl")


def _step(row: dict[str, Any]) -> int:
    try:
        return int(row.get("step", 0))
    except (TypeError, ValueError):
        return 0


def reward_names(metrics: list[dict[str, Any]]) -> list[str]:
    """Reward function names present in metric rows (from `rewards/<name>/mean`), in first-seen order."""
    names: dict[str, None] = {}
    for row in metrics:
        for key in row:
            if key.startswith("rewards/") and key.endswith("/mean"):
                names[key[len("rewards/") : -len("/mean")]] = None
    return list(names)


def curves(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Series for charts: {"step": [...], "reward": {"mean": [...], "std": [...]},
    "rewards": {name: {"mean", "std", "errors"}}, "kl", "loss", "length", ...}, and "series": every
    numeric metric by its name (eval/..., lr, ...), in first-seen order. Missing values are None."""
    steps = [_step(r) for r in metrics]

    def col(key: str) -> list[Any]:
        return [r.get(key) for r in metrics]

    out: dict[str, Any] = {
        "step": steps,
        "reward": {"mean": col("reward"), "std": col("reward_std")},
        "rewards": {
            n: {
                "mean": col(f"rewards/{n}/mean"),
                "std": col(f"rewards/{n}/std"),
                "errors": col(f"rewards/{n}/errors"),
            }
            for n in reward_names(metrics)
        },
    }
    for key, name in (
        ("kl", "kl"),
        ("loss", "loss"),
        ("completions/mean_length", "length"),
        ("entropy", "entropy"),
        ("grad_norm", "grad_norm"),
        ("step_time", "step_time"),
    ):
        out[name] = col(key)
    out["series"] = {key: col(key) for key in numeric_keys(metrics)}
    return out


def numeric_keys(metrics: list[dict[str, Any]]) -> list[str]:
    """Names of the metrics that have a number in some row (not `step`), in first-seen order."""
    keys: dict[str, None] = {}
    for row in metrics:
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                keys[key] = None
    return list(keys)


@dataclass
class _FileIndex:
    inode: int = -1
    size: int = 0
    steps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


class SampleIndex:
    """Byte offsets of each step's lines in `samples.jsonl` files (thread-safe)."""

    def __init__(self) -> None:
        self._files: dict[str, _FileIndex] = {}
        self._lock = threading.Lock()

    def _update(self, path: Path) -> _FileIndex:
        key = str(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._files.pop(key, None)
            return _FileIndex()
        idx = self._files.get(key)
        if idx is None or idx.inode != st.st_ino or st.st_size < idx.size:
            idx = _FileIndex(inode=st.st_ino)
            self._files[key] = idx
        if st.st_size > idx.size:
            with path.open("rb") as f:
                f.seek(idx.size)
                offset = idx.size
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # torn or still being written: index it next time
                    try:
                        step = int(json.loads(line).get("step", 0))
                    except (json.JSONDecodeError, ValueError, AttributeError):
                        step = None
                    if step is not None:
                        idx.steps.setdefault(step, []).append((offset, len(line)))
                    offset += len(line)
                idx.size = offset
        return idx

    def steps(self, run_dir: str | Path) -> dict[int, int]:
        """{step: number of samples} for the steps that have samples."""
        with self._lock:
            idx = self._update(Path(run_dir) / "samples.jsonl")
            return {s: len(v) for s, v in sorted(idx.steps.items())}

    def samples(self, run_dir: str | Path, step: int) -> list[dict[str, Any]]:
        """The sample rows of one step (empty if none)."""
        path = Path(run_dir) / "samples.jsonl"
        with self._lock:
            spans = list(self._update(path).steps.get(step, []))
        rows = []
        if not spans:
            return rows
        with path.open("rb") as f:
            for offset, length in spans:
                f.seek(offset)
                rows.append(json.loads(f.read(length)))
        return rows


def group_samples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sample rows of one step grouped by prompt group: [{group, prompt, prompt_index, completions}]."""
    groups: dict[int, dict[str, Any]] = {}
    for row in rows:
        g = int(row.get("group", 0))
        entry = groups.setdefault(
            g,
            {
                "group": g,
                "prompt": row.get("prompt"),
                "prompt_index": row.get("prompt_index"),
                "completions": [],
            },
        )
        entry["completions"].append(
            {k: row.get(k) for k in ("completion", "rewards", "reward", "advantage", "length", "truncated")}
        )
    return [groups[g] for g in sorted(groups)]


def sample_page(
    index: SampleIndex, run_dir: str | Path, step: int | None, group: int | None
) -> dict[str, Any]:
    """One step's completions grouped by prompt (default: the latest step with samples), optionally
    one prompt group: {"step", "steps", "groups"}."""
    steps = index.steps(run_dir)
    if step is None:
        step = max(steps) if steps else 0
    groups = group_samples(index.samples(run_dir, step))
    if group is not None:
        groups = [g for g in groups if g["group"] == group]
    return {"step": step, "steps": list(steps), "groups": groups}


def last_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The last complete metrics row (read from the file's tail), or None."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.split(b"\n")[1 if size > 65536 else 0 :]):
        if line.strip():
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None
