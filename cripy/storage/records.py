"""Domain dataclasses as database rows: columns are named like fields; documents (nested dataclasses, lists,
dicts) are stored as JSON, paths as text. Used for pods and containers, which are looked up by id or id prefix."""

from __future__ import annotations

import dataclasses
import sqlite3
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

from cripy.storage import serde

T = TypeVar("T")


def from_row(cls: type[T], row: sqlite3.Row) -> T:
    hints = typing.get_type_hints(cls)
    columns = set(row.keys())
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in columns:
            values[field.name] = _decode(hints[field.name], row[field.name])
    return cls(**values)


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


def find_by_id(conn: sqlite3.Connection, table: str, ident: str) -> sqlite3.Row | None:
    """The row with this id, or else the only row whose id starts with it (crictl-style short ids)."""
    row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (ident,)).fetchone()
    if row is not None:
        return row
    prefix = ident.replace("%", "").replace("_", "")
    if prefix != ident:
        return None
    rows = conn.execute(f"SELECT * FROM {table} WHERE id LIKE ? LIMIT 2", (prefix + "%",)).fetchall()
    return rows[0] if len(rows) == 1 else None


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
