"""Users and their API keys: who is calling, and what they may see.

Two kinds of key answer `Authorization: Bearer KEY`:

- the admin key (the settings, else $OPENRFT_API_KEY, else `<data_dir>/api_key`): the caller is
  the user `admin`, who sees every user's resources and alone may create and revoke keys;
- user keys, created by the admin (`POST /v1/keys`, `openrft server keys create --user NAME`):
  the caller is the key's user, who sees only what that user created.

A user key is 256 random bits, shown once when created. The store keeps only its sha256 (a
high-entropy key needs no slow hash: the digest cannot be reversed or guessed) and a short
prefix to tell keys apart in lists; a request's key is found by the sha256 of what it sends.
Revoking a key marks its row, so the next request with it gets 401. A user exists as long as
the user has resources; a new key for the same name gives access to them again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from openrft.errors import NotFound, UserError
from openrft.server.store import ADMIN, Store

KEY_PREFIX = "ork-"
SHOWN_PREFIX_CHARS = 12  # "ork-" and 8 random characters: enough to tell keys apart, not to guess one
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class Caller:
    """The user a request acts for."""

    name: str
    admin: bool = False

    @property
    def sees(self) -> str | None:
        """The owner whose resources this caller sees; None = everyone's (the admin)."""
        return None if self.admin else self.name


ADMIN_CALLER = Caller(ADMIN, admin=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_user_name(user: str) -> str:
    if not _USER_NAME.match(user):
        raise UserError(f"user name {user!r}: use letters, digits, '_', '.' or '-' (at most 64 characters)")
    if user == ADMIN:
        raise UserError(f"user name {ADMIN!r} is the admin key's; pick another name")
    return user


def create_key(store: Store, user: str) -> tuple[dict[str, Any], str]:
    """A new key for `user`: (its public row, the key itself, to be shown once)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": "key-" + secrets.token_hex(6),
        "user": check_user_name(user),
        "prefix": key[:SHOWN_PREFIX_CHARS],
        "created_at": time.time(),
        "revoked_at": None,
    }
    store.add_api_key(key_hash=hash_key(key), **row)
    return row, key


def list_keys(store: Store) -> list[dict[str, Any]]:
    """Every key (revoked ones too), without secrets, newest first."""
    return store.list_api_keys()


def revoke_key(store: Store, key_id: str) -> dict[str, Any]:
    """Revoke a key at once; NotFound if there is no such key."""
    row = store.revoke_api_key(key_id, time.time())
    if row is None:
        raise NotFound(f"no API key {key_id!r}; list keys with GET /v1/keys (openrft server keys list)")
    return row


def resolve(store: Store, admin_key: str, given: str | None) -> Caller | None:
    """The caller a request's bearer token stands for, or None (401)."""
    if not given:
        return None
    if hmac.compare_digest(given.encode("utf-8"), admin_key.encode("utf-8")):
        return ADMIN_CALLER
    user = store.api_key_user(hash_key(given))
    return Caller(user) if user is not None else None
