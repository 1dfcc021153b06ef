"""`openrft server`: run the API server, job worker and dashboard.

openrft server --host 127.0.0.1 --port 8000 --data-dir openrft-data
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (127.0.0.1 = this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Store: database, datasets, rewards, runs, API key.")
    ] = Path("openrft-data"),
    max_jobs: Annotated[int, typer.Option("--max-jobs", help="Training jobs run at once (0 = none).")] = 1,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest dataset upload.")] = 512,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    allow_reward_env: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-reward-env",
            metavar="NAME",
            help="An environment variable jobs' reward specs may ask for (env, api_key_env); repeatable.",
        ),
    ] = None,
    allow_reward_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-reward-host",
            metavar="HOST",
            help="A host reward functions may reach: name, *.domain, IP, CIDR, or '*' (any public host); "
            "repeatable. None = rewards get no network.",
        ),
    ] = None,
) -> None:
    """Start the OpenRFT server (REST API at /v1, docs at /docs, dashboard at /)."""
    import uvicorn
    from pydantic import ValidationError

    from openrft.server import ServerSettings, create_app

    try:
        settings = ServerSettings(
            data_dir=data_dir,
            max_concurrent_jobs=max_jobs,
            max_upload_bytes=int(max_upload_mb * 1024**2),
            allow_reward_env=allow_reward_env or [],
            allow_reward_hosts=allow_reward_host or [],
        )
    except ValidationError as e:
        raise typer.BadParameter(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    app = create_app(settings)
    source = app.state.api_key_source
    if source == "generated":
        console.print(
            f"[bold]API key (new, saved in {settings.data_dir / 'api_key'}):[/] {app.state.api_key}"
        )
    elif source == "file":
        console.print(f"[bold]API key:[/] {app.state.api_key}  (from {settings.data_dir / 'api_key'})")
    else:
        console.print("[bold]API key:[/] from $OPENRFT_API_KEY")
    console.print(f"dashboard: http://{host}:{port}/   API docs: http://{host}:{port}/docs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


app = typer.Typer(help="Run the OpenRFT server.", no_args_is_help=False)
app.command("serve")(serve)


def main() -> None:  # pragma: no cover
    typer.run(serve)


if __name__ == "__main__":  # pragma: no cover
    main()
