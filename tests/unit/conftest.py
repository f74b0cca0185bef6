"""Fixtures shared by the unit tests of the image store (test_store*.py, test_archive.py): a real layout and
database in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cripy.images.store import ImageStore
from cripy.storage.db import Database
from cripy.storage.layout import Layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "root", tmp_path / "run")
    layout.ensure()
    return layout


@pytest.fixture
async def db(layout: Layout) -> AsyncIterator[Database]:
    database = await Database.open(layout.database)
    yield database
    database.close()


@pytest.fixture
def store(db: Database, layout: Layout) -> ImageStore:
    return ImageStore(db, layout)
