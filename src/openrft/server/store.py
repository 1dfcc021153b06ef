"""The embedded store: one SQLite database (WAL mode) plus files in the data dir.

Layout of the data dir::

    openrft.db                 datasets, reward versions, jobs, job events
    api_key                    the generated API key (mode 0600), unless $OPENRFT_API_KEY is set
    datasets/<sha256>.<ext>    uploaded datasets, named by the sha256 of their raw bytes
    rewards/<name>/v<N>.py     reward function versions (source as uploaded)
    runs/<job_id>/             run directories written by the engine (config.json, metrics.jsonl,
                               samples.jsonl, checkpoints/, adapter/) plus job.json and job.log
    tmp/                       uploads in flight

Metrics and samples are *not* copied into SQLite: the run directory is the single source of truth
(the engine writes it, the CLI reads it, a resume truncates it) and `openrft.server.runs` reads it
with a byte-offset index per step, so nothing has to be kept in sync. The jobs table is in this
database too; `openrft.jobs.queue` holds the queue operations on it.

Every call opens its own short-lived connection, so the store is safe to use from any thread or
process; writes that must be atomic use `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    num_rows INTEGER NOT NULL,
    columns TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reward_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    function TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    tests TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
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
"""


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
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
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
        sha256: str,
        name: str,
        path: Path,
        fmt: str,
        size: int,
        num_rows: int,
        columns: list[str],
        upload: Path | None = None,
    ) -> dict[str, Any]:
        """Insert a dataset (or rename the existing one with the same bytes); returns its row.

        `upload`, if given, is moved to `path` inside the same write transaction as the insert, and
        `delete_dataset` removes files inside its own, so a row never points at a missing file.
        """
        ds_id = dataset_id(sha256)
        with self.tx() as db:
            if upload is not None:
                os.replace(upload, path)
            db.execute(
                "INSERT INTO datasets (id, sha256, name, path, format, bytes, num_rows, columns, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(sha256) DO UPDATE SET name=excluded.name",
                (ds_id, sha256, name, str(path), fmt, size, num_rows, json.dumps(columns), time.time()),
            )
            row = db.execute("SELECT * FROM datasets WHERE id=?", (ds_id,)).fetchone()
        return _dataset_row(dict(row))

    def get_dataset(self, ds_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM datasets WHERE id=? OR sha256=?", (ds_id, ds_id))
        return _dataset_row(rows[0]) if rows else None

    def list_datasets(self) -> list[dict[str, Any]]:
        return [_dataset_row(r) for r in self.query("SELECT * FROM datasets ORDER BY created_at DESC")]

    def delete_dataset(self, ds_id: str) -> None:
        """Delete a dataset's row, and its file unless another row still uses it (one transaction)."""
        with self.tx() as db:
            row = db.execute("SELECT path FROM datasets WHERE id=?", (ds_id,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM datasets WHERE id=?", (ds_id,))
            if db.execute("SELECT 1 FROM datasets WHERE path=? LIMIT 1", (row["path"],)).fetchone() is None:
                Path(row["path"]).unlink(missing_ok=True)

    # -- reward versions --------------------------------------------------------------------------

    def reward_versions(self, name: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM reward_versions WHERE name=? ORDER BY version", (name,))
        return [_reward_row(r) for r in rows]

    def reward_version(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        if version is None:
            rows = self.query(
                "SELECT * FROM reward_versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
            )
        else:
            rows = self.query("SELECT * FROM reward_versions WHERE name=? AND version=?", (name, version))
        return _reward_row(rows[0]) if rows else None

    def list_rewards(self) -> list[dict[str, Any]]:
        """The latest version of each reward name, with how many versions it has."""
        rows = self.query(
            "SELECT r.*, c.n AS num_versions FROM reward_versions r JOIN "
            "(SELECT name, MAX(version) AS v, COUNT(*) AS n FROM reward_versions GROUP BY name) c "
            "ON r.name = c.name AND r.version = c.v ORDER BY r.name"
        )
        return [_reward_row(r) for r in rows]

    def add_reward_version(
        self, name: str, source: str, function: str, sha256: str, tests: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Store a new version unless the latest one has the same source, function and tests.

        Returns (version row, created). The file is written before the row, so a row always has
        its file; a crash in between leaves at most an unreferenced file that the next version
        overwrites.
        """
        folder = self.rewards_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        tests_json = json.dumps(tests, sort_keys=True)
        with self.tx() as db:
            last = db.execute(
                "SELECT * FROM reward_versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
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
            tmp = folder / f".v{version}.py.tmp"
            tmp.write_text(source, encoding="utf-8")
            tmp.replace(path)
            db.execute(
                "INSERT INTO reward_versions (name, version, function, path, sha256, tests, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (name, version, function, str(path), sha256, tests_json, time.time()),
            )
        found = self.reward_version(name, version)
        assert found is not None
        return found, True

    # -- jobs (rows; queue transitions live in openrft.jobs.queue) ----------------------------------

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job_row(rows[0]) if rows else None

    def list_jobs(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if status:
            rows = self.query(
                "SELECT * FROM jobs WHERE status=? ORDER BY created_at DESC LIMIT ?", (status, limit)
            )
        else:
            rows = self.query("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_job_row(r) for r in rows]

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT seq, at, event, detail FROM job_events WHERE job_id=? ORDER BY seq", (job_id,)
        )


def dataset_id(sha256: str) -> str:
    """The public id of a dataset: `ds-` and the first 16 hex digits of its sha256."""
    return "ds-" + sha256[:16]


def _dataset_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "columns": json.loads(row["columns"])}


def _reward_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "tests": json.loads(row["tests"])}


def _job_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "config": json.loads(row["config"]), "trackers": json.loads(row["trackers"])}
