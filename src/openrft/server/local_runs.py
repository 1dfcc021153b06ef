"""Run directories written by `openrft train` (the operator's `--runs-dir`), read-only for the API.

A local run is a direct child folder of the runs dir that holds `config.json`, `metrics.jsonl` or
`stages.json`; a chained run (`stages` in its config) keeps each stage as a full run directory in
`<run>/stages/<name>/`. A run is named by its folder name, a stage by its folder name under
`stages/`. Anything else is refused as absent (`NotFound`, 404): `.`/`..`, a name with a slash, a
hidden folder (e.g. a copy being made), a folder that is a symlink out of the runs dir, and a run
one of whose files is a symlink out of it.

Nothing here writes: run files are only opened for reading (by `openrft.server.runs`, the readers
the jobs' runs use too). The status is a guess from the files, as no process is known: `finished`
when the run's result (`adapter/`, or `model/` for full fine-tuning) exists, `in_progress` when a
file changed in the last `ACTIVE_S` seconds, else `stopped`. Stages not started yet are `pending`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from openrft.errors import NotFound, UserError
from openrft.server.runs import last_metrics

RUN_FILES = ("config.json", "metrics.jsonl", "samples.jsonl", "events.jsonl", "stages.json")
MARKERS = ("config.json", "metrics.jsonl", "stages.json")
ACTIVE_S = 120.0
FINISHED, IN_PROGRESS, STOPPED, PENDING = "finished", "in_progress", "stopped", "pending"


def _read_json(path: Path) -> dict[str, Any]:
    """The object in a JSON file; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _activity(modified: float) -> str:
    return IN_PROGRESS if time.time() - modified < ACTIVE_S else STOPPED


