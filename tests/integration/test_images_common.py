"""Shared helpers for the ImageService integration tests (test_images_*.py): registries.conf text, CRI error
assertions, on-disk checks of a daemon's image store. Holds no tests itself."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2

from tests.integration.daemon import REPO_ROOT, CripyDaemon
from tests.support.images import BuiltImage, Layer, LayerBuilder, build_image, busybox_layer

WAIT_LIMIT = 30.0


def unique(name: str) -> str:
    """A repository name no other test (or earlier run against the session registry) uses."""
    return f"{name}-{secrets.token_hex(4)}"


def insecure_conf(*hosts: str, extra: str = "") -> str:
    """registries.conf marking each host:port insecure (plain HTTP allowed)."""
    tables = "".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n\n' for host in hosts)
    return extra + "\n" + tables


def rpc_error(call: Callable[[], Any], code: grpc.StatusCode) -> str:
    """Runs a CRI call that must fail with `code`; returns the error details."""
    try:
        result = call()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code.name}, got {e.code().name}: {e.details()}"
        return e.details() or ""
    raise AssertionError(f"expected {code.name}, but the call answered {result!r}")


def assert_alive(daemon: CripyDaemon) -> None:
    version = daemon.runtime.Version(api_pb2.VersionRequest(), timeout=5)
    assert version.runtime_name


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids, computed here independently of cripy's own implementation."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
        else:
            chain.append(diff_id)
    return chain


def image_chain_ids(image: BuiltImage) -> list[str]:
    return chain_ids([layer.diff_id for layer in image.layers])


def layer_diff(daemon: CripyDaemon, chain_id: str) -> Path:
    return daemon.root / "layers" / chain_id.split(":", 1)[1] / "diff"


def layer_dir_names(daemon: CripyDaemon) -> set[str]:
    layers = daemon.root / "layers"
    return set(os.listdir(layers)) if layers.exists() else set()


def tmp_entries(daemon: CripyDaemon) -> list[str]:
    tmp = daemon.root / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


def listed_chain_ids(daemon: CripyDaemon) -> set[str]:
    """Every chain id of every listed image, as ImageStatus verbose reports it."""
    result: set[str] = set()
    for image in daemon.list_images():
        info = json.loads(daemon.image_status(image.id, verbose=True).info["info"])
        result.update(info["chainIDs"])
    return result


def assert_store_consistent(daemon: CripyDaemon) -> None:
    """No download leftovers, and exactly the layers of listed images on disk (no orphan, none missing)."""
    assert tmp_entries(daemon) == [], f"leftovers in {daemon.root / 'tmp'}: {tmp_entries(daemon)}"
    expected = {c.split(":", 1)[1] for c in listed_chain_ids(daemon)}
    assert layer_dir_names(daemon) == expected
    for hexdigest in expected:
        assert (daemon.root / "layers" / hexdigest / "diff").is_dir()


def assert_store_empty(daemon: CripyDaemon) -> None:
    assert daemon.list_images() == []
    assert tmp_entries(daemon) == []
    assert layer_dir_names(daemon) == set()


def marker_image(text: str, base: Layer | None = None, config: dict[str, Any] | None = None) -> BuiltImage:
    """busybox plus one small layer holding /marker: images that share the busybox base layer."""
    marker = LayerBuilder().add_file("marker", text + "\n").layer()
    return build_image([base or busybox_layer(), marker], config=config)


def wait_for(predicate: Callable[[], bool], what: str, limit: float = WAIT_LIMIT) -> None:
    """Waits for a state (not a timing): the limit only keeps a broken run from hanging."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def cripy_import(daemon: CripyDaemon, path: Path, name: str = "") -> subprocess.CompletedProcess[str]:
    """`cripy image import PATH [--name N] -r SOCKET`, as an operator runs it."""
    argv = [sys.executable, "-m", "cripy.cli", "image", "import", str(path), "-r", str(daemon.socket)]
    if name:
        argv += ["--name", name]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def image_status_or_none(daemon: CripyDaemon, name: str) -> api_pb2.Image | None:
    response = daemon.image_status(name)
    return response.image if response.HasField("image") else None


def with_dropin(daemon: CripyDaemon, toml: str, name: str = "50-test.toml") -> CripyDaemon:
    """Writes a cripy.d drop-in (the main file already has an [images] table) and restarts the daemon on it."""
    dropin_dir = daemon.workdir / "cripy.d"
    dropin_dir.mkdir(exist_ok=True)
    (dropin_dir / name).write_text(toml)
    return daemon.restart()


FAST_RETRIES = "[images]\npull_retry_backoff_seconds = 0.05\n"
