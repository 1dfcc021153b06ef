"""`openrft server`: run the API server, job worker and dashboard; `openrft server keys`: users' keys.

openrft server --host 127.0.0.1 --port 8000 --data-dir openrft-data
openrft server --runs-dir runs          # also show the runs `openrft train` wrote there (read-only)
openrft server keys create --user alice --data-dir openrft-data    # prints alice's key, once
openrft server keys list --data-dir openrft-data
openrft server keys revoke key-0123456789ab --data-dir openrft-data
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from openrft.server.store import Store

console = Console(stderr=True)


def serve(
    ctx: typer.Context,
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
    allow_model_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-model-dir",
            help="A directory whose model folders jobs may use as model.name (repeatable); "
            "otherwise only the known model names.",
        ),
    ] = None,
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
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            "--runs-dir",
            help="A folder of run directories written by `openrft train`, shown read-only in the dashboard "
            "(admin key only). Default: runs/ of the working directory when it exists.",
        ),
    ] = None,
    stop_grace: Annotated[
        float,
        typer.Option(
            "--stop-grace",
            metavar="SECONDS",
            help="After a pause, cancel or server shutdown, the time a job has to finish its current step "
            "and write a checkpoint before it is killed.",
        ),
    ] = 600.0,
    trust_reward_code: Annotated[
        bool,
        typer.Option(
            "--trust-reward-code",
            help="Run tenants' reward code even where the bubblewrap sandbox is unavailable (weaker "
            "isolation: its own uid, the whole file system readable). Without it such code is refused.",
        ),
    ] = False,
) -> None:
    """Start the OpenRFT server (REST API at /v1, docs at /docs, dashboard at /); `keys` manages
    users' API keys."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn
    from pydantic import ValidationError

    from openrft.server import ServerSettings, create_app
    from openrft.server.limits import uvicorn_limits

    try:
        settings = ServerSettings(
            data_dir=data_dir,
            max_concurrent_jobs=max_jobs,
            max_upload_bytes=int(max_upload_mb * 1024**2),
            allowed_model_dirs=allow_model_dir or [],
            allow_reward_env=allow_reward_env or [],
            allow_reward_hosts=allow_reward_host or [],
            trust_reward_code=trust_reward_code,
            runs_dir=runs_dir if runs_dir is not None else default_runs_dir(),
            cancel_grace_s=stop_grace,
        )
    except ValidationError as e:
        raise typer.BadParameter(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    app = create_app(settings)
    source = app.state.api_key_source
    if source == "generated":
        console.print(
            f"[bold]admin API key (new, saved in {settings.data_dir / 'api_key'}):[/] {app.state.api_key}"
        )
    elif source == "file":
        console.print(f"[bold]admin API key:[/] {app.state.api_key}  (from {settings.data_dir / 'api_key'})")
    else:
        console.print("[bold]admin API key:[/] from $OPENRFT_API_KEY")
    console.print(f"users' keys: openrft server keys create --user NAME --data-dir {settings.data_dir}")
    _say_sandbox()
    if settings.runs_dir is not None:
        console.print(f"local runs (read-only, admin key): {settings.runs_dir.resolve()}")
    console.print(f"dashboard: http://{host}:{port}/   API docs: http://{host}:{port}/docs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, **uvicorn_limits()
    )


def default_runs_dir() -> Path | None:
    """runs/ of the working directory (where `openrft train` writes by default) when it exists."""
    return Path("runs") if Path("runs").is_dir() else None


def _say_sandbox() -> None:
    """One line when tenants' reward code runs in the sandbox (where it cannot, `create_app` has
    already warned why, and what the operator can do)."""
    from openrft.rewards import jail

    if jail.available() is None:
        console.print("reward code: runs in the bubblewrap sandbox")


# -- openrft server keys ---------------------------------------------------------------------------

keys_app = typer.Typer(
    help="Users' API keys (the admin key is the server's own: settings, $OPENRFT_API_KEY or "
    "<data-dir>/api_key). Works on the data dir directly, with the server running or stopped.",
    no_args_is_help=True,
)
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="The server's data dir.")]


def _store(data_dir: Path) -> Store:
    from openrft.server.store import Store

    return Store(data_dir).init_db()


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="Whose key: what it creates belongs to this user.")],
    data_dir: DataDirOpt = Path("openrft-data"),
) -> None:
    """Create a key for USER and print it (on stdout, alone): it is shown this once."""
    from openrft.server import accounts

    row, key = accounts.create_key(_store(data_dir), user)
    console.print(f"created {row['id']} for user {row['user']!r}; the key (shown once, store it now):")
    typer.echo(key)


@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = Path("openrft-data")) -> None:
    """Every key, newest first: id, user, prefix, created, revoked (never the key itself)."""
    from openrft.server import accounts

    rows = accounts.list_keys(_store(data_dir))
    if not rows:
        console.print("no users' keys yet: openrft server keys create --user NAME")
    for r in rows:
        revoked = f"revoked {_when(r['revoked_at'])}" if r["revoked_at"] else "active"
        typer.echo(f"{r['id']}\t{r['user']}\t{r['prefix']}...\tcreated {_when(r['created_at'])}\t{revoked}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key-...), from `keys list`.")],
    data_dir: DataDirOpt = Path("openrft-data"),
) -> None:
    """Revoke a key: the server answers 401 to it from the next request on."""
    from openrft.server import accounts

    row = accounts.revoke_key(_store(data_dir), key_id)
    typer.echo(f"revoked {row['id']} (user {row['user']!r}, {row['prefix']}...)")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


app = typer.Typer(invoke_without_command=True, pretty_exceptions_enable=False)
app.callback()(serve)
app.add_typer(keys_app, name="keys")


def main() -> None:  # pragma: no cover
    from openrft.cli import run_app

    run_app(app)


if __name__ == "__main__":  # pragma: no cover
    main()
