"""The `openrft` command line: typer commands, thin wrappers over the library."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from openrft.errors import UserError

err_console = Console(stderr=True)


def run_app(command: typer.Typer) -> None:
    """Run a typer app: a UserError prints as one red line and exits 2, without a traceback."""
    try:
        command()
    except UserError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
