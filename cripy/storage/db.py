"""The SQLite database: one file under the root, WAL journal, every query on one dedicated thread.

SQLite calls block (and commits fsync), so they never run on the event loop: `Database.run(fn)` hands a function
of the connection to the database thread and awaits its result. One thread serialises all access, which is what
SQLite wants from one process anyway. Schema changes are numbered migrations applied at open.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from cripy import faults

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: images, their names and layers.
    """
    CREATE TABLE layers (
        chain_id     TEXT PRIMARY KEY,
        diff_id      TEXT NOT NULL,
        parent       TEXT,
        size         INTEGER NOT NULL,
        inodes       INTEGER NOT NULL,
        created_at   INTEGER NOT NULL
    );
    CREATE TABLE images (
        id              TEXT PRIMARY KEY,
        manifest_digest TEXT NOT NULL,
        manifest        BLOB NOT NULL,
        manifest_type   TEXT NOT NULL,
        config          BLOB NOT NULL,
        size            INTEGER NOT NULL,
        pulled_at       INTEGER NOT NULL
    );
    CREATE TABLE image_layers (
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        chain_id  TEXT NOT NULL REFERENCES layers(chain_id),
        PRIMARY KEY (image_id, position)
    );
    CREATE INDEX image_layers_chain ON image_layers(chain_id);
    CREATE TABLE image_names (
        name      TEXT PRIMARY KEY,
        kind      TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX image_names_image ON image_names(image_id);
    """,
    # 2: pods, containers, and the journal of their side effects.
    """
    CREATE TABLE pods (
        id              TEXT PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        state           TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        request         TEXT NOT NULL,
        runtime_handler TEXT NOT NULL,
        ips             TEXT NOT NULL DEFAULT '[]',
        cgroup_parent   TEXT NOT NULL,
        run_dir         TEXT NOT NULL,
        infra_id        TEXT,
        infra_pid       INTEGER
    );
    CREATE TABLE containers (
        id           TEXT PRIMARY KEY,
        pod_id       TEXT NOT NULL REFERENCES pods(id),
        name         TEXT NOT NULL UNIQUE,
        state        TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        started_at   INTEGER NOT NULL DEFAULT 0,
        finished_at  INTEGER NOT NULL DEFAULT 0,
        exit_code    INTEGER NOT NULL DEFAULT 0,
        reason       TEXT NOT NULL DEFAULT '',
        message      TEXT NOT NULL DEFAULT '',
        image_id     TEXT NOT NULL,
        image_name   TEXT NOT NULL,
        request      TEXT NOT NULL,
        log_path     TEXT NOT NULL,
        pid          INTEGER NOT NULL DEFAULT 0,
        conmon_pid   INTEGER NOT NULL DEFAULT 0,
        stop_signal  TEXT NOT NULL DEFAULT '',
        cgroup_path  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX containers_pod ON containers(pod_id);
    CREATE TABLE effects (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        owner  TEXT NOT NULL,
        kind   TEXT NOT NULL,
        data   TEXT NOT NULL
    );
    CREATE INDEX effects_owner ON effects(owner);
    """,
    # 3: the credentials a container's process runs with, as resolved at create (ContainerStatus reports them).
    """
    ALTER TABLE containers ADD COLUMN process_user TEXT;
    """,
]


class Database:
    """An open cripy.db; use `await db.run(fn)` or `await db.transaction(fn)`."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, path: Path) -> None:
        self._conn = conn
        self._executor = executor
        self.path = path

    @classmethod
    def open_sync(cls, path: Path) -> "Database":
        """Open (creating and migrating) the database; call before the event loop serves requests."""
        path.parent.mkdir(parents=True, exist_ok=True)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cripy-db")
        conn = executor.submit(_connect, path).result()
        return cls(conn, executor, path)

    @classmethod
    async def open(cls, path: Path) -> "Database":
        return await asyncio.to_thread(cls.open_sync, path)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the database thread (autocommit statements, or reads)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) inside one transaction: all of it is committed, or none of it."""

        def in_transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")  # may fail too (deferred constraints): then roll back as well
                faults.point("db.commit")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self.run(in_transaction)

    def close(self) -> None:
        self._executor.submit(self._conn.close).result()
        self._executor.shutdown(wait=True)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    # Keep the write-ahead log small and its file from staying at its high-water mark: with pods churning all day
    # the WAL is checkpointed every 1 MiB and truncated back to 1 MiB, so the database's disk use stays flat.
    conn.execute("PRAGMA wal_autocheckpoint=256")
    conn.execute(f"PRAGMA journal_size_limit={1 << 20}")
    _migrate(conn)
    path.chmod(0o600)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this cripy understands ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
