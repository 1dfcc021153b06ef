"""Server settings: one pydantic model, built by the caller (CLI or test), never at import time."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ServerSettings(BaseModel):
    """Everything `create_app` needs. `openrft server` builds this from its options."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        Path("openrft-data"), description="Store: SQLite database, datasets, rewards, runs, the API key."
    )
    api_key: str | None = Field(
        None,
        description="The admin API key (sees every user's resources, manages users' keys); None = "
        "$OPENRFT_API_KEY, else the key saved in the data dir (generated at first start).",
    )
    max_upload_bytes: int = Field(512 * 1024**2, ge=1, description="Largest dataset upload (bytes).")
    max_body_bytes: int = Field(
        8 * 1024**2, ge=1, description="Largest request body on every other route (bytes)."
    )
    max_concurrent_jobs: int = Field(1, ge=0, description="Training jobs run at once; 0 = no worker.")
    max_attempts: int = Field(
        3,
        ge=1,
        description="A job interrupted this many times is failed instead of retried from its last "
        "checkpoint. Interrupted: its server died under it, or its training process was killed by a "
        "signal the server did not send (out of memory, kill -9, a native crash). User errors are never "
        "retried; the count starts again when a user resumes the job.",
    )
    poll_interval_s: float = Field(0.5, gt=0, description="How often the worker looks at the queue.")
    cancel_grace_s: float = Field(
        600.0,
        ge=0,
        description="Seconds a job's process has, after it is asked to stop (pause, cancel, server "
        "shutdown), to finish its current step and write a checkpoint before it is killed (SIGKILL); "
        "a killed job resumes from its previous checkpoint. Set it above your longest step + checkpoint.",
    )
    trust_reward_code: bool = Field(
        False,
        description="Run tenants' reward code even where the bubblewrap sandbox is unavailable (with the "
        "weaker isolation: own uid, whole file system readable); off = such code is refused (403).",
    )
    job_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for training processes."
    )
    allowed_model_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories whose model folders a job's model.name may name; "
        "besides these only the known model names are accepted.",
    )
    allow_reward_env: list[str] = Field(
        default_factory=list,
        description="Environment variables a job's reward spec may ask for (`env`, `api_key_env`, "
        "`auth_env`); they reach the job's training process and the workers of the specs naming them.",
    )
    runs_dir: Path | None = Field(
        None,
        description="A folder of run directories written by `openrft train` (e.g. `runs/`), listed read-only "
        "for the admin key beside the jobs (see openrft.server.local_runs); None = none.",
    )
    allow_reward_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts reward functions may reach: names, '*.domain', IPs, CIDRs, or '*' for any "
        "public host; empty = no network for rewards (see openrft.server.policy).",
    )

    @field_validator("allow_reward_env")
    @classmethod
    def _check_env_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) or name == "OPENRFT_API_KEY":
                raise ValueError(f"allow_reward_env: {name!r} is not a variable a reward may be given")
        return value

    @field_validator("runs_dir")
    @classmethod
    def _check_runs_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(
                f"--runs-dir {str(value)!r} is not a directory; pass the folder `openrft train` wrote runs in"
            )
        return value

    @field_validator("allow_reward_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        from openrft.rewards.url_guard import normalize_host_entry

        return [normalize_host_entry(h) for h in value]
