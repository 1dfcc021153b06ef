"""The embedded store: one SQLite database (WAL mode) plus files in the data dir.

Layout of the data dir::

    openrft.db                 datasets, reward versions, jobs, job events, users' API keys (hashed)
    api_key                    the generated admin API key (mode 0600), unless $OPENRFT_API_KEY is set
    datasets/<sha256>.<ext>    uploaded datasets, named by the sha256 of their raw bytes (one file
                               for every user who uploaded the same bytes)
    rewards/<name>/v<N>.py     the admin's reward function versions (source as uploaded)
    rewards/@<user>/<name>/v<N>.py   another user's
    runs/<job_id>/             run directories written by the engine (config.json, metrics.jsonl,
                               samples.jsonl, checkpoints/, adapter/) plus job.json and job.log
    tmp/                       uploads in flight

Metrics and samples are *not* copied into SQLite: the run directory is the single source of truth
(the engine writes it, the CLI reads it, a resume truncates it) and `openrft.server.runs` reads it
with a byte-offset index per step, so nothing has to be kept in sync. The jobs table is in this
database too; `openrft.jobs.queue` holds the queue operations on it.

Every dataset, reward version and job has an `owner` (the user whose key created it; `admin`
for the admin key and for rows of databases older than accounts). Reads take `owner`: a user's
name to see only that user's rows, None to see everyone's (the admin).

Every call opens its own short-lived connection, so the store is safe to use from any thread or
process; writes that must be atomic use `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openrft.fsutil import write_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'admin',
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    num_rows INTEGER NOT NULL,
    columns TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (owner, sha256)
);
CREATE TABLE IF NOT EXISTS reward_versions (
    owner TEXT NOT NULL DEFAULT 'admin',
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    function TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    tests TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, name, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT 'admin',
    name TEXT,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    base_model TEXT NOT NULL,
    dataset_id TEXT,
    config TEXT NOT NULL,
    trackers TEXT NOT NULL DEFAULT '[]',
    run_dir TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    requested TEXT,
    worker TEXT,
    pid INTEGER,
    pid_start TEXT,
    heartbeat REAL,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""

# Indexes on `owner`, created after `migrate_owners` has added the column to an older database.
OWNER_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE INDEX IF NOT EXISTS datasets_owner ON datasets(owner, created_at);
"""

ADMIN = "admin"

# Databases older than accounts: the tables whose uniqueness now includes the owner are rebuilt
# (SQLite cannot change a constraint in place); their rows, and every job, belong to the admin.
_REBUILT_WITH_OWNER = {
    "datasets": "id, sha256, name, path, format, bytes, num_rows, columns, created_at",
    "reward_versions": "name, version, function, path, sha256, tests, created_at",
}


