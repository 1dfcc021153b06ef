"""/v1/keys: users' API keys, managed by the admin key alone (403 for users' keys).

A key is shown once, when created; the server keeps only its sha256 and a short prefix.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from openrft.server import accounts
from openrft.server.deps import Ctx, require_admin

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_admin)])


class KeyCreate(BaseModel):
    """A new API key for a user."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(description="The user the key acts for; what the key creates belongs to this user.")


@router.post("", status_code=201)
def create_key(body: KeyCreate, ctx: Ctx) -> dict[str, Any]:
    """Create a key for `user`; the answer's `key` is the only time the key is shown."""
    row, key = accounts.create_key(ctx.store, body.user)
    return {**row, "key": key}


@router.get("")
def list_keys(ctx: Ctx) -> dict[str, Any]:
    """Every key (revoked ones too), newest first, without secrets."""
    return {"data": accounts.list_keys(ctx.store)}


@router.delete("/{key_id}")
def revoke_key(key_id: str, ctx: Ctx) -> dict[str, Any]:
    """Revoke a key: requests with it get 401 from now on."""
    return accounts.revoke_key(ctx.store, key_id)
