"""Optional metric sinks: TensorBoard and MLflow receive the same per-step metrics as metrics.jsonl.

Neither package is a dependency. `make_sinks(["tensorboard", "mlflow"], run_dir, cfg)` returns
the sinks whose package is installed and skips the others with one warning line on stderr, so a
job never fails because a tracker is missing.

- tensorboard: event files in `<run_dir>/tensorboard/` (via `torch.utils.tensorboard`, which needs
  the `tensorboard` package); view with `tensorboard --logdir <run_dir>/tensorboard`.
- mlflow: a run in the experiment "openrft" of the tracking URI in $MLFLOW_TRACKING_URI, else
  `<run_dir>/mlruns` (a local file store); the resolved config is logged as parameters.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("tensorboard", "mlflow")


class Sink(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (None, NaN, strings and `step` left out)."""
    out = {}
    for k, v in metrics.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'grpo': {'beta': 0}} -> {'grpo.beta': '0'} (MLflow parameters are flat strings)."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


class TensorBoardSink:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in numeric(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    def __init__(self, run_dir: Path, params: dict[str, Any]) -> None:
        import os

        import mlflow

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment("openrft")
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(flatten(params))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        clean = {k.replace("/", "."): v for k, v in numeric(metrics).items()}
        self.mlflow.log_metrics(clean, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def available(name: str) -> bool:
    """Whether the package a tracker needs is installed."""
    return importlib.util.find_spec("tensorboard" if name == "tensorboard" else "mlflow") is not None


def make_sinks(names: list[str], run_dir: str | Path, cfg: Any = None) -> list[Sink]:
    """Sinks for `names` whose packages are installed; the others are skipped with a warning."""
    run_dir = Path(run_dir)
    sinks: list[Sink] = []
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r}; use one of {list(TRACKERS)}")
        if not available(name):
            print(f"warning: tracker {name!r} skipped: `pip install {name}` to enable it", file=sys.stderr)
            continue
        if name == "tensorboard":
            sinks.append(TensorBoardSink(run_dir))
        else:
            params = cfg.model_dump(mode="json") if cfg is not None else {}
            sinks.append(MLflowSink(run_dir, params))
    return sinks
