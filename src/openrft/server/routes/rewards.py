"""/v1/rewards: register reward functions from source text (versioned), list, read, golden-test."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from openrft.server import services
from openrft.server.deps import Ctx, CurrentCaller
from openrft.server.policy import RewardPolicy

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])

Owner = Annotated[
    str | None,
    Query(
        description="Admin only: whose reward of that name (default: the admin's, else the one user's "
        "who has it). Reward names are per user."
    ),
]


class RewardCreate(BaseModel):
    """A reward function as Python source, e.g. shipped by the SDK from a callable."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Reward name (the metric rewards/<name>/mean); versions share it.")
    source: str = Field(description="Python source defining the function at top level.")
    function: str | None = Field(None, description="Function to call; default: the only top-level one.")
    tests: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Golden cases {completion, expected, prompt?, example?, tolerance?}; must pass.",
    )


class RewardTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, description="Version to test; default: the latest.")
    cases: list[dict[str, Any]] | None = Field(None, description="Cases; default: the version's own tests.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments bound to the function."
    )


@router.post("", status_code=201)
async def create_reward(
    body: RewardCreate, ctx: Ctx, caller: CurrentCaller, response: Response
) -> dict[str, Any]:
    """Store a new version (201), or return the latest one unchanged (200) if the source is the same."""
    version, created = await run_in_threadpool(
        services.create_reward,
        ctx.store,
        caller,
        body.name,
        body.source,
        body.function,
        body.tests,
        RewardPolicy.from_settings(ctx.settings),
    )
    response.status_code = 201 if created else 200
    return _public(version, with_source=False)


@router.get("")
def list_rewards(ctx: Ctx, caller: CurrentCaller) -> dict[str, Any]:
    """The latest version of each of the caller's reward functions (the admin: everyone's)."""
    return {"data": [_public(r, with_source=False) for r in ctx.store.list_rewards(caller.sees)]}


@router.get("/{name}")
def get_reward(name: str, ctx: Ctx, caller: CurrentCaller, owner: Owner = None) -> dict[str, Any]:
    """All versions of a reward function (without source), oldest first."""
    versions = services.reward_versions(ctx.store, caller, name, owner)
    return {"name": name, "versions": [_public(v, with_source=False) for v in versions]}


@router.get("/{name}/versions/{version}")
def get_reward_version(
    name: str, version: int, ctx: Ctx, caller: CurrentCaller, owner: Owner = None
) -> dict[str, Any]:
    """One version with its source."""
    return _public(services.require_reward(ctx.store, caller, name, version, owner), with_source=True)


@router.post("/{name}/test")
async def test_reward(
    name: str, body: RewardTest, ctx: Ctx, caller: CurrentCaller, owner: Owner = None
) -> dict[str, Any]:
    """Run golden cases against a version in the isolated reward workers."""
    policy = RewardPolicy.from_settings(ctx.settings)
    return await run_in_threadpool(
        services.run_reward_tests,
        ctx.store,
        caller,
        name,
        body.version,
        body.cases,
        body.kwargs,
        owner,
        policy,
    )


def _public(rv: dict[str, Any], *, with_source: bool) -> dict[str, Any]:
    out = {k: v for k, v in rv.items() if k not in ("path", "num_versions")}
    out["ref"] = f"reward:{rv['name']}@{rv['version']}"
    if "num_versions" in rv:
        out["num_versions"] = rv["num_versions"]
    if with_source:
        with open(rv["path"], encoding="utf-8") as f:
            out["source"] = f.read()
    return out
