"""Sub-paths of image volumes, resolved inside the image as the container would see them (no mount needed: the
resolution works on any directory tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cripy.containers.imagevolumes import _bind_source
from cripy.errors import InvalidArgument


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image's merged view beside a directory that stands for the node's own /etc."""
    root = tmp_path / "image"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "file").write_text("x")
    (root / "abs").symlink_to("/data")
    (root / "up").symlink_to("../../../../data/sub")
    (root / "out").symlink_to(str(tmp_path / "node-etc"))
    (tmp_path / "node-etc").mkdir()
    (root / "loop").symlink_to("loop")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize(("sub_path", "expected"), [
    ("data", "data"),
    ("data/file", "data/file"),
    ("./data/sub/", "data/sub"),
    ("abs", "data"),  # an absolute link means the image's /data
    ("abs/sub", "data/sub"),
    ("up", "data/sub"),  # '..' stops at the image's root
])
def test_sub_paths_resolve_inside_the_image(image: Path, sub_path: str, expected: str) -> None:
    assert _bind_source(image, sub_path, "v") == image / expected


@pytest.mark.parametrize(("sub_path", "message"), [
    ("missing", "does not exist in the image"),
    ("data/file/below", "does not exist in the image"),
    ("out", "does not exist in the image"),  # the link names the node's directory: inside the image, nothing
    ("loop", "too many symbolic links"),
    ("fifo", "neither a directory nor a regular file"),
])
def test_sub_paths_that_are_not_in_the_image_are_refused(image: Path, sub_path: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^v: image_sub_path .*{message}"):
        _bind_source(image, sub_path, "v")
