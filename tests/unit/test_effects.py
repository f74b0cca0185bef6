"""cripy.storage.effects: record before acting, undo newest first, forget only what was undone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cripy.storage.db import Database
from cripy.storage.effects import Effect, EffectJournal, forget_owner


class Recorder:
    """Undo functions that note what they undid and fail on demand."""

    def __init__(self) -> None:
        self.undone: list[tuple[str, str, dict]] = []
        self.failing: set[str] = set()

    def undo_fn(self, kind: str):
        async def undo(effect: Effect) -> None:
            assert effect.kind == kind
            if kind in self.failing:
                raise OSError(f"cannot undo {kind}")
            self.undone.append((effect.owner, effect.kind, effect.data))

        return undo


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "cripy.db")
    yield database
    database.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def journal(db: Database, recorder: Recorder) -> EffectJournal:
    journal = EffectJournal(db)
    for kind in ("dir", "mount", "netns", "cgroup"):
        journal.register(kind, recorder.undo_fn(kind))
    return journal


async def test_record_returns_the_effect_and_keeps_it(journal: EffectJournal) -> None:
    first = await journal.record("pod1", "dir", path="/run/x", mode=0o700)
    second = await journal.record("pod1", "mount", path="/run/x/shm")
    assert first.owner == "pod1" and first.kind == "dir" and first.data == {"path": "/run/x", "mode": 0o700}
    assert second.seq > first.seq
    assert await journal.effects_of("pod1") == [first, second]
    assert await journal.effects_of("other") == []


async def test_effects_recorded_together_are_kept_in_order_and_undone_newest_first(
        journal: EffectJournal, recorder: Recorder) -> None:
    effects = await journal.record_all("ctr1", [("dir", {"paths": ["/a", "/b"]}), ("mount", {"path": "/a/m"})])
    assert [e.kind for e in effects] == ["dir", "mount"] and effects[0].seq < effects[1].seq
    assert await journal.effects_of("ctr1") == effects
    await journal.undo("ctr1")
    assert recorder.undone == [("ctr1", "mount", {"path": "/a/m"}), ("ctr1", "dir", {"paths": ["/a", "/b"]})]


async def test_effects_recorded_together_are_all_refused_for_one_unknown_kind(journal: EffectJournal) -> None:
    with pytest.raises(ValueError, match="bogus"):
        await journal.record_all("ctr1", [("dir", {"path": "/a"}), ("bogus", {})])
    assert await journal.effects_of("ctr1") == []


async def test_a_write_along_with_the_effects_is_committed_with_them_or_not_at_all(
        db: Database, journal: EffectJournal) -> None:
    await db.run(lambda conn: conn.execute("CREATE TABLE owners (id TEXT PRIMARY KEY)"))

    def owner_row(conn) -> None:
        assert conn.in_transaction, "the write runs inside the effects' transaction"
        conn.execute("INSERT INTO owners (id) VALUES ('ctr1')")

    effects = await journal.record_all("ctr1", [("dir", {"path": "/a"})], along=owner_row)
    assert await journal.effects_of("ctr1") == effects
    assert await db.run(lambda conn: [row[0] for row in conn.execute("SELECT id FROM owners")]) == ["ctr1"]
    # The same owner again: its row's insert fails, and the effects recorded with it go too.
    with pytest.raises(Exception, match="UNIQUE"):
        await journal.record_all("ctr1", [("mount", {"path": "/a/m"})], along=owner_row)
    assert await journal.effects_of("ctr1") == effects


async def test_record_refuses_a_kind_without_undo(journal: EffectJournal) -> None:
    with pytest.raises(ValueError, match="'teleport'"):
        await journal.record("pod1", "teleport", where="mars")
    assert await journal.effects_of("pod1") == []


async def test_find_returns_the_newest_of_a_kind(journal: EffectJournal) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.record("pod1", "mount", path="/m")
    newest = await journal.record("pod1", "dir", path="/b")
    assert await journal.find("pod1", "dir") == newest
    assert await journal.find("pod1", "netns") is None
    assert await journal.find("pod2", "dir") is None


async def test_undo_runs_newest_first_and_forgets(journal: EffectJournal, recorder: Recorder) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.record("pod2", "dir", path="/other")
    await journal.record("pod1", "mount", path="/a/shm")
    await journal.record("pod1", "netns", path="/a/ns/net")
    await journal.undo("pod1")
    assert recorder.undone == [
        ("pod1", "netns", {"path": "/a/ns/net"}),
        ("pod1", "mount", {"path": "/a/shm"}),
        ("pod1", "dir", {"path": "/a"}),
    ]
    assert await journal.effects_of("pod1") == []
    assert len(await journal.effects_of("pod2")) == 1  # another owner's effects are untouched
    assert await journal.owners() == ["pod2"]


async def test_undo_only_the_given_kinds(journal: EffectJournal, recorder: Recorder) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.record("pod1", "netns", path="/n1")
    await journal.record("pod1", "mount", path="/m")
    await journal.record("pod1", "netns", path="/n2")
    await journal.undo("pod1", ["netns", "mount"])
    assert recorder.undone == [
        ("pod1", "netns", {"path": "/n2"}),
        ("pod1", "mount", {"path": "/m"}),
        ("pod1", "netns", {"path": "/n1"}),
    ]
    left = await journal.effects_of("pod1")
    assert [(e.kind, e.data) for e in left] == [("dir", {"path": "/a"})]


async def test_undo_with_an_empty_kind_list_does_nothing(journal: EffectJournal, recorder: Recorder) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.undo("pod1", [])
    assert recorder.undone == []
    assert len(await journal.effects_of("pod1")) == 1


async def test_failure_stops_and_keeps_the_rest_recorded(journal: EffectJournal, recorder: Recorder) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.record("pod1", "mount", path="/m")
    await journal.record("pod1", "netns", path="/n")
    recorder.failing = {"mount"}
    with pytest.raises(OSError, match="cannot undo mount"):
        await journal.undo("pod1")
    assert recorder.undone == [("pod1", "netns", {"path": "/n"})]  # dir was never attempted
    assert [e.kind for e in await journal.effects_of("pod1")] == ["dir", "mount"]
    # The next attempt (once the cause is gone) finishes the job.
    recorder.failing = set()
    await journal.undo("pod1")
    assert [kind for _, kind, _ in recorder.undone] == ["netns", "mount", "dir"]
    assert await journal.effects_of("pod1") == []


async def test_keep_going_runs_the_rest_and_keeps_the_failed_one(journal: EffectJournal, recorder: Recorder) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.record("pod1", "mount", path="/m")
    await journal.record("pod1", "netns", path="/n")
    recorder.failing = {"mount"}
    await journal.undo("pod1", keep_going=True)  # best effort: does not raise
    assert [kind for _, kind, _ in recorder.undone] == ["netns", "dir"]
    left = await journal.effects_of("pod1")
    assert [(e.kind, e.data) for e in left] == [("mount", {"path": "/m"})]


async def test_undo_of_an_owner_without_effects_is_a_no_op(journal: EffectJournal, recorder: Recorder) -> None:
    await journal.undo("nobody")
    assert recorder.undone == []


async def test_effects_survive_a_restart(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "cripy.db"
    db = await Database.open(path)
    journal = EffectJournal(db)
    journal.register("dir", recorder.undo_fn("dir"))
    await journal.record("ctr1", "dir", path="/a", nested={"list": [1, 2]})
    db.close()

    db = await Database.open(path)
    try:
        journal = EffectJournal(db)
        journal.register("dir", recorder.undo_fn("dir"))
        assert await journal.owners() == ["ctr1"]
        await journal.undo("ctr1")
        assert recorder.undone == [("ctr1", "dir", {"path": "/a", "nested": {"list": [1, 2]}})]
        assert await journal.owners() == []
    finally:
        db.close()


async def test_forget_owner_drops_every_effect(db: Database, journal: EffectJournal, recorder: Recorder) -> None:
    await journal.record("pod1", "dir", path="/a")
    await journal.record("pod1", "mount", path="/m")
    await journal.record("pod2", "dir", path="/b")
    await db.transaction(lambda conn: forget_owner(conn, "pod1"))
    assert await journal.effects_of("pod1") == []
    assert len(await journal.effects_of("pod2")) == 1
    assert recorder.undone == []
