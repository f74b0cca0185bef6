"""Registry authentication through PullImage: bearer tokens from a token server run by the test, Basic auth on an
htpasswd registry, credentials from the CRI AuthConfig or from auth.json, and refusals that carry the registry's
(or token server's) reason as Unauthenticated or PermissionDenied."""

from __future__ import annotations

import base64
import fnmatch
import json
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.test_images_common import (
    assert_alive,
    assert_store_empty,
    insecure_conf,
    marker_image,
    rpc_error,
    unique,
)
from tests.support.fixtures import READONLY_PASSWORD, READONLY_USER, TEST_PASSWORD, TEST_USER
from tests.support.images import busybox_image
from tests.support.tokenserver import Scope, TokenServer


def auth_json(host: str, user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": token}}})


# ---- bearer tokens --------------------------------------------------------------------------------------------


def test_token_auth_with_cri_credentials(cripy_factory, token_registry, token_server) -> None:
    image = marker_image("token cri")
    ref = token_registry.push_image(unique("private/token-cri"), "v1", image)
    daemon = cripy_factory(registries_conf=insecure_conf(token_registry.host))
    token_server.clear_requests()

    assert daemon.pull(ref, username=TEST_USER, password=TEST_PASSWORD) == image.config_digest

    asked = [r for r in token_server.requests if r.status == 200]
    assert any(r.account == TEST_USER for r in asked), "the token must have been issued to the CRI user"
    assert daemon.image_status(ref).image.id == image.config_digest


def test_token_auth_with_the_auth_encoded_cri_field(cripy_factory, token_registry) -> None:
    image = marker_image("token auth field")
    ref = token_registry.push_image(unique("private/token-b64"), "v1", image)
    daemon = cripy_factory(registries_conf=insecure_conf(token_registry.host))
    encoded = base64.b64encode(f"{TEST_USER}:{TEST_PASSWORD}".encode()).decode()
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref),
                                       auth=api_pb2.AuthConfig(auth=encoded, server_address=token_registry.host))
    assert daemon.images.PullImage(request, timeout=60).image_ref == image.config_digest


def test_token_auth_wrong_password_is_unauthenticated_with_the_reason(cripy_factory, token_registry) -> None:
    ref = token_registry.push_image(unique("private/token-wrong"), "v1", marker_image("token wrong"))
    daemon = cripy_factory(registries_conf=insecure_conf(token_registry.host))

    details = rpc_error(lambda: daemon.pull(ref, username=TEST_USER, password="not-the-password"),
                        grpc.StatusCode.UNAUTHENTICATED)

    assert f"invalid username or password for '{TEST_USER}'" in details  # the token server's own words
    assert TEST_USER in details
    assert "not-the-password" not in details
    assert_store_empty(daemon)
    assert_alive(daemon)


def test_token_auth_anonymous_pull_of_private_repo_is_unauthenticated(cripy_factory, token_registry) -> None:
    ref = token_registry.push_image(unique("private/token-anon"), "v1", marker_image("token anon"))
    daemon = cripy_factory(registries_conf=insecure_conf(token_registry.host))
    details = rpc_error(lambda: daemon.pull(ref), grpc.StatusCode.UNAUTHENTICATED)
    assert "anonymous" in details
    assert_alive(daemon)


def test_token_auth_anonymous_pull_of_public_repo(cripy_factory, token_registry) -> None:
    image = marker_image("token public")
    ref = token_registry.push_image(unique("public/token-anon"), "v1", image)
    daemon = cripy_factory(registries_conf=insecure_conf(token_registry.host))
    assert daemon.pull(ref) == image.config_digest


def test_token_auth_with_auth_json(cripy_factory, token_registry) -> None:
    image = marker_image("token auth.json")
    ref = token_registry.push_image(unique("private/token-file"), "v1", image)
    daemon = cripy_factory(registries_conf=insecure_conf(token_registry.host),
                           auth_json=auth_json(token_registry.host, READONLY_USER, READONLY_PASSWORD))
    assert daemon.pull(ref) == image.config_digest


class RestrictedTokenServer(TokenServer):
    """Like the shared token server, but READONLY_USER gets nothing on repositories under "restricted/"."""

    def grant(self, account: str | None, scope: Scope) -> dict[str, Any] | None:
        if account == READONLY_USER and fnmatch.fnmatchcase(scope.name, "restricted/*"):
            return None
        return super().grant(account, scope)


@pytest.fixture
def restricted_registry(registry_factory):
    server = RestrictedTokenServer({TEST_USER: TEST_PASSWORD, READONLY_USER: READONLY_PASSWORD},
                                   readonly_users={READONLY_USER})
    server.start()
    try:
        yield registry_factory(auth="token", token_server=server, credentials=(TEST_USER, TEST_PASSWORD))
    finally:
        server.stop()


