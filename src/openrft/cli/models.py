"""`openrft models ...`: provision, list and verify base models (logic in openrft.models.registry)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from openrft.models import registry

app = typer.Typer(help="Manage base models.", no_args_is_help=True)


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"  # unreachable


@app.command("pull")
def pull(
    name: Annotated[
        str, typer.Argument(help="A known model name, or a Hugging Face hub id.")
    ] = registry.DEFAULT_MODEL,
    force: Annotated[bool, typer.Option("--force", help="Rebuild a known model even if present.")] = False,
) -> None:
    """Provision a model into the local cache (once) and print its directory."""
    if name in registry.KNOWN_MODELS:
        path = registry.provision_model(name, force=force)
    else:
        path = registry.resolve_model(name)
    print(path)


@app.command("list")
def list_() -> None:
    """Show known and cached models with their status, path and size."""
    table = Table(title=f"models in {registry.models_dir()}")
    for column in ("name", "status", "path", "size"):
        table.add_column(column, no_wrap=column != "path", overflow="fold")
    for entry in registry.list_models():
        style = {"provisioned": "green", "incomplete": "red"}.get(entry["status"], "")
        size = _human_size(entry["size_bytes"]) if entry["size_bytes"] else "-"
        status = f"[{style}]{entry['status']}[/]" if style else entry["status"]
        table.add_row(entry["name"], status, entry["path"], size)
    Console().print(table)


@app.command("verify")
def verify(
    name: Annotated[str, typer.Argument(help="A known model name or a provisioned model directory.")],
) -> None:
    """Recompute the sha256 of every file of a provisioned model and compare with its manifest."""
    problems = registry.check_model(name)
    if problems:
        for file, what in problems.items():
            typer.echo(f"{file}: {what}", err=True)
        typer.echo(f"{name}: {len(problems)} file(s) do not match the manifest", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: all files match the manifest")