class Store:
    """The data dir and its SQLite database."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self.db_path = self.root / "openrft.db"
        self.datasets_dir = self.root / "datasets"
        self.rewards_dir = self.root / "rewards"
        self.runs_dir = self.root / "runs"
        self.tmp_dir = self.root / "tmp"

    # -- setup ------------------------------------------------------------------------------------

    def init(self) -> Store:
        """Create folders and tables (idempotent); clear half-finished uploads."""
        for d in (self.root, self.datasets_dir, self.rewards_dir, self.runs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        return self.init_db()

    def init_db(self) -> Store:
        """Create the tables and migrate an older database (idempotent). Safe while a server uses
        the data dir (unlike `init`, it leaves uploads in flight alone): the CLI's `keys` use it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        migrate_owners(self)
        with self.connect() as db:
            db.executescript(OWNER_INDEXES)
        return self

    def connect(self) -> sqlite3.Connection:
        """A new connection in autocommit mode (use `tx` for multi-statement atomicity)."""
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` ... `COMMIT` (rolled back on an exception)."""
        db = self.connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        db = self.connect()
        try:
            return [dict(r) for r in db.execute(sql, args).fetchall()]
        finally:
            db.close()

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        db = self.connect()
        try:
            return db.execute(sql, args).rowcount
        finally:
            db.close()

    # -- datasets ---------------------------------------------------------------------------------

    def add_dataset(
        self,
        *,
        owner: str,
        sha256: str,
        name: str,
        path: Path,
        fmt: str,
        size: int,
        num_rows: int,
        columns: list[str],
        upload: Path | None = None,
    ) -> dict[str, Any]:
        """Insert `owner`'s dataset (or rename their existing one with the same bytes); returns its row.

        `upload`, if given, is moved to `path` inside the same write transaction as the insert, and
        `delete_dataset` removes files inside its own, so a row never points at a missing file.
        """
        ds_id = dataset_id(sha256, owner)
        with self.tx() as db:
            if upload is not None:
                os.replace(upload, path)  # the finished upload moves in: a rename, not a write
            db.execute(
                "INSERT INTO datasets (id, owner, sha256, name, path, format, bytes, num_rows, columns,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(owner, sha256) DO UPDATE SET name=excluded.name",
                (
                    ds_id,
                    owner,
                    sha256,
                    name,
                    str(path),
                    fmt,
                    size,
                    num_rows,
                    json.dumps(columns),
                    time.time(),
                ),
            )
            row = db.execute("SELECT * FROM datasets WHERE id=?", (ds_id,)).fetchone()
        return _dataset_row(dict(row))

    def get_dataset(self, ds_id: str, owner: str | None = None) -> dict[str, Any] | None:
        """A dataset by id or sha256 (by sha256 with `owner` None: the admin's copy first)."""
        rows = self.query(
            "SELECT * FROM datasets WHERE (id=? OR sha256=?) AND (? IS NULL OR owner=?)"
            " ORDER BY id=? DESC, owner=? DESC, created_at LIMIT 1",
            (ds_id, ds_id, owner, owner, ds_id, ADMIN),
        )
        return _dataset_row(rows[0]) if rows else None

    def list_datasets(self, owner: str | None = None) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT * FROM datasets WHERE ? IS NULL OR owner=? ORDER BY created_at DESC", (owner, owner)
        )
        return [_dataset_row(r) for r in rows]

    def delete_dataset(self, ds_id: str, keep_file: bool = False) -> None:
        """Delete a dataset's row, and its file unless another row (another user's) still uses it
        or `keep_file` (an unfinished job reads it); one transaction."""
        with self.tx() as db:
            row = db.execute("SELECT path FROM datasets WHERE id=?", (ds_id,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM datasets WHERE id=?", (ds_id,))
            used = db.execute("SELECT 1 FROM datasets WHERE path=? LIMIT 1", (row["path"],)).fetchone()
            if used is None and not keep_file:
                Path(row["path"]).unlink(missing_ok=True)

    # -- reward versions --------------------------------------------------------------------------

    def reward_versions(self, name: str, owner: str = ADMIN) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT * FROM reward_versions WHERE owner=? AND name=? ORDER BY version", (owner, name)
        )
        return [_reward_row(r) for r in rows]

    def reward_version(
        self, name: str, version: int | None = None, owner: str = ADMIN
    ) -> dict[str, Any] | None:
        if version is None:
            rows = self.query(
                "SELECT * FROM reward_versions WHERE owner=? AND name=? ORDER BY version DESC LIMIT 1",
                (owner, name),
            )
        else:
            rows = self.query(
                "SELECT * FROM reward_versions WHERE owner=? AND name=? AND version=?", (owner, name, version)
            )
        return _reward_row(rows[0]) if rows else None

    def reward_owners(self, name: str) -> list[str]:
        """The users who have a reward called `name`."""
        rows = self.query("SELECT DISTINCT owner FROM reward_versions WHERE name=? ORDER BY owner", (name,))
        return [r["owner"] for r in rows]

    def list_rewards(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The latest version of each reward (of `owner`, or everyone's), with how many versions it has."""
        rows = self.query(
            "SELECT r.*, c.n AS num_versions FROM reward_versions r JOIN "
            "(SELECT owner, name, MAX(version) AS v, COUNT(*) AS n FROM reward_versions"
            " WHERE ? IS NULL OR owner=? GROUP BY owner, name) c "
            "ON r.owner = c.owner AND r.name = c.name AND r.version = c.v ORDER BY r.name, r.owner",
            (owner, owner),
        )
        return [_reward_row(r) for r in rows]

    def reward_folder(self, name: str, owner: str = ADMIN) -> Path:
        """Where `owner`'s versions of reward `name` live ('@' is in no reward name: no collisions)."""
        return self.rewards_dir / name if owner == ADMIN else self.rewards_dir / f"@{owner}" / name

    def add_reward_version(
        self,
        name: str,
        source: str,
        function: str,
        sha256: str,
        tests: list[dict[str, Any]],
        owner: str = ADMIN,
    ) -> tuple[dict[str, Any], bool]:
        """Store a new version unless the latest one has the same source, function and tests.

        Returns (version row, created). The file is written before the row, so a row always has
        its file; a crash in between leaves at most an unreferenced file that the next version
        overwrites.
        """
        folder = self.reward_folder(name, owner)
        folder.mkdir(parents=True, exist_ok=True)
        tests_json = json.dumps(tests, sort_keys=True)
        with self.tx() as db:
            last = db.execute(
                "SELECT * FROM reward_versions WHERE owner=? AND name=? ORDER BY version DESC LIMIT 1",
                (owner, name),
            ).fetchone()
            if (
                last
                and last["sha256"] == sha256
                and last["function"] == function
                and last["tests"] == tests_json
            ):
                return _reward_row(dict(last)), False
            version = (last["version"] + 1) if last else 1
            path = folder / f"v{version}.py"
            write_atomic(path, source)
            db.execute(
                "INSERT INTO reward_versions (owner, name, version, function, path, sha256, tests,"
                " created_at) VALUES (?,?,?,?,?,?,?,?)",
                (owner, name, version, function, str(path), sha256, tests_json, time.time()),
            )
        found = self.reward_version(name, version, owner)
        assert found is not None
        return found, True

    # -- jobs (rows; queue transitions live in openrft.jobs.queue) ----------------------------------

    def get_job(self, job_id: str, owner: str | None = None) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id=? AND (? IS NULL OR owner=?)", (job_id, owner, owner))
        return _job_row(rows[0]) if rows else None

    def list_jobs(
        self, status: str | None = None, limit: int = 200, owner: str | None = None
    ) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT * FROM jobs WHERE (? IS NULL OR status=?) AND (? IS NULL OR owner=?)"
            " ORDER BY created_at DESC LIMIT ?",
            (status or None, status or None, owner, owner, limit),
        )
        return [_job_row(r) for r in rows]

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT seq, at, event, detail FROM job_events WHERE job_id=? ORDER BY seq", (job_id,)
        )

    # -- users' API keys (see openrft.server.accounts) --------------------------------------------

    def add_api_key(
        self, *, id: str, user: str, prefix: str, key_hash: str, created_at: float, revoked_at: None
    ) -> None:
        self.execute(
            "INSERT INTO api_keys (id, user, prefix, key_hash, created_at, revoked_at) VALUES (?,?,?,?,?,?)",
            (id, user, prefix, key_hash, created_at, revoked_at),
        )

    def api_key_user(self, key_hash: str) -> str | None:
        """The user of the unrevoked key with this sha256, or None."""
        rows = self.query("SELECT user FROM api_keys WHERE key_hash=? AND revoked_at IS NULL", (key_hash,))
        return rows[0]["user"] if rows else None

    def list_api_keys(self) -> list[dict[str, Any]]:
        return self.query(
            "SELECT id, user, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at DESC, id"
        )

    def revoke_api_key(self, key_id: str, at: float) -> dict[str, Any] | None:
        """Mark a key revoked (keeping its first revocation time); its row, or None if there is none."""
        self.execute("UPDATE api_keys SET revoked_at=COALESCE(revoked_at, ?) WHERE id=?", (at, key_id))
        rows = self.query(
            "SELECT id, user, prefix, created_at, revoked_at FROM api_keys WHERE id=?", (key_id,)
        )
        return rows[0] if rows else None


def migrate_owners(store: Store) -> None:
    """Give a database older than accounts its `owner` columns (idempotent; see `_REBUILT_WITH_OWNER`)."""
    with store.tx() as db:
        for table, columns in _REBUILT_WITH_OWNER.items():
            if "owner" in _columns(db, table):
                continue
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_before_owner")
            schema = next(s for s in SCHEMA.split(";") if f"CREATE TABLE IF NOT EXISTS {table} (" in s)
            db.execute(schema)
            db.execute(
                f"INSERT INTO {table} (owner, {columns}) SELECT ?, {columns} FROM {table}_before_owner",
                (ADMIN,),
            )
            db.execute(f"DROP TABLE {table}_before_owner")
        if "owner" not in _columns(db, "jobs"):
            db.execute(f"ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '{ADMIN}'")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}


def dataset_id(sha256: str, owner: str = ADMIN) -> str:
    """The public id of a dataset: `ds-` and 16 hex digits: of its sha256 for the admin's (the ids
    of databases older than accounts), of the sha256 of 'owner:sha256' for another user's."""
    if owner == ADMIN:
        return "ds-" + sha256[:16]
    return "ds-" + hashlib.sha256(f"{owner}:{sha256}".encode()).hexdigest()[:16]


def _dataset_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "columns": json.loads(row["columns"])}


def _reward_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "tests": json.loads(row["tests"])}


def _job_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "config": json.loads(row["config"]), "trackers": json.loads(row["trackers"])}
