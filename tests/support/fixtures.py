"""pytest fixtures for registries, the token server and fault proxies. Import them into a conftest with
`from tests.support.fixtures import *`. Every fixture stops what it started in its finalizer, also on failure.

Credentials: TEST_USER/TEST_PASSWORD can push and pull on the htpasswd and token registries; READONLY_USER only
pulls (token registry). Anonymous users may pull repositories matching PUBLIC_REPOS on the token registry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.registry import Registry, registry_available
from tests.support.tokenserver import TokenServer

__all__ = [
    "TEST_USER", "TEST_PASSWORD", "READONLY_USER", "READONLY_PASSWORD", "PUBLIC_REPOS",
    "plain_registry", "htpasswd_registry", "token_server", "token_registry", "tls_registry",
    "registry_factory", "fault_proxy",
]

TEST_USER = "alice"
TEST_PASSWORD = "wonderland-s3cret"
READONLY_USER = "reader"
READONLY_PASSWORD = "read-only-pw"
PUBLIC_REPOS = ["public/*"]


def _require_registry() -> None:
    if not registry_available():
        pytest.skip("docker-registry is not installed")


def _started(registry: Registry) -> Registry:
    try:
        return registry.start()
    except BaseException:
        registry.stop()
        raise


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTP, no auth. Shared by the session: use repository names unique to your test."""
    _require_registry()
    registry = _started(Registry(tmp_path_factory.mktemp("plain-registry")))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTP with Basic auth: TEST_USER/TEST_PASSWORD."""
    _require_registry()
    registry = _started(Registry(tmp_path_factory.mktemp("htpasswd-registry"), auth="htpasswd",
                                 users={TEST_USER: TEST_PASSWORD}))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    server = TokenServer({TEST_USER: TEST_PASSWORD, READONLY_USER: READONLY_PASSWORD},
                         public_repos=PUBLIC_REPOS, readonly_users={READONLY_USER})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[Registry]:
    """HTTP with bearer-token auth through `token_server`; pushes use TEST_USER."""
    _require_registry()
    registry = _started(Registry(tmp_path_factory.mktemp("token-registry"), auth="token",
                                 token_server=token_server, credentials=(TEST_USER, TEST_PASSWORD)))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTPS (certificate for 127.0.0.1 signed by a throwaway CA: `ca_cert_path`, `ca_cert_dir`), no auth."""
    _require_registry()
    registry = _started(Registry(tmp_path_factory.mktemp("tls-registry"), tls=True))
    yield registry
    registry.stop()


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Registry]]:
    """Starts private registries (same keyword arguments as Registry) for tests that change registry state."""
    _require_registry()
    started: list[Registry] = []

    def make(**kwargs: Any) -> Registry:
        registry = Registry(tmp_path_factory.mktemp("registry"), **kwargs)
        started.append(registry)
        return registry.start()

    yield make
    for registry in started:
        registry.stop()
        shutil.rmtree(registry.workdir, ignore_errors=True)


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory: fault_proxy(upstream_registry_or_url) -> a started FaultProxy, stopped after the test."""
    started: list[FaultProxy] = []

    def make(upstream: Registry | str, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **kwargs)
        started.append(proxy)
        return proxy.start()

    yield make
    for proxy in started:
        proxy.stop()
