"""Progress reporting. The engine calls a `Reporter`; the CLI passes a rich progress bar."""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter(Protocol):
    def start(self, total: int, completed: int, description: str) -> None: ...
    def update(self, completed: int, metrics: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def stop(self) -> None: ...


class NullReporter:
    def start(self, total: int, completed: int, description: str) -> None:
        pass

    def update(self, completed: int, metrics: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


def summary(metrics: dict[str, Any], keys: list[str] | None = None) -> str:
    """'reward 0.41 | format 0.80 | equation 0.02 | 12.3 s/step' from a metrics dict."""
    parts = []
    if "reward" in metrics and metrics["reward"] is not None:
        parts.append(f"reward {metrics['reward']:.3f}")
    for k, v in metrics.items():
        if k.startswith("rewards/") and k.endswith("/mean") and v is not None:
            name = k[len("rewards/") : -len("/mean")]
            if keys is None or name in keys:
                parts.append(f"{name} {v:.2f}")
    if "loss" in metrics and metrics.get("loss") is not None and "reward" not in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if metrics.get("step_time"):
        parts.append(f"{metrics['step_time']:.1f} s/step")
    return " | ".join(parts)


class RichReporter:
    """A rich progress bar: step i/N, reward, each function's reward, s/step, elapsed, time left."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=2,
        )
        self.task: Any = None

    def start(self, total: int, completed: int, description: str) -> None:
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, completed=completed, info="starting")

    def update(self, completed: int, metrics: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=completed, info=summary(metrics))
        if metrics:
            self.progress.console.print(f"step {completed}: {summary(metrics)}", highlight=False)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def stop(self) -> None:
        self.progress.stop()