def test_token_valid_user_without_access_to_the_repo_is_permission_denied(cripy_factory,
                                                                          restricted_registry) -> None:
    repo = unique("restricted/app")
    ref = restricted_registry.push_image(repo, "v1", marker_image("restricted"))
    daemon = cripy_factory(registries_conf=insecure_conf(restricted_registry.host))

    details = rpc_error(lambda: daemon.pull(ref, username=READONLY_USER, password=READONLY_PASSWORD),
                        grpc.StatusCode.PERMISSION_DENIED)

    assert restricted_registry.host in details
    assert repo in details
    assert_store_empty(daemon)
    # The same user still pulls where the token server grants access.
    allowed = restricted_registry.push_image(unique("open/app"), "v1", marker_image("open"))
    daemon.pull(allowed, username=READONLY_USER, password=READONLY_PASSWORD)


def test_registry_403_is_permission_denied_with_the_registry_reason(cripy_factory, plain_registry,
                                                                    fault_proxy) -> None:
    proxy = fault_proxy(plain_registry)
    repo = unique("denied")
    plain_registry.push_image(repo, "v1", marker_image("denied"))
    body = json.dumps({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied",
                                   "detail": "policy forbids pulls of " + repo}]}).encode()
    proxy.fail_status(f"/v2/{repo}/manifests/", 403, times=None, body=body,
                      headers={"Content-Type": "application/json"})
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))

    details = rpc_error(lambda: daemon.pull(proxy.ref(repo, "v1")), grpc.StatusCode.PERMISSION_DENIED)

    assert "requested access to the resource is denied" in details
    assert proxy.host in details
    assert_alive(daemon)


# ---- Basic auth -----------------------------------------------------------------------------------------------


def test_basic_auth_with_cri_credentials(cripy_factory, htpasswd_registry) -> None:
    image = busybox_image()
    ref = htpasswd_registry.push_image(unique("basic/cri"), "v1", image)
    daemon = cripy_factory(registries_conf=insecure_conf(htpasswd_registry.host))
    assert daemon.pull(ref, username=TEST_USER, password=TEST_PASSWORD) == image.config_digest


def test_basic_auth_wrong_password_is_unauthenticated_with_the_reason(cripy_factory, htpasswd_registry) -> None:
    ref = htpasswd_registry.push_image(unique("basic/wrong"), "v1", marker_image("basic wrong"))
    daemon = cripy_factory(registries_conf=insecure_conf(htpasswd_registry.host))

    details = rpc_error(lambda: daemon.pull(ref, username=TEST_USER, password="wrong-pw"),
                        grpc.StatusCode.UNAUTHENTICATED)

    assert htpasswd_registry.host in details
    assert TEST_USER in details
    assert "authentication required" in details  # distribution's UNAUTHORIZED message
    assert "wrong-pw" not in details
    assert_store_empty(daemon)


def test_basic_auth_without_credentials_is_unauthenticated(cripy_factory, htpasswd_registry) -> None:
    ref = htpasswd_registry.push_image(unique("basic/none"), "v1", marker_image("basic none"))
    daemon = cripy_factory(registries_conf=insecure_conf(htpasswd_registry.host))
    details = rpc_error(lambda: daemon.pull(ref), grpc.StatusCode.UNAUTHENTICATED)
    assert htpasswd_registry.host in details
    assert_alive(daemon)


def test_basic_auth_with_auth_json(cripy_factory, htpasswd_registry) -> None:
    image = marker_image("basic auth.json")
    ref = htpasswd_registry.push_image(unique("basic/file"), "v1", image)
    daemon = cripy_factory(registries_conf=insecure_conf(htpasswd_registry.host),
                           auth_json=auth_json(htpasswd_registry.host, TEST_USER, TEST_PASSWORD))
    assert daemon.pull(ref) == image.config_digest


def test_cri_credentials_win_over_auth_json(cripy_factory, htpasswd_registry) -> None:
    ref = htpasswd_registry.push_image(unique("basic/precedence"), "v1", marker_image("precedence"))
    daemon = cripy_factory(registries_conf=insecure_conf(htpasswd_registry.host),
                           auth_json=auth_json(htpasswd_registry.host, TEST_USER, TEST_PASSWORD))
    details = rpc_error(lambda: daemon.pull(ref, username=TEST_USER, password="wrong-pw"),
                        grpc.StatusCode.UNAUTHENTICATED)
    assert TEST_USER in details
