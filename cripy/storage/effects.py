"""The side-effect journal: every change a pod or container makes to the node is written down before it is made.

A pod pins namespaces, mounts a shm, runs CNI ADD, creates cgroups; a container mounts its rootfs and creates a
runtime container. Each is recorded (owner, kind, data) *before* the action, so that stop, remove and crash
recovery undo exactly what was (or may have been) done, newest first, and nothing else. Undo functions are
registered per kind and must be idempotent: an effect may be recorded and the crash come before it happened.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, cast

from cripy import faults
from cripy.storage.db import Database

log = logging.getLogger(__name__)

UndoFn = Callable[["Effect"], Awaitable[None]]


@dataclass(frozen=True)
class Effect:
    seq: int
    owner: str
    kind: str
    data: dict[str, Any]


@dataclass
class EffectCounts:
    """What the journal did since start, by kind, and how many effects it holds: plain counts the metrics read
    when scraped (observe/metrics.py)."""

    pending: int = 0
    recorded: dict[str, int] = field(default_factory=dict)
    undone: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # undo attempts that raised


def _bump(counts: dict[str, int], kind: str) -> None:
    counts[kind] = counts.get(kind, 0) + 1


class EffectJournal:
    """Record effects before making them; undo them (newest first) when their owner goes."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._undo: dict[str, UndoFn] = {}
        self.counts = EffectCounts()

    async def load(self) -> None:
        """Count the effects left by the previous run (at start-up, before recovery undoes any)."""
        self.counts.pending = await self._db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0])

    def register(self, kind: str, undo: UndoFn) -> None:
        self._undo[kind] = undo

    async def record(self, owner: str, kind: str, **data: Any) -> Effect:
        (effect,) = await self.record_all(owner, [(kind, data)])
        return effect

    async def record_all(self, owner: str, entries: list[tuple[str, dict[str, Any]]],
                         along: Callable[[sqlite3.Connection], object] | None = None) -> list[Effect]:
        """Several effects of one owner in one commit, in order: for effects made together, after all of them
        are recorded (one trip to the database instead of one each). `along` is a write of the owner's that
        goes in the same commit, before them (its record: the owner and what it is about to make are written
        together, or neither is)."""
        for kind, _ in entries:
            if kind not in self._undo:
                raise ValueError(f"effect kind {kind!r} has no undo function")
        rows = [(owner, kind, json.dumps(data, sort_keys=True)) for kind, data in entries]

        def insert(conn: sqlite3.Connection) -> list[int]:
            if along is not None:
                along(conn)
            return [cast(int, conn.execute("INSERT INTO effects (owner, kind, data) VALUES (?, ?, ?)", row).lastrowid)
                    for row in rows]  # an INSERT's cursor always has its row id

        one_statement = len(rows) == 1 and along is None
        seqs = await self._db.run(insert) if one_statement else await self._db.transaction(insert)
        effects = [Effect(int(seq), owner, kind, data) for seq, (kind, data) in zip(seqs, entries)]
        for effect in effects:
            self.counts.pending += 1
            _bump(self.counts.recorded, effect.kind)
            faults.point(f"effect.{effect.kind}")  # recorded, not yet made
        return effects

    async def effects_of(self, owner: str) -> list[Effect]:
        rows = await self._db.run(
            lambda conn: conn.execute(
                "SELECT seq, owner, kind, data FROM effects WHERE owner = ? ORDER BY seq", (owner,)
            ).fetchall()
        )
        return [Effect(row[0], row[1], row[2], json.loads(row[3])) for row in rows]

    async def find(self, owner: str, kind: str) -> Effect | None:
        effects = [effect for effect in await self.effects_of(owner) if effect.kind == kind]
        return effects[-1] if effects else None

    async def undo(self, owner: str, kinds: Iterable[str] | None = None, *, keep_going: bool = False) -> None:
        """Undo the owner's effects (only `kinds`, when given), newest first, forgetting each once undone.

        With keep_going, a failing undo is logged and the rest still run (used on best-effort paths such as a
        rollback that is already reporting another error); otherwise the first failure stops and is raised, and
        what is left stays recorded for the next attempt.
        """
        wanted = set(kinds) if kinds is not None else None
        for effect in reversed(await self.effects_of(owner)):
            if wanted is not None and effect.kind not in wanted:
                continue
            faults.point(f"undo.{effect.kind}")  # about to be undone: what came before it is already gone
            try:
                undo = self._undo.get(effect.kind)
                if undo is None:
                    raise RuntimeError(f"no undo is known for effect {effect.kind!r} (written by another cripy version?)")
                await undo(effect)
            except Exception as e:
                _bump(self.counts.failed, effect.kind)
                if not keep_going:
                    raise
                log.error("undoing %s of %s failed: %s", effect.kind, owner, e)
                continue
            await self._forget(effect.seq)
            self.counts.pending -= 1
            _bump(self.counts.undone, effect.kind)

    async def all_effects(self) -> list[Effect]:
        rows = await self._db.run(
            lambda conn: conn.execute("SELECT seq, owner, kind, data FROM effects ORDER BY seq").fetchall()
        )
        return [Effect(row[0], row[1], row[2], json.loads(row[3])) for row in rows]

    async def undo_unrecorded(self, owner: str, kind: str, **data: Any) -> None:
        """Run the undo function of `kind` for something the node holds that no entry records (an orphan that
        `cripy audit --repair` found): the same idempotent undo as for a recorded effect."""
        undo = self._undo.get(kind)
        if undo is None:
            raise ValueError(f"effect kind {kind!r} has no undo function")
        await undo(Effect(0, owner, kind, data))

    async def owners(self) -> list[str]:
        return await self._db.run(lambda conn: [r[0] for r in conn.execute("SELECT DISTINCT owner FROM effects")])

    async def _forget(self, seq: int) -> None:
        await self._db.run(lambda conn: conn.execute("DELETE FROM effects WHERE seq = ?", (seq,)))


def forget_owner(conn: sqlite3.Connection, owner: str) -> None:
    conn.execute("DELETE FROM effects WHERE owner = ?", (owner,))
