"""cripy.storage.db: migrations, user_version, WAL, transactions that roll back on an exception."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cripy.storage.db import MIGRATIONS, Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open_sync(tmp_path / "state" / "cripy.db")
    yield database
    database.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_open_applies_every_migration(db: Database) -> None:
    version = await db.run(lambda conn: conn.execute("PRAGMA user_version").fetchone()[0])
    assert version == len(MIGRATIONS)
    tables = await db.run(_tables)
    assert {"layers", "images", "image_layers", "image_names", "pods", "containers", "effects"} <= tables


async def test_database_settings(db: Database) -> None:
    mode = await db.run(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode.lower() == "wal"
    assert await db.run(lambda conn: conn.execute("PRAGMA foreign_keys").fetchone()[0]) == 1
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600
    assert db.path.parent.is_dir()  # created by open


async def test_queries_run_on_one_dedicated_thread(db: Database) -> None:
    names = {await db.run(lambda conn: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1
    (name,) = names
    assert name.startswith("cripy-db")
    assert name != threading.current_thread().name


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "cripy.db"
    first = Database.open_sync(path)
    first._executor.submit(  # a plain insert through the db thread
        lambda: first._conn.execute(
            "INSERT INTO effects (owner, kind, data) VALUES ('o', 'k', '{}')"
        )
    ).result()
    first.close()
    second = Database.open_sync(path)
    try:
        count = second._executor.submit(
            lambda: second._conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0]
        ).result()
        version = second._executor.submit(
            lambda: second._conn.execute("PRAGMA user_version").fetchone()[0]
        ).result()
    finally:
        second.close()
    assert count == 1
    assert version == len(MIGRATIONS)


def test_partially_migrated_database_gets_the_remaining_migrations(tmp_path: Path) -> None:
    path = tmp_path / "cripy.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    conn.close()
    db = Database.open_sync(path)
    try:
        tables = db._executor.submit(lambda: _tables(db._conn)).result()
        version = db._executor.submit(lambda: db._conn.execute("PRAGMA user_version").fetchone()[0]).result()
    finally:
        db.close()
    assert "pods" in tables and "effects" in tables
    assert version == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cripy.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this cripy understands"):
        Database.open_sync(path)


async def test_transaction_commits_everything(db: Database) -> None:
    def insert_two(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO effects (owner, kind, data) VALUES ('a', 'k', '{}')")
        conn.execute("INSERT INTO effects (owner, kind, data) VALUES ('b', 'k', '{}')")
        return "done"

    assert await db.transaction(insert_two) == "done"
    owners = await db.run(lambda conn: [r[0] for r in conn.execute("SELECT owner FROM effects ORDER BY seq")])
    assert owners == ["a", "b"]


async def test_transaction_rolls_back_on_exception(db: Database) -> None:
    class Boom(Exception):
        pass

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO effects (owner, kind, data) VALUES ('a', 'k', '{}')")
        raise Boom("midway")

    with pytest.raises(Boom, match="midway"):
        await db.transaction(insert_then_fail)
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0]) == 0
    assert await db.run(lambda conn: conn.in_transaction) is False
    # The connection stays usable for the next transaction.
    await db.transaction(lambda conn: conn.execute("INSERT INTO effects (owner, kind, data) VALUES ('c', 'k', '{}')"))
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0]) == 1


async def test_transaction_rolls_back_on_constraint_violation(db: Database) -> None:
    def bad_reference(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO images (id, manifest_digest, manifest, manifest_type, config, size, pulled_at)"
            " VALUES ('sha256:x', 'sha256:m', x'', 't', x'', 0, 0)"
        )
        # image_layers.chain_id references layers: no such layer, and foreign keys are on.
        conn.execute("INSERT INTO image_layers (image_id, position, chain_id) VALUES ('sha256:x', 0, 'sha256:none')")

    with pytest.raises(sqlite3.IntegrityError):
        await db.transaction(bad_reference)
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]) == 0


async def test_deleting_an_image_cascades_to_its_names_and_layer_list(db: Database) -> None:
    def setup(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO layers VALUES ('sha256:l', 'sha256:l', NULL, 1, 1, 0)")
        conn.execute(
            "INSERT INTO images (id, manifest_digest, manifest, manifest_type, config, size, pulled_at)"
            " VALUES ('sha256:i', 'sha256:m', x'', 't', x'', 0, 0)"
        )
        conn.execute("INSERT INTO image_layers VALUES ('sha256:i', 0, 'sha256:l')")
        conn.execute("INSERT INTO image_names VALUES ('docker.io/library/a:1', 'tag', 'sha256:i')")

    await db.transaction(setup)
    await db.transaction(lambda conn: conn.execute("DELETE FROM images WHERE id = 'sha256:i'"))
    counts = await db.run(
        lambda conn: [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("image_layers", "image_names", "layers")]
    )
    assert counts == [0, 0, 1]  # the layer row itself is the store's to collect


async def test_failed_commit_leaves_the_connection_usable(db: Database) -> None:
    def deferred_violation(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute("INSERT INTO image_names VALUES ('docker.io/library/a:1', 'tag', 'sha256:missing')")

    with pytest.raises(sqlite3.IntegrityError):
        await db.transaction(deferred_violation)
    assert await db.run(lambda conn: conn.in_transaction) is False
    await db.transaction(lambda conn: conn.execute("INSERT INTO effects (owner, kind, data) VALUES ('c', 'k', '{}')"))


async def test_a_containers_process_user_is_kept_and_older_rows_read_without_one(tmp_path: Path) -> None:
    from cripy.containers.container import Container
    from cripy.containers.model import ContainerRequest
    from cripy.containers.users import ProcessUser
    from cripy.storage.records import RecordTable

    path = tmp_path / "cripy.db"
    conn = sqlite3.connect(path, isolation_level=None)  # a database of schema 2, with a container in it
    conn.executescript(f"BEGIN; {MIGRATIONS[0]}; {MIGRATIONS[1]}; PRAGMA user_version = 2; COMMIT;")
    conn.execute("INSERT INTO pods (id, name, state, created_at, request, runtime_handler, cgroup_parent, run_dir)"
                 " VALUES ('p', 'pod', 'ready', 1, '{}', 'runc', '/c', '/r')")
    conn.execute("INSERT INTO containers (id, pod_id, name, state, created_at, image_id, image_name, request,"
                 " log_path) VALUES ('old', 'p', 'old_ctr', 'created', 1, 'i', 'img', ?, '/l')",
                 ('{"name": "old", "image": "img"}',))
    conn.close()
    db = Database.open_sync(path)
    try:
        table = RecordTable(db, "containers", Container, ("id", "pod_id", "name", "state", "created_at", "image_id",
                                                          "image_name", "request", "log_path"), ("process_user",))
        await table.load()
        assert table.find("old").process_user is None
        new = Container(id="new", pod_id="p", name="new_ctr", state="created", created_at=2, image_id="i",
                        image_name="img", request=ContainerRequest(name="new", image="img"), log_path="/l",
                        process_user=ProcessUser(uid=1000, gid=1000, additional_gids=[1000, 1234, 50000]))
        await table.insert(new)
        await table.update(new)
        await table.load()
        assert table.find("new").process_user == ProcessUser(uid=1000, gid=1000, additional_gids=[1000, 1234, 50000])
    finally:
        db.close()
