"""Domain dataclasses as database rows: columns are named like fields; documents (nested dataclasses, lists,
dicts) are stored as JSON, paths as text. RecordTable keeps pods and containers in memory, written through."""

from __future__ import annotations

import dataclasses
import sqlite3
import typing
from pathlib import Path
from typing import Any, Generic, Sequence, TypeVar

from cripy.storage import serde
from cripy.storage.db import Database

T = TypeVar("T")
R = TypeVar("R")


def from_row(cls: type[T], row: sqlite3.Row) -> T:
    columns = set(row.keys())
    hints = serde.field_hints(cls)  # type: ignore[arg-type]  # mypy takes a type[T] for unhashable
    return cls(**{name: _decode(hint, row[name]) for name, hint in hints.items() if name in columns})


def insert(conn: sqlite3.Connection, table: str, record: Any, columns: Sequence[str]) -> None:
    conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [_encode(getattr(record, column)) for column in columns],
    )


def update(conn: sqlite3.Connection, table: str, record: Any, columns: Sequence[str]) -> None:
    conn.execute(
        f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
        [*(_encode(getattr(record, column)) for column in columns), record.id],
    )


def _is_document(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (list, dict, tuple):
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return any(_is_document(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if hint is Path:
        return Path(value)
    if _is_document(hint):
        return serde.loads(hint, value)
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, dict, tuple)) or dataclasses.is_dataclass(value):
        return serde.dumps(value)
    return value


class RecordTable(Generic[R]):
    """A table of records kept in memory and written through to SQLite.

    Reads (find, list, name look-ups) never touch the database: kubelet lists pods and containers every second
    or so, and a list must not cost a query and a rebuild of every row. Every change is written to the database
    before the call that made it returns, so the database stays the truth a restart reloads.
    """

    def __init__(self, db: Database, table: str, cls: type[R], inserted: Sequence[str], updated: Sequence[str]):
        self._db = db
        self._table = table
        self._cls = cls
        self._inserted = tuple(inserted)
        self._updated = tuple(updated)
        self._records: dict[str, R] = {}
        self.version = 0  # changes with every write: lets readers keep what they derived from the records

    async def load(self) -> None:
        rows = await self._db.run(lambda conn: conn.execute(f"SELECT * FROM {self._table}").fetchall())
        self._records = {row["id"]: from_row(self._cls, row) for row in rows}
        self.version += 1

    def find(self, ident: str) -> R | None:
        """By id, or by an id prefix that only one record has."""
        record = self._records.get(ident)
        if record is not None:
            return record
        matches = [r for key, r in self._records.items() if key.startswith(ident)] if ident else []
        return matches[0] if len(matches) == 1 else None

    def all(self) -> list[R]:
        return sorted(self._records.values(), key=lambda r: r.created_at)  # type: ignore[attr-defined]

    def count_by_state(self, states: Sequence[str]) -> dict[str, int]:
        """How many records are in each state (`states` listed even at 0). Safe from another thread: the records
        are copied in one step before they are counted."""
        counts = dict.fromkeys(states, 0)
        for record in list(self._records.values()):
            state = record.state  # type: ignore[attr-defined]
            counts[state] = counts.get(state, 0) + 1
        return counts

    def holder_of(self, name: str) -> str | None:
        return next((key for key, r in self._records.items() if r.name == name), None)  # type: ignore[attr-defined]

    async def insert(self, record: R) -> None:
        await self._db.run(lambda conn: self.insert_row(conn, record))
        self.inserted(record)

    def insert_row(self, conn: sqlite3.Connection, record: R) -> None:
        """The record's row, written by a caller's transaction that writes more (on the database thread); once it
        has committed, the caller calls inserted(record)."""
        insert(conn, self._table, record, self._inserted)

    def inserted(self, record: R) -> None:
        self._records[record.id] = record  # type: ignore[attr-defined]
        self.version += 1

    async def update(self, record: R, columns: Sequence[str] | None = None) -> None:
        await self._db.run(lambda conn: update(conn, self._table, record, columns or self._updated))
        self.version += 1

    async def delete(self, ident: str) -> None:
        await self._db.run(lambda conn: conn.execute(f"DELETE FROM {self._table} WHERE id = ?", (ident,)))
        self._records.pop(ident, None)
        self.version += 1
