"""The image tables' queries (images, image_layers, image_names, layers): what the store asks of SQLite, each a
function of a connection, run on the database thread by the store."""

from __future__ import annotations

import sqlite3
import time
from typing import Sequence

from cripy.errors import DataLoss, InvalidArgument
from cripy.images.reference import Reference, parse_image_id, parse_normalized


def select_images(conn: sqlite3.Connection, image_id: str | None = None) -> list:
    if image_id is None:
        rows = conn.execute("SELECT * FROM images ORDER BY pulled_at, id").fetchall()
    else:
        rows = conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchall()
    result = []
    for row in rows:
        names = [(r["name"], r["kind"]) for r in conn.execute("SELECT name, kind FROM image_names WHERE image_id = ?", (row["id"],))]
        chains = [r[0] for r in conn.execute(
            "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position", (row["id"],))]
        result.append((row, names, chains))
    return result


def insert_image(
    conn: sqlite3.Connection,
    image_id: str,
    manifest_digest: str,
    manifest: bytes,
    manifest_type: str,
    config: bytes,
    chain_ids: list[str],
    names: Sequence[Reference],
) -> None:
    for chain_id in chain_ids:
        if not layer_exists(conn, chain_id):
            raise DataLoss(f"layer {chain_id} of image {image_id} vanished before the image was recorded")
    size = conn.execute(
        f"SELECT COALESCE(SUM(size), 0) FROM layers WHERE chain_id IN ({','.join('?' * len(chain_ids))})",
        chain_ids,
    ).fetchone()[0] if chain_ids else 0
    size += len(config)
    conn.execute(
        "INSERT INTO images (id, manifest_digest, manifest, manifest_type, config, size, pulled_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET manifest_digest = excluded.manifest_digest, manifest = excluded.manifest,"
        " manifest_type = excluded.manifest_type, pulled_at = excluded.pulled_at",
        (image_id, manifest_digest, manifest, manifest_type, config, size, int(time.time())),
    )
    conn.execute("DELETE FROM image_layers WHERE image_id = ?", (image_id,))
    conn.executemany(
        "INSERT INTO image_layers (image_id, position, chain_id) VALUES (?, ?, ?)",
        [(image_id, position, chain_id) for position, chain_id in enumerate(chain_ids)],
    )
    for ref in names:
        if ref.tag is not None and ref.digest is None:
            name, kind = str(ref), "tag"
        else:
            name, kind = f"{ref.name}@{ref.digest or manifest_digest}", "digest"
        # A tag moves to the newest image pulled under it, as in every runtime.
        conn.execute(
            "INSERT INTO image_names (name, kind, image_id) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET image_id = excluded.image_id, kind = excluded.kind",
            (name, kind, image_id),
        )
        if kind == "tag":
            conn.execute(
                "INSERT OR REPLACE INTO image_names (name, kind, image_id) VALUES (?, 'digest', ?)",
                (f"{ref.name}@{manifest_digest}", image_id),
            )
    # Images left without any name by a moved tag are collected by remove_unnamed_unused.


def resolve_id(conn: sqlite3.Connection, ref: str, candidates: Sequence[Reference]) -> str | None:
    ref = ref.strip()
    if not ref:
        raise InvalidArgument("image reference is empty")
    image_id = parse_image_id(ref)
    if image_id is not None:
        row = conn.execute("SELECT id FROM images WHERE id = ?", (image_id,)).fetchone()
        if row:
            return row[0]
    names: list[str] = []
    for candidate in (*candidates, *_normalized(ref)):
        names.append(str(candidate))
        if candidate.digest is not None:
            names.append(f"{candidate.name}@{candidate.digest}")
    for name in names:
        row = conn.execute("SELECT image_id FROM image_names WHERE name = ?", (name,)).fetchone()
        if row:
            return row[0]
    if 4 <= len(ref) < 64 and all(c in "0123456789abcdef" for c in ref):
        rows = conn.execute("SELECT id FROM images WHERE id LIKE ?", (f"sha256:{ref}%",)).fetchall()
        if len(rows) == 1:
            return rows[0][0]
    return None


def _normalized(ref: str) -> list[Reference]:
    try:
        return [parse_normalized(ref)]
    except InvalidArgument:
        if parse_image_id(ref) is not None or all(c in "0123456789abcdef" for c in ref):
            return []
        raise


def tag_named(conn: sqlite3.Connection, ref: str, candidates: Sequence[Reference], image_id: str) -> str | None:
    """The tag name `ref` denotes for this image, if `ref` is a tag rather than an id or digest."""
    for candidate in (*candidates, *_normalized(ref)):
        if candidate.digest is None:
            row = conn.execute(
                "SELECT name FROM image_names WHERE name = ? AND kind = 'tag' AND image_id = ?",
                (str(candidate), image_id),
            ).fetchone()
            if row:
                return row[0]
    return None


def tag_count(conn: sqlite3.Connection, image_id: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM image_names WHERE image_id = ? AND kind = 'tag'", (image_id,)).fetchone()[0]


def image_exists(conn: sqlite3.Connection, image_id: str) -> bool:
    return conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is not None


def layer_exists(conn: sqlite3.Connection, chain_id: str) -> bool:
    return conn.execute("SELECT 1 FROM layers WHERE chain_id = ?", (chain_id,)).fetchone() is not None


def unreferenced_layers(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT chain_id FROM layers WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)")]


def has_names(conn: sqlite3.Connection, image_id: str) -> bool:
    return conn.execute("SELECT 1 FROM image_names WHERE image_id = ? LIMIT 1", (image_id,)).fetchone() is not None


def unnamed_images(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM image_names)")]
