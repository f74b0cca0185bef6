"""registries.conf as PullImage applies it: short names through unqualified-search-registries, [[registry]]
prefix/location rewrites, mirrors (down, in order), blocked registries, insecure (plain HTTP) registries, drop-ins,
and the trust policy refusing a pull. Fault proxies in front of one registry stand in for mirrors, so that the
test sees which endpoint served what."""

from __future__ import annotations

import grpc

from tests.integration.test_images_common import (
    assert_alive,
    assert_store_empty,
    insecure_conf,
    marker_image,
    FAST_RETRIES,
    rpc_error,
    unique,
    with_dropin,
)
from tests.support.aiothread import unused_port


def served_gets(proxy) -> list[str]:
    return [r.path for r in proxy.requests if r.method == "GET" and r.path.startswith("/v2/") and r.path != "/v2/"]


def test_short_name_resolved_through_unqualified_search_registries(cripy_factory, plain_registry) -> None:
    repo = unique("shortname")
    image = marker_image("short")
    plain_registry.push_image(repo, "v2", image)
    down = f"127.0.0.1:{unused_port()}"
    conf = insecure_conf(down, plain_registry.host,
                         extra=f'unqualified-search-registries = ["{down}", "{plain_registry.host}"]\n')
    daemon = with_dropin(cripy_factory(registries_conf=conf), FAST_RETRIES)  # the down registry is retried

    assert daemon.pull(f"{repo}:v2") == image.config_digest

    qualified = plain_registry.ref(repo, "v2")
    assert list(daemon.image_status(qualified).image.repo_tags) == [qualified]
    # The short name finds the image for ImageStatus too, as kubelet asks with the name from the pod spec.
    assert daemon.image_status(f"{repo}:v2").image.id == image.config_digest


def test_registry_prefix_rewritten_to_its_location(cripy_factory, plain_registry) -> None:
    repo = unique("realteam/app")
    image = marker_image("rewrite")
    plain_registry.push_image(repo, "1.0", image)
    team, _, name = repo.partition("/")
    conf = (f'[[registry]]\nprefix = "example.test/{team}"\nlocation = "{plain_registry.host}/{team}"\n'
            f'insecure = true\n')
    daemon = cripy_factory(registries_conf=conf)

    asked = f"example.test/{team}/{name}:1.0"
    assert daemon.pull(asked) == image.config_digest
    assert asked in daemon.image_status(asked).image.repo_tags


def test_mirror_that_is_down_is_tried_then_the_primary(cripy_factory, plain_registry, fault_proxy) -> None:
    primary = fault_proxy(plain_registry)
    repo = unique("mirror-down")
    image = marker_image("mirror down")
    plain_registry.push_image(repo, "v1", image)
    dead = f"127.0.0.1:{unused_port()}"
    conf = (f'[[registry]]\nlocation = "{primary.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{dead}"\ninsecure = true\n')
    daemon = with_dropin(cripy_factory(registries_conf=conf), FAST_RETRIES)  # the down mirror is retried

    assert daemon.pull(primary.ref(repo, "v1")) == image.config_digest
    assert any(path.endswith(f"/blobs/{image.layers[1].digest}") for path in served_gets(primary))
    log = daemon.log_text()
    assert dead in log and "(mirror)" in log, "the failed mirror attempt should be logged"


def test_mirrors_are_tried_in_order_before_the_primary(cripy_factory, plain_registry, fault_proxy) -> None:
    first, second, primary = fault_proxy(plain_registry), fault_proxy(plain_registry), fault_proxy(plain_registry)
    repo = unique("mirror-order")
    image = marker_image("mirror order")
    plain_registry.push_image(repo, "v1", image)
    conf = (f'[[registry]]\nlocation = "{primary.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{first.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{second.host}"\ninsecure = true\n')
    daemon = cripy_factory(registries_conf=conf)

    daemon.pull(primary.ref(repo, "v1"))
    assert served_gets(first), "the first mirror serves the pull"
    assert served_gets(second) == [] and served_gets(primary) == []

    # The first mirror lacks the image: the second one is next, and the primary is still not needed.
    daemon.remove_image(primary.ref(repo, "v1"))
    for proxy in (first, second, primary):
        proxy.clear_requests()
    first.fail_status(f"/v2/{repo}/manifests/", 404, times=None,
                      body=b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
    assert daemon.pull(primary.ref(repo, "v1")) == image.config_digest
    assert [r.status for r in first.requests if "/manifests/" in r.path] == [404]
    assert any("/blobs/" in path for path in served_gets(second))
    assert served_gets(primary) == []


def test_blocked_registry_is_permission_denied(cripy_factory, plain_registry) -> None:
    ref = plain_registry.push_image(unique("blocked"), "v1", marker_image("blocked"))
    conf = f'[[registry]]\nlocation = "{plain_registry.host}"\ninsecure = true\nblocked = true\n'
    daemon = cripy_factory(registries_conf=conf)
    details = rpc_error(lambda: daemon.pull(ref), grpc.StatusCode.PERMISSION_DENIED)
    assert plain_registry.host in details and "blocked" in details
    assert_store_empty(daemon)
    assert_alive(daemon)


def test_blocked_registry_from_a_drop_in(cripy_factory, plain_registry) -> None:
    ref = plain_registry.push_image(unique("blocked-dropin"), "v1", marker_image("blocked drop-in"))
    daemon = cripy_factory(registries_conf=insecure_conf(plain_registry.host))
    daemon.pull(ref)  # allowed by the main file
    (daemon.registries_dir / "50-block.conf").write_text(
        f'[[registry]]\nlocation = "{plain_registry.host}"\ninsecure = true\nblocked = true\n')
    daemon.remove_image(ref)
    details = rpc_error(lambda: daemon.pull(ref), grpc.StatusCode.PERMISSION_DENIED)
    assert "50-block.conf" in details


def test_plain_http_registry_needs_the_insecure_flag(cripy_factory, plain_registry) -> None:
    image = marker_image("insecure")
    ref = plain_registry.push_image(unique("insecure"), "v1", image)
    strict = cripy_factory(registries_conf=f'[[registry]]\nlocation = "{plain_registry.host}"\n')
    details = rpc_error(lambda: strict.pull(ref), grpc.StatusCode.UNAVAILABLE)
    assert plain_registry.host in details
    assert_store_empty(strict)
    assert_alive(strict)

    relaxed = cripy_factory(registries_conf=insecure_conf(plain_registry.host))
    assert relaxed.pull(ref) == image.config_digest


def test_trust_policy_rejecting_everything_is_permission_denied(cripy_factory, plain_registry) -> None:
    ref = plain_registry.push_image(unique("policy"), "v1", marker_image("policy"))
    daemon = cripy_factory(registries_conf=insecure_conf(plain_registry.host),
                           policy='{"default": [{"type": "reject"}]}')
    rpc_error(lambda: daemon.pull(ref), grpc.StatusCode.PERMISSION_DENIED)
    assert_store_empty(daemon)
