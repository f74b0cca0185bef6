"""Integration fixtures: real registries (tests/support) and real cripy daemons on temporary roots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import CripyDaemon
from tests.support.fixtures import *  # noqa: F401,F403  (registry, token server and fault proxy fixtures)

if os.geteuid() != 0:
    pytest.skip("integration tests need root", allow_module_level=True)


@pytest.fixture
def cripy_factory(tmp_path: Path) -> Iterator[Callable[..., CripyDaemon]]:
    """Factory of started daemons, each in its own directory; stopped (and its root removed) after the test."""
    started: list[CripyDaemon] = []

    def make(**kwargs: Any) -> CripyDaemon:
        daemon = CripyDaemon(tmp_path / f"cripy{len(started)}", **kwargs)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()
        shutil.rmtree(daemon.workdir, ignore_errors=True)


# ---- pods and containers: the leak check, the test images, daemons with a bridge network ---------------------

from tests.integration.conftest_leaks import no_leaks, session_cgroup_parent  # noqa: E402,F401
from tests.integration.podlib import PodEnv, short_tempdir, write_test_images  # noqa: E402


@pytest.fixture(scope="session")
def pod_image_dir() -> Iterator[Path]:
    """OCI layouts of the pod tests' images (podlib.test_images), written once per session."""
    directory = write_test_images(short_tempdir("img"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pod_env(pod_image_dir: Path) -> Iterator[PodEnv]:
    """One daemon with its own bridge network and the test images, shared by a module's tests (use unique pod
    names). At teardown every pod is stopped and removed through CRI, then the daemon and the bridge go."""
    workdir = short_tempdir("m")
    workdir.chmod(0o711)  # as /var/lib and /run are: a pod's root in a user namespace walks through to its rootfs
    env = PodEnv(workdir, pod_image_dir, cgroup_parent=session_cgroup_parent())
    yield env
    env.close()


@pytest.fixture
def pod_env_factory(pod_image_dir: Path) -> Iterator[Callable[..., PodEnv]]:
    """Daemons of a test's own (for tests that restart or kill them); torn down like `pod_env`."""
    made: list[PodEnv] = []

    def make(**kwargs: Any) -> PodEnv:
        env = PodEnv(short_tempdir("f"), pod_image_dir, cgroup_parent=session_cgroup_parent(), **kwargs)
        made.append(env)
        return env

    yield make
    errors = []
    for env in made:
        try:
            env.close()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)