def _child(parent: Path, name: str) -> Path | None:
    """The real path of folder `name` directly in the real folder `parent`, or None when `name` is
    not a plain visible folder name or resolves anywhere else (a symlink out, a file, nothing)."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        return None
    try:
        real = (parent / name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.parent == parent and real.is_dir() else None


class LocalRuns:
    """The run directories under `root` (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    # -- finding runs and stages --------------------------------------------------------------------

    def _run(self, name: str) -> Path | None:
        run = _child(self.root, name)
        if run is None or not any((run / f).is_file() for f in MARKERS) or not self._files_inside(run):
            return None
        return run

    def _files_inside(self, run: Path) -> bool:
        """Whether the files the API reads from `run` all lie in the runs dir."""
        for name in RUN_FILES:
            path = run / name
            if (path.exists() or path.is_symlink()) and not path.resolve().is_relative_to(self.root):
                return False
        return True

    def run(self, name: str) -> Path:
        """The run directory named `name` (NotFound unless it is one, directly in the runs dir)."""
        run = self._run(name)
        if run is None:
            raise NotFound(f"no local run {name!r}; list local runs with GET /v1/local-runs")
        return run

    def _stage(self, run: Path, stage: str) -> Path | None:
        stages = _child(run, "stages")
        found = _child(stages, stage) if stages is not None else None
        return found if found is not None and self._files_inside(found) else None

    def run_dir(self, name: str, stage: str | None = None, whole: bool = False) -> Path:
        """The directory to read for run `name`: its stage `stage`'s for a chained run (needed
        unless `whole`: the chained run's own folder holds its config but no metrics)."""
        run = self.run(name)
        stage_names = self._stage_names(run)
        if stage is None:
            if stage_names and not whole:
                raise UserError(
                    f"local run {name!r} is chained: name one of its stages with ?stage= "
                    f"({', '.join(stage_names)})"
                )
            return run
        found = self._stage(run, stage) if stage_names else None
        if found is None:
            raise NotFound(
                f"local run {name!r} has no stage {stage!r}; its stages: {', '.join(stage_names) or 'none'}"
            )
        return found

    def _stage_names(self, run: Path) -> list[str]:
        """A chained run's stages: those of its config in order, then other folders in stages/."""
        planned = _read_json(run / "config.json").get("stages") or []
        names = [s["name"] for s in planned if isinstance(s, dict) and isinstance(s.get("name"), str)]
        if not names and not (run / "stages.json").is_file():
            return []
        stages = _child(run, "stages")
        if stages is not None:
            names += sorted(
                p.name for p in stages.iterdir() if p.name not in names and _child(stages, p.name)
            )
        return names

    # -- what the API shows --------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """A summary of every run, the most recently changed first."""
        try:
            names = [entry.name for entry in os.scandir(self.root)]
        except OSError:
            return []
        runs = []
        for name in names:
            run = self._run(name)
            if run is not None:
                runs.append(self._summary(name, run))
        return sorted(runs, key=lambda r: (-r["modified"], r["name"]))

    def summary(self, name: str) -> dict[str, Any]:
        """Run `name`'s summary (NotFound unless it is a run)."""
        return self._summary(name, self.run(name))

    def _summary(self, name: str, run: Path) -> dict[str, Any]:
        config = _read_json(run / "config.json")
        stage_names = self._stage_names(run)
        if not stage_names:
            return {"name": name, "kind": "run", **self._progress(run, config), "stages": None}
        planned = {s.get("name"): s for s in config.get("stages") or [] if isinstance(s, dict)}
        stages = []
        for stage in stage_names:
            entry = planned.get(stage, {})
            sconfig = {
                "method": entry.get("method"),
                "max_steps": entry.get("max_steps") or config.get("max_steps"),
            }
            found = self._stage(run, stage)
            if found is not None:
                sconfig = {**sconfig, **{k: v for k, v in _read_json(found / "config.json").items() if v}}
                stages.append({"name": stage, **self._progress(found, sconfig)})
            else:
                stages.append({"name": stage, **self._pending(sconfig)})
        started = [s for s in stages if s["status"] != PENDING]
        whole = self._progress(run, config)
        modified = max([whole["modified"], *(s["modified"] for s in started)])
        return {
            "name": name,
            "kind": "chained",
            **whole,
            "method": " > ".join(str(s["method"]) for s in stages),
            "step": sum(s["step"] for s in stages),
            "max_steps": sum(s["max_steps"] or 0 for s in stages) or None,
            "reward": next((s["reward"] for s in reversed(started) if s["reward"] is not None), None),
            "modified": modified,
            "status": whole["status"] if whole["status"] == FINISHED else _activity(modified),
            "stages": stages,
        }

    def _progress(self, run: Path, config: dict[str, Any]) -> dict[str, Any]:
        """Method, model, steps done / max_steps, last reward, last change and status of a run dir."""
        last = last_metrics(run) or {}
        modified = max(_mtime(run), *(_mtime(run / f) for f in RUN_FILES))
        finished = (run / "adapter").is_dir() or (run / "model").is_dir()
        status = FINISHED if finished else _activity(modified)
        model = config.get("model")
        return {
            "method": config.get("method"),
            "base_model": model.get("name") if isinstance(model, dict) else None,
            "step": last.get("step") if isinstance(last.get("step"), int) else 0,
            "max_steps": config.get("max_steps"),
            "reward": last.get("reward"),
            "modified": modified,
            "status": status,
        }

    @staticmethod
    def _pending(config: dict[str, Any]) -> dict[str, Any]:
        return {
            "method": config.get("method"),
            "base_model": None,
            "step": 0,
            "max_steps": config.get("max_steps"),
            "reward": None,
            "modified": 0.0,
            "status": PENDING,
        }

    def config(self, name: str, stage: str | None = None) -> dict[str, Any]:
        """The config the run (or its stage) was trained with, and a chained run's stage record."""
        run_dir = self.run_dir(name, stage, whole=True)
        out: dict[str, Any] = {"config": _read_json(run_dir / "config.json")}
        if stage is None and (run_dir / "stages.json").is_file():
            out["stages"] = _read_json(run_dir / "stages.json")
        return out
