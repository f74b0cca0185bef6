"""Self-tests of tests/support: the built images are valid (checked with skopeo against a real docker-registry),
auth works as configured (htpasswd, token server), TLS works, and the fault proxy injects exactly the faults asked."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from aiohttp import web

from tests.support import images as im
from tests.support.aiothread import BackgroundHTTPServer, unused_port
from tests.support.faultproxy import FaultProxy
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import (PUBLIC_REPOS, READONLY_PASSWORD, READONLY_USER, TEST_PASSWORD,
                                    TEST_USER)
from tests.support.registry import Registry, RegistryError, http_request
from tests.support.tokenserver import TokenServer, decode_jwt_unverified

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry not installed"),
]

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


def tar_members(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: m for m in tar.getmembers()}


def tar_file(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


# ---------------------------------------------------------------------------------------------------------------
# Image builder (no registry needed)


def test_layer_builder_is_deterministic_pax_with_xattrs_and_links() -> None:
    def make() -> bytes:
        return (im.LayerBuilder().add_dir("etc").add_file("etc/f", "x", mode=0o600, uid=7, gid=8,
                                                          xattrs={"user.k": "v"})
                .add_symlink("etc/s", "f").add_hardlink("etc/h", "etc/f").add_whiteout("etc/gone")
                .add_opaque("etc").build())

    data = make()
    assert data == make()
    members = tar_members(data)
    assert list(members) == ["etc", "etc/f", "etc/s", "etc/h", "etc/.wh.gone", "etc/.wh..wh..opq"]
    f = members["etc/f"]
    assert (f.mode, f.uid, f.gid, f.mtime) == (0o600, 7, 8, im.FIXED_MTIME)
    assert f.pax_headers["SCHILY.xattr.user.k"] == "v"
    assert members["etc/s"].issym() and members["etc/s"].linkname == "f"
    assert members["etc/h"].islnk() and members["etc/h"].linkname == "etc/f"


def test_busybox_rootfs_has_users_tmp_and_applets() -> None:
    data = im.busybox_rootfs_layer().build()
    members = tar_members(data)
    assert tar_file(data, "bin/busybox") == Path("/bin/busybox").read_bytes()
    assert members["bin/busybox"].mode == 0o755
    for applet in ("sh", "ls", "cat", "sleep", "id", "httpd", "nc", "wget", "stty"):
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777
    assert (members["home/app"].uid, members["home/app"].gid) == (1000, 1000)
    passwd = tar_file(data, "etc/passwd").decode()
    group = tar_file(data, "etc/group").decode()
    assert "app:x:1000:1000:" in passwd and "nobody:x:65534:65534:" in passwd
    assert "extra:x:2000:app" in group and "app:x:1000:" in group


@pytest.mark.parametrize("fmt,compression", [("oci", "gzip"), ("oci", "zstd"), ("oci", "none"),
                                             ("docker", "gzip")])
def test_image_digests_and_media_types_are_consistent(fmt: im.ImageFormat, compression: im.Compression) -> None:
    image = im.busybox_image(fmt=fmt, compression=compression, config={"User": "app", "Labels": {"a": "b"}})
    manifest, config = image.manifest, image.config
    assert image.manifest_digest == im.sha256_digest(image.manifest_bytes)
    assert manifest["mediaType"] == image.manifest_media_type
    assert manifest["config"]["digest"] == image.config_digest == im.sha256_digest(image.config_bytes)
    layer = image.layers[0]
    assert manifest["layers"][0] == {"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.blob)}
    assert config["rootfs"] == {"type": "layers", "diff_ids": [im.sha256_digest(layer.tar_bytes)]}
    assert config["config"]["User"] == "app" and config["config"]["Labels"] == {"a": "b"}
    assert len(config["history"]) == 1 and config["architecture"] == im.host_arch()
    decompress = {"gzip": gzip.decompress, "zstd": lambda b: zstandard.ZstdDecompressor().decompress(b),
                  "none": lambda b: b}[compression]
    assert decompress(layer.blob) == layer.tar_bytes
    if fmt == "docker":
        assert layer.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    else:
        assert layer.media_type.startswith("application/vnd.oci.image.layer.v1.tar")
    assert set(image.blobs) == {image.config_digest, layer.digest}


def test_docker_format_rejects_zstd() -> None:
    with pytest.raises(ValueError, match="zstd"):
        im.busybox_image(fmt="docker", compression="zstd")


def test_whiteout_scenario_layers() -> None:
    image = im.multilayer_whiteout_image()
    assert len(image.layers) == 3
    second, third = (tar_members(layer.tar_bytes) for layer in image.layers[1:])
    assert {"data/a", "data/b", "data/dir/x", "opq/old1"} <= set(second)
    assert {"data/.wh.a", "opq/.wh..wh..opq", "opq/new"} <= set(third)


def test_multiarch_index_marks_each_arch() -> None:
    index = im.multiarch_index()
    arches = [plat["architecture"] for plat, _ in index.images]
    assert arches == [im.host_arch(), im.other_arch()]
    for (plat, image), entry in zip(index.images, index.index["manifests"]):
        assert entry["digest"] == image.manifest_digest and entry["platform"] == plat
        assert image.config["architecture"] == plat["architecture"]
        assert tar_file(image.layers[-1].tar_bytes, "arch") == (plat["architecture"] + "\n").encode()
    docker_list = im.multiarch_index(fmt="docker")
    assert docker_list.media_type == im.DOCKER_MANIFEST_LIST


def test_corrupt_diffid_image_mismatches_only_the_config() -> None:
    image = im.corrupt_diffid_image()
    diff_ids = image.config["rootfs"]["diff_ids"]
    assert diff_ids[0] == image.layers[0].diff_id
    assert diff_ids[1] != image.layers[1].diff_id
    assert [d["digest"] for d in image.manifest["layers"]] == [layer.digest for layer in image.layers]


@pytest.mark.parametrize("kind", ["dotdot", "symlink", "hardlink"])
def test_escape_scenarios(kind: str, tmp_path: Path) -> None:
    scenario = im.escape_image(kind, tmp_dir=tmp_path)  # type: ignore[arg-type]
    try:
        assert not scenario.escaped()
        with tarfile.open(fileobj=io.BytesIO(scenario.image.layers[-1].tar_bytes)) as tar:
            names = tar.getnames()
        if kind == "dotdot":
            assert names[0].startswith("../") and names[0].endswith(scenario.forbidden_path.name)
        elif kind == "symlink":
            assert names == ["link", f"link/{scenario.forbidden_path.name}"]
        else:
            assert scenario.canary_path is not None and scenario.canary_path.exists()
            assert names == ["h", "h"]
        # Prove escaped() detects what a naive unpacker would do.
        if kind == "hardlink":
            assert scenario.canary_path is not None
            os.link(scenario.canary_path, tmp_path / "naive-link")
        else:
            scenario.forbidden_path.write_text("escaped")
        assert scenario.escaped()
    finally:
        scenario.cleanup()
        for leftover in tmp_path.glob("naive-link"):
            leftover.unlink()
    assert not scenario.forbidden_path.exists()
    assert scenario.canary_path is None or not scenario.canary_path.exists()


# ---------------------------------------------------------------------------------------------------------------
# Plain registry + skopeo


def _scenarios() -> dict[str, Callable[[], im.BuiltImage]]:
    return {
        "busybox-oci": im.busybox_image,
        "busybox-docker": im.docker_schema2_image,
        "busybox-zstd": im.zstd_image,
        "busybox-uncompressed": lambda: im.busybox_image(compression="none"),
        "whiteouts": im.multilayer_whiteout_image,
        "user-app": im.user_image,
        "user-numeric": lambda: im.user_image("1000:2000"),
        "corrupt-diffid": im.corrupt_diffid_image,
    }


@needs_skopeo
@pytest.mark.parametrize("name", list(_scenarios()))
def test_scenario_image_is_served_and_valid_for_skopeo(plain_registry: Registry, name: str) -> None:
    image = _scenarios()[name]()
    ref = plain_registry.push_image(f"scenario/{name}", "v1", image)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.encode() == image.manifest_bytes
    cfg = skopeo("inspect", "--config", "--tls-verify=false", f"docker://{ref}")
    assert cfg.returncode == 0, cfg.stderr
    assert json.loads(cfg.stdout) == image.config
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == [layer.digest for layer in image.layers]


def test_push_by_digest_and_delete(plain_registry: Registry) -> None:
    image = im.busybox_image(config={"Labels": {"test": "by-digest"}})
    ref = plain_registry.push_image("scenario/by-digest", None, image)
    assert ref.endswith("@" + image.manifest_digest)
    got = plain_registry.get_manifest("scenario/by-digest", image.manifest_digest)
    assert got.status == 200 and got.body == image.manifest_bytes
    assert got.headers["Content-Type"] == im.OCI_MANIFEST
    plain_registry.delete_manifest("scenario/by-digest", image.manifest_digest)
    assert plain_registry.get_manifest("scenario/by-digest", image.manifest_digest).status == 404


@needs_skopeo
def test_zstd_layer_decompresses_to_its_diff_id(plain_registry: Registry, tmp_path: Path) -> None:
    image = im.zstd_image()
    ref = plain_registry.push_image("scenario/zstd-copy", "v1", image)
    out = tmp_path / "dir"
    result = skopeo("copy", "--src-tls-verify=false", "--dest-decompress", f"docker://{ref}", f"dir:{out}")
    assert result.returncode == 0, result.stderr
    digest = "sha256:" + hashlib.sha256((out / image.layers[0].diff_id.split(":")[1]).read_bytes()).hexdigest()
    assert digest == image.config["rootfs"]["diff_ids"][0]


@needs_skopeo
@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_multiarch_index_copies_and_resolves_per_arch(plain_registry: Registry, tmp_path: Path,
                                                      fmt: im.ImageFormat) -> None:
    index = im.multiarch_index(fmt=fmt)
    ref = plain_registry.push_index(f"scenario/multiarch-{fmt}", "v1", index)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert raw.stdout.encode() == index.index_bytes
    for plat, image in index.images:
        # skopeo reports the list's digest for a list; the selected instance shows in its config and layers.
        info = skopeo("inspect", "--tls-verify=false", "--override-arch", plat["architecture"], f"docker://{ref}")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["Layers"] == [layer.digest for layer in image.layers]
        cfg = skopeo("inspect", "--config", "--tls-verify=false", "--override-arch", plat["architecture"],
                     f"docker://{ref}")
        assert json.loads(cfg.stdout) == image.config
    result = skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'oci'}:v1")
    assert result.returncode == 0, result.stderr
    if fmt == "oci":
        layout_index = json.loads((tmp_path / "oci" / "index.json").read_text())
        assert layout_index["manifests"][0]["digest"] == index.digest


@needs_skopeo
def test_oci_layout_writer_is_readable_by_skopeo(tmp_path: Path) -> None:
    image = im.multilayer_whiteout_image()
    im.write_oci_layout(tmp_path / "layout", image, tag="t")
    info = skopeo("inspect", f"oci:{tmp_path / 'layout'}:t")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["Digest"] == image.manifest_digest


# ---------------------------------------------------------------------------------------------------------------
# Registry lifecycle


def test_registry_stop_ends_its_process(registry_factory: Callable[..., Registry]) -> None:
    registry = registry_factory()
    pid = registry.pid
    assert pid is not None and http_request(registry.url + "/v2/").status == 200
    registry.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        http_request(registry.url + "/v2/", timeout=2)


def test_registry_start_failure_reports_log_tail(tmp_path: Path) -> None:
    class BrokenRegistry(Registry):
        def build_config(self) -> dict[str, object]:
            config = super().build_config()
            config["storage"] = {"no-such-driver": {}}
            return config

    registry = BrokenRegistry(tmp_path / "broken")
    with pytest.raises(RegistryError, match="no-such-driver"):
        registry.start()
    assert registry.pid is None


# ---------------------------------------------------------------------------------------------------------------
# Authentication


@needs_skopeo
def test_htpasswd_registry_rejects_anonymous_and_accepts_user(htpasswd_registry: Registry) -> None:
    anonymous = http_request(htpasswd_registry.url + "/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    ref = htpasswd_registry.push_image("auth/basic", "v1", im.busybox_image())
    assert skopeo("inspect", "--tls-verify=false", "--no-creds", f"docker://{ref}").returncode != 0
    assert skopeo("inspect", "--tls-verify=false", "--creds", f"{TEST_USER}:wrong", f"docker://{ref}"
                  ).returncode != 0
    ok = skopeo("inspect", "--tls-verify=false", "--creds", f"{TEST_USER}:{TEST_PASSWORD}", f"docker://{ref}")
    assert ok.returncode == 0, ok.stderr


@needs_skopeo
def test_token_registry_push_and_pull_with_token(token_registry: Registry, token_server: TokenServer) -> None:
    image = im.busybox_image()
    ref = token_registry.push_image("auth/token", "v1", image)
    token_server.clear_requests()
    ok = skopeo("inspect", "--tls-verify=false", "--creds", f"{TEST_USER}:{TEST_PASSWORD}", f"docker://{ref}")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Digest"] == image.manifest_digest
    seen = [r for r in token_server.requests if r.status == 200]
    assert seen and seen[0].account == TEST_USER and "repository:auth/token:pull" in seen[0].scopes
    bad = skopeo("inspect", "--tls-verify=false", "--creds", f"{TEST_USER}:wrong", f"docker://{ref}")
    assert bad.returncode != 0
    assert token_server.requests[-1].status == 401


@needs_skopeo
def test_token_registry_anonymous_only_pulls_public_repos(token_registry: Registry) -> None:
    assert PUBLIC_REPOS == ["public/*"]
    image = im.busybox_image()
    public_ref = token_registry.push_image("public/busybox", "v1", image)
    private_ref = token_registry.push_image("private/busybox", "v1", image)
    assert skopeo("inspect", "--tls-verify=false", "--no-creds", f"docker://{public_ref}").returncode == 0
    assert skopeo("inspect", "--tls-verify=false", "--no-creds", f"docker://{private_ref}").returncode != 0


def test_token_registry_readonly_user_cannot_push(token_registry: Registry, token_server: TokenServer) -> None:
    reader = Registry(token_registry.workdir, auth="token", token_server=token_server,
                      credentials=(READONLY_USER, READONLY_PASSWORD))
    reader.port = token_registry.port  # a client view of the running registry; never started or stopped
    token_registry.push_image("auth/readonly", "v1", im.busybox_image())
    assert reader.get_manifest("auth/readonly", "v1").status == 200
    with pytest.raises(RegistryError, match="HTTP 401"):
        reader.push_image("auth/readonly", "v2", im.user_image())


def test_token_server_issues_verifiable_claims_and_oauth2_grants(token_server: TokenServer) -> None:
    query = urllib.parse.urlencode([("service", token_server.service),
                                    ("scope", "repository:lib/x:pull,push"), ("offline_token", "true"),
                                    ("client_id", "cripy-tests")])
    basic = "Basic " + base64.b64encode(f"{TEST_USER}:{TEST_PASSWORD}".encode()).decode()
    got = http_request(f"{token_server.realm}?{query}", headers={"Authorization": basic})
    assert got.status == 200
    body = json.loads(got.body)
    header, claims = decode_jwt_unverified(body["token"])
    assert header["alg"] == "RS256" and header["x5c"]
    assert claims["iss"] == token_server.issuer and claims["aud"] == token_server.service
    assert claims["sub"] == TEST_USER and claims["exp"] > claims["iat"]
    assert claims["access"] == [{"type": "repository", "name": "lib/x", "actions": ["pull", "push"]}]
    refresh = body["refresh_token"]

    form = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh,
                                   "service": token_server.service, "scope": "repository:lib/x:pull",
                                   "client_id": "cripy-tests"}).encode()
    refreshed = http_request(token_server.realm, "POST", {"Content-Type": "application/x-www-form-urlencoded"}, form)
    assert refreshed.status == 200
    assert decode_jwt_unverified(json.loads(refreshed.body)["access_token"])[1]["sub"] == TEST_USER

    form = urllib.parse.urlencode({"grant_type": "password", "username": TEST_USER, "password": "nope",
                                   "service": token_server.service, "client_id": "cripy-tests"}).encode()
    denied = http_request(token_server.realm, "POST", {"Content-Type": "application/x-www-form-urlencoded"}, form)
    assert denied.status == 401 and json.loads(denied.body)["errors"][0]["code"] == "invalid_grant"

    anonymous = http_request(f"{token_server.realm}?service={token_server.service}&scope=repository:lib/x:pull")
    assert decode_jwt_unverified(json.loads(anonymous.body)["token"])[1]["access"] == []


@needs_skopeo
def test_tls_registry_needs_its_ca(tls_registry: Registry) -> None:
    ref = tls_registry.push_image("tls/busybox", "v1", im.busybox_image())
    assert tls_registry.url.startswith("https://") and tls_registry.ca_cert_path is not None
    untrusted = skopeo("inspect", f"docker://{ref}")
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr
    trusted = skopeo("inspect", "--cert-dir", str(tls_registry.ca_cert_dir), f"docker://{ref}")
    assert trusted.returncode == 0, trusted.stderr


# ---------------------------------------------------------------------------------------------------------------
# Fault proxy


@pytest.fixture(scope="module")
def blob_image(plain_registry: Registry) -> im.BuiltImage:
    image = im.busybox_image(config={"Labels": {"purpose": "fault-proxy"}})
    plain_registry.push_image("faults/busybox", "v1", image)
    return image


def _blob_path(image: im.BuiltImage) -> str:
    return f"/v2/faults/busybox/blobs/{image.layers[0].digest}"


def test_proxy_passes_requests_and_ranges(plain_registry: Registry, blob_image: im.BuiltImage,
                                          fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    blob = blob_image.layers[0].blob
    full = http_request(proxy.url + _blob_path(blob_image))
    assert full.status == 200 and full.body == blob
    part = http_request(proxy.url + _blob_path(blob_image), headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.body == blob[100:200]
    head = http_request(proxy.url + _blob_path(blob_image), "HEAD")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(blob) and head.body == b""
    assert [r.range for r in proxy.requests] == [None, "bytes=100-199", None]


def test_proxy_truncates_once(plain_registry: Registry, blob_image: im.BuiltImage,
                              fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    fault = proxy.truncate(r"/blobs/sha256:")
    blob = blob_image.layers[0].blob
    conn = http.client.HTTPConnection(proxy.host, timeout=30)
    conn.request("GET", _blob_path(blob_image))
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length") or 0) == len(blob)
    with pytest.raises(http.client.IncompleteRead) as err:
        resp.read()
    assert err.value.partial == blob[: len(blob) // 2]
    conn.close()
    assert fault.hits == 1 and fault.exhausted
    assert http_request(proxy.url + _blob_path(blob_image)).body == blob


def test_proxy_truncate_always_and_ignores_head(plain_registry: Registry, blob_image: im.BuiltImage,
                                                fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    fault = proxy.truncate(r"/blobs/", times=None)
    assert http_request(proxy.url + _blob_path(blob_image), "HEAD").status == 200
    assert fault.hits == 0
    for _ in range(2):
        with pytest.raises(http.client.IncompleteRead):
            http_request(proxy.url + _blob_path(blob_image))
    assert fault.hits == 2


def test_proxy_corrupts_one_byte(plain_registry: Registry, blob_image: im.BuiltImage,
                                 fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    proxy.corrupt(r"/blobs/")
    blob = blob_image.layers[0].blob
    got = http_request(proxy.url + _blob_path(blob_image)).body
    assert len(got) == len(blob)
    assert [i for i in range(len(blob)) if got[i] != blob[i]] == [len(blob) // 2]


def test_proxy_status_n_times_then_passes(plain_registry: Registry, blob_image: im.BuiltImage,
                                          fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    proxy.fail_status(r"/manifests/v1$", 503, times=2, headers={"Retry-After": "0"})
    path = "/v2/faults/busybox/manifests/v1"
    results = [http_request(proxy.url + path, headers={"Accept": im.OCI_MANIFEST}) for _ in range(3)]
    assert [r.status for r in results] == [503, 503, 200]
    assert results[0].headers["Retry-After"] == "0"
    assert results[2].body == blob_image.manifest_bytes
    assert [r.fault for r in proxy.requests] == ["status", "status", None]


def test_proxy_trickles_at_the_given_rate(plain_registry: Registry, blob_image: im.BuiltImage,
                                          fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    proxy.trickle(r"/blobs/", rate=4000)
    start = time.monotonic()
    got = http_request(proxy.url + _blob_path(blob_image), headers={"Range": "bytes=0-5999"})
    elapsed = time.monotonic() - start
    assert got.status == 206 and got.body == blob_image.layers[0].blob[:6000]
    # A lower bound only: the proxy sleeps 1.5 s in total for 6000 bytes at 4000 B/s.
    assert elapsed >= 1.4


def test_proxy_reset_and_delay(plain_registry: Registry, fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    proxy.reset(r"^/v2/$")
    with pytest.raises(http.client.RemoteDisconnected):
        http_request(proxy.url + "/v2/")
    proxy.delay(r"^/v2/$", 0.5)
    start = time.monotonic()
    assert http_request(proxy.url + "/v2/").status == 200
    assert time.monotonic() - start >= 0.5


def test_proxy_forwards_redirects_unchanged(fault_proxy: Callable[..., FaultProxy]) -> None:
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "http://127.0.0.1:9/elsewhere?x=1"})

    def app() -> web.Application:
        application = web.Application()
        application.router.add_get("/v2/r/blobs/{digest}", redirect)
        return application

    with BackgroundHTTPServer(app, name="redirecting-upstream") as upstream:
        proxy = fault_proxy(f"http://127.0.0.1:{upstream.port}")
        got = http_request(proxy.url + "/v2/r/blobs/sha256:00", follow_redirects=False)
    assert got.status == 307
    assert got.headers["Location"] == "http://127.0.0.1:9/elsewhere?x=1"


@needs_skopeo
def test_push_through_proxy_keeps_upload_urls_on_the_proxy(plain_registry: Registry, tmp_path: Path,
                                                           fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(plain_registry)
    image = im.user_image("1000:2000")
    im.write_oci_layout(tmp_path / "layout", image, tag="v1")
    result = skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1",
                    f"docker://{proxy.ref('faults/pushed', 'v1')}")
    assert result.returncode == 0, result.stderr
    assert any(r.method == "PUT" and "/blobs/uploads/" in r.path for r in proxy.requests)
    assert plain_registry.get_manifest("faults/pushed", "v1").body == image.manifest_bytes


def test_unused_port_refuses_connections() -> None:
    port = unused_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
