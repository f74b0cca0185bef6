"""RegistryClient against a real docker-registry on 127.0.0.1, a fault-injecting proxy in front of it, and a small
fake token-auth registry (token flow, redirects to another origin, retries)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from aiohttp import web

from cripy.errors import (
    AlreadyExists,
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from cripy.images import http
from cripy.images import manifest as m
from cripy.images.auth import Credentials
from cripy.images.manifest import Descriptor
from cripy.images.registry import RegistryClient
from tests.support.aiothread import unused_port
from tests.support.faultproxy import FaultProxy
from tests.support.registry import Registry, make_tls_files, registry_available

pytestmark = pytest.mark.integration

REPO = "test/app"
BLOBS = "/blobs/sha256:"  # the fault proxy's path regex for blob downloads


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- the real registry -----------------------------------------------------------------------------------------


def push_blob(reg: Registry, data: bytes) -> str:
    digest = sha256(data)
    reg.push_blob(REPO, digest, data)
    return digest


@dataclass
class PushedImage:
    layer: bytes
    layer_digest: str
    config: bytes
    manifest: bytes
    manifest_digest: str

    @property
    def layer_desc(self) -> Descriptor:
        return Descriptor(m.OCI_LAYER_TAR_GZIP, self.layer_digest, len(self.layer))


def push_image(reg: Registry, tag: str = "v1") -> PushedImage:
    layer = os.urandom(700_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(b"x")]}}).encode()
    layer_digest = push_blob(reg, layer)
    config_digest = push_blob(reg, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": m.OCI_MANIFEST,
            "config": {"mediaType": m.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": m.OCI_LAYER_TAR_GZIP, "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    reg.push_manifest(REPO, tag, m.OCI_MANIFEST, manifest)
    return PushedImage(layer, layer_digest, config, manifest, sha256(manifest))


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[tuple[Registry, PushedImage]]:
    if not registry_available():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg, push_image(reg)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory) -> Iterator[tuple[Registry, PushedImage]]:
    if not registry_available():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    with Registry(tmp_path_factory.mktemp("basic-registry"), auth="htpasswd", users={"alice": "right"}) as reg:
        yield reg, push_image(reg)


@pytest.fixture
async def session() -> AsyncIterator[http.Client]:
    s = http.Client(read_timeout=20)
    yield s
    await s.close()


def client(endpoint: str, session: http.Client, **kwargs) -> RegistryClient:
    kwargs.setdefault("certs_dir", None)
    kwargs.setdefault("insecure", True)  # the test registries speak plain HTTP
    kwargs.setdefault("backoff", 0.01)
    return RegistryClient(endpoint, session=session, **kwargs)


# --- a fault-injecting proxy in front of the registry ----------------------------------------------------------


@pytest.fixture
def proxy(registry, fault_proxy) -> FaultProxy:
    return fault_proxy(registry[0])


# --- tests against the real registry ---------------------------------------------------------------------------


async def test_get_manifest_by_tag_and_digest(registry, session):
    reg, img = registry
    c = client(reg.host, session)
    media_type, body, digest = await c.get_manifest(REPO, "v1")
    assert (media_type, body, digest) == (m.OCI_MANIFEST, img.manifest, img.manifest_digest)
    parsed = m.parse_manifest(media_type, body)
    assert parsed.layers[0].digest == img.layer_digest
    assert await c.get_manifest(REPO, img.manifest_digest) == (m.OCI_MANIFEST, img.manifest, img.manifest_digest)


async def test_unknown_tag_and_repo_are_not_found(registry, session):
    reg, _ = registry
    c = client(reg.host, session)
    with pytest.raises(NotFound, match=r"manifest test/app:nope not found on registry 127\.0\.0\.1:\d+: MANIFEST_UNKNOWN"):
        await c.get_manifest(REPO, "nope")
    with pytest.raises(NotFound, match="manifest no/such:v1 not found"):
        await c.get_manifest("no/such", "v1")
    with pytest.raises(InvalidArgument):
        await c.get_manifest("Bad/Name", "v1")


async def test_fetch_blob_with_progress(registry, session, tmp_path):
    reg, img = registry
    dest = tmp_path / "layer"
    seen: list[tuple[int, int]] = []
    await client(reg.host, session).fetch_blob(REPO, img.layer_desc, dest, lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == img.layer
    assert seen[-1] == (len(img.layer), len(img.layer))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert list(tmp_path.iterdir()) == [dest]


async def test_fetch_blob_size_mismatch_leaves_nothing(registry, session, tmp_path):
    reg, img = registry
    small = os.urandom(5)
    push_blob(reg, small)
    # the descriptor claims more bytes than the registry has for that digest
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(small), 6)
    with pytest.raises(DataLoss, match=rf"blob {sha256(small)} from {reg.host}/test/app: the server announces 5 bytes"):
        await client(reg.host, session).fetch_blob(REPO, desc, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def serve_other_blob(proxy: FaultProxy, blob: bytes, other: bytes) -> str:
    """Makes the proxy answer every download of `blob` with the bytes of `other`; returns other's digest."""
    other_digest = sha256(other)
    proxy.add_fault("status", f"/blobs/{sha256(blob)}$", times=None, status=200, body=other,
                    headers={"Content-Type": "application/octet-stream", "Docker-Content-Digest": other_digest})
    return other_digest


async def test_digest_mismatch_after_full_download(proxy, session, tmp_path):
    # A proxy that serves a different blob under the requested digest is the only way a real registry lies.
    blob = os.urandom(1000)
    other = os.urandom(1000)
    other_digest = serve_other_blob(proxy, blob, other)
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(blob), len(blob))

    with pytest.raises(DataLoss, match=f"digest mismatch, got {other_digest}"):
        await client(proxy.host, session).fetch_blob(REPO, desc, tmp_path / "blob")
    assert list(tmp_path.iterdir()) == []


async def test_truncated_download_resumes_with_range(registry, proxy, session, tmp_path):
    _, img = registry
    proxy.truncate(BLOBS)
    dest = tmp_path / "layer"
    await client(proxy.host, session).fetch_blob(REPO, img.layer_desc, dest)
    assert dest.read_bytes() == img.layer
    ranges = [r.range for r in proxy.requests if r.path.endswith(img.layer_digest)]
    assert ranges[0] is None
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1].startswith("bytes=")
    resumed_from = int(ranges[1][len("bytes=") : -1])
    assert 0 < resumed_from <= len(img.layer) // 2


async def test_stalled_download_hits_throughput_floor(registry, proxy, session, tmp_path):
    _, img = registry
    proxy.trickle(BLOBS, rate=80)  # bytes per second
    c = client(proxy.host, session, min_throughput=100_000, throughput_window=1.0)
    with pytest.raises(DeadlineExceeded) as exc:
        await c.fetch_blob(REPO, img.layer_desc, tmp_path / "layer")
    assert f"pull of layer {img.layer_digest} from {proxy.host}/{REPO} stalled" in str(exc.value)
    assert "under the floor of 100000 B/s" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


async def test_cancelled_download_removes_partial(registry, proxy, session, tmp_path):
    _, img = registry
    proxy.trickle(BLOBS, rate=80)  # bytes per second
    started = asyncio.Event()
    task = asyncio.create_task(
        client(proxy.host, session).fetch_blob(REPO, img.layer_desc, tmp_path / "layer", lambda d, t: started.set())
    )
    await started.wait()
    assert (tmp_path / "layer.partial").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == []


async def test_existing_partial_is_refused(registry, session, tmp_path):
    reg, img = registry
    (tmp_path / "layer.partial").write_bytes(b"")
    with pytest.raises(AlreadyExists, match="layer.partial"):
        await client(reg.host, session).fetch_blob(REPO, img.layer_desc, tmp_path / "layer")


async def test_insecure_falls_back_to_http(registry, session):
    reg, img = registry
    c = client(reg.host, session, insecure=True)
    assert (await c.get_manifest(REPO, "v1"))[2] == img.manifest_digest
    assert c.scheme == "http"


async def test_tls_against_plain_http_is_unavailable_without_retries(registry, session):
    reg, _ = registry
    c = client(reg.host, session, insecure=False, retries=3, backoff=5.0)
    with pytest.raises(Unavailable, match=rf"TLS handshake with {reg.host} failed"):
        await c.get_manifest(REPO, "v1")


async def test_down_registry_is_unavailable_after_retries(session):
    endpoint = f"127.0.0.1:{unused_port()}"
    c = client(endpoint, session, insecure=True, retries=2)
    with pytest.raises(Unavailable, match=rf"registry {endpoint} unavailable for manifest test/app:v1 after 3 attempts"):
        await c.get_manifest(REPO, "v1")


async def test_basic_auth(basic_registry, session, tmp_path):
    reg, img = basic_registry
    with pytest.raises(Unauthenticated, match=r"requires credentials \(Basic auth\) for manifest test/app:v1, and none"):
        await client(reg.host, session).get_manifest(REPO, "v1")
    bad = client(reg.host, session, credentials=Credentials(username="alice", password="wrong"))
    with pytest.raises(Unauthenticated, match=rf"registry {reg.host} refused the credentials of user 'alice'"):
        await bad.get_manifest(REPO, "v1")
    good = client(reg.host, session, credentials=Credentials(username="alice", password="right"))
    assert (await good.get_manifest(REPO, "v1"))[2] == img.manifest_digest
    await good.fetch_blob(REPO, img.layer_desc, tmp_path / "layer")
    assert (tmp_path / "layer").read_bytes() == img.layer


# --- a fake token-auth registry: token flow, cross-origin redirect, retries --------------------------------------


@dataclass
class FakeTokenRegistry:
    blob: bytes
    manifest: bytes
    port: int = 0
    cdn_port: int = 0
    token_requests: list[dict] = field(default_factory=list)
    cdn_auth: list[str | None] = field(default_factory=list)
    fail_next: int = 0  # answer this many registry requests with 503
    cdn_cut_first: bool = False  # cut the first CDN answer in half; the CDN ignores Range requests
    cdn_ranges: list[str | None] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def challenge(self) -> web.Response:
        realm = f"http://127.0.0.1:{self.port}/token"
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:{REPO}:pull"'},
        )

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        self.token_requests.append(
            {"method": request.method, "query": dict(request.query), "form": form, "auth": request.headers.get("Authorization")}
        )
        if request.method == "POST":
            if form.get("refresh_token") != "refresh-me":
                return web.json_response({"error": "invalid_grant"}, status=400)
            return web.json_response({"access_token": "tok-oauth", "expires_in": 300})
        if request.headers.get("Authorization") not in (None, "Basic " + base64.b64encode(b"bob:pw").decode()):
            return web.json_response({"details": "incorrect username or password"}, status=401)
        return web.json_response({"token": "tok-" + ("user" if request.headers.get("Authorization") else "anon")})

    async def v2(self, request: web.Request) -> web.StreamResponse:
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503, text="busy")
        if request.headers.get("Authorization") not in ("Bearer tok-user", "Bearer tok-anon", "Bearer tok-oauth", "Bearer static"):
            return self.challenge()
        path = request.path
        if "/manifests/" in path and not path.endswith("/lying"):
            return web.Response(body=self.manifest, content_type=m.OCI_MANIFEST, headers={"Docker-Content-Digest": sha256(self.manifest)})
        if path.endswith("/manifests/lying"):
            return web.Response(body=self.manifest, content_type=m.OCI_MANIFEST, headers={"Docker-Content-Digest": sha256(b"x")})
        if "/blobs/" in path:
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.cdn_port}/cdn/blob?sig=1")
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "nope"}]}, status=404)

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        self.cdn_auth.append(request.headers.get("Authorization"))
        self.cdn_ranges.append(request.headers.get("Range"))
        if self.cdn_cut_first:
            self.cdn_cut_first = False
            resp = web.StreamResponse()
            resp.content_length = len(self.blob)
            await resp.prepare(request)
            await resp.write(self.blob[: len(self.blob) // 2])
            await asyncio.sleep(0.05)
            request.transport.close()
            return resp
        return web.Response(body=self.blob)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTokenRegistry]:
    blob = os.urandom(5000)
    f = FakeTokenRegistry(blob=blob, manifest=b'{"schemaVersion":2}')
    runners = []
    for routes in (
        [web.route("*", "/token", f.token), web.get("/v2/{tail:.*}", f.v2)],
        [web.get("/cdn/blob", f.cdn)],
    ):
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append((runner, site._server.sockets[0].getsockname()[1]))
    f.port, f.cdn_port = runners[0][1], runners[1][1]
    try:
        yield f
    finally:
        for runner, _ in runners:
            await runner.cleanup()


def fake_client(fake: FakeTokenRegistry, session, **kwargs) -> RegistryClient:
    return client(fake.endpoint, session, **kwargs)


async def test_token_flow_anonymous_with_cache_and_redirect(fake, session, tmp_path):
    c = fake_client(fake, session)
    _, body, digest = await c.get_manifest(REPO, "v1")
    assert digest == sha256(fake.manifest)
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(fake.blob), len(fake.blob))
    await c.fetch_blob(REPO, desc, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == fake.blob
    assert len(fake.token_requests) == 1  # cached for the blob request
    req = fake.token_requests[0]
    assert req["query"] == {"service": "fake", "scope": f"repository:{REPO}:pull"} and req["auth"] is None
    assert fake.cdn_auth == [None]  # the token stayed with the registry


async def test_resume_answered_with_200_restarts_from_zero(fake, session, tmp_path):
    fake.cdn_cut_first = True
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(fake.blob), len(fake.blob))
    await fake_client(fake, session).fetch_blob(REPO, desc, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == fake.blob
    assert fake.cdn_ranges[0] is None and fake.cdn_ranges[1].startswith("bytes=")


async def test_token_flow_with_password_and_wrong_password(fake, session):
    good = fake_client(fake, session, credentials=Credentials(username="bob", password="pw"))
    await good.get_manifest(REPO, "v1")
    assert fake.token_requests[-1]["auth"] == "Basic " + base64.b64encode(b"bob:pw").decode()
    bad = fake_client(fake, session, credentials=Credentials(username="bob", password="nope"))
    with pytest.raises(Unauthenticated, match=r"token server http://127\.0\.0\.1:\d+/token refused the credentials of user 'bob'.*incorrect username or password"):
        await bad.get_manifest(REPO, "v1")


async def test_identity_token_uses_oauth2_post(fake, session):
    c = fake_client(fake, session, credentials=Credentials(identity_token="refresh-me"))
    await c.get_manifest(REPO, "v1")
    [req] = fake.token_requests
    assert req["method"] == "POST"
    assert req["form"] == {
        "grant_type": "refresh_token", "refresh_token": "refresh-me", "service": "fake",
        "scope": f"repository:{REPO}:pull", "client_id": "cripy",
    }


async def test_registry_token_is_sent_directly(fake, session):
    c = fake_client(fake, session, credentials=Credentials(registry_token="static"))
    await c.get_manifest(REPO, "v1")
    assert fake.token_requests == []
    wrong = fake_client(fake, session, credentials=Credentials(registry_token="expired"))
    with pytest.raises(Unauthenticated, match="registry token.*UNAUTHORIZED: authentication required"):
        await wrong.get_manifest(REPO, "v1")


async def test_503_is_retried_then_unavailable(fake, session):
    fake.fail_next = 2
    c = fake_client(fake, session, retries=2)
    await c.get_manifest(REPO, "v1")
    fake.fail_next = 10
    c = fake_client(fake, session, retries=1)
    with pytest.raises(Unavailable, match=rf"registry {fake.endpoint} unavailable .* after 2 attempts; last error: HTTP 503 .*busy"):
        await c.get_manifest(REPO, "v1")


async def test_docker_content_digest_cross_check(fake, session):
    with pytest.raises(DataLoss, match="Docker-Content-Digest says sha256:"):
        await fake_client(fake, session).get_manifest(REPO, "lying")
    with pytest.raises(DataLoss, match="digest mismatch, got " + sha256(fake.manifest)):
        await fake_client(fake, session).get_manifest(REPO, "sha256:" + "0" * 64)


# --- TLS: CA from certs.d, verification failure, insecure https ---------------------------------------------------


@pytest.fixture
async def tls_registry(tmp_path) -> AsyncIterator[tuple[str, Path, bytes]]:
    tls = make_tls_files(tmp_path)
    manifest = b'{"schemaVersion":2}'

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=manifest, content_type=m.OCI_MANIFEST)

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", handle)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}", tls.ca_cert, manifest
    finally:
        await runner.cleanup()


async def test_tls_with_ca_from_certs_dir(tls_registry, session, tmp_path):
    endpoint, ca, manifest = tls_registry
    certs_dir = tmp_path / "certs.d"
    (certs_dir / endpoint).mkdir(parents=True)
    shutil.copy(ca, certs_dir / endpoint / "ca.crt")
    c = client(endpoint, session, insecure=False, certs_dir=certs_dir)
    assert (await c.get_manifest(REPO, "v1"))[1] == manifest
    assert c.scheme == "https"


async def test_tls_unknown_ca_is_unavailable_with_a_hint(tls_registry, session, tmp_path):
    endpoint, _, _ = tls_registry
    c = client(endpoint, session, insecure=False, certs_dir=tmp_path / "empty", backoff=5.0)
    with pytest.raises(Unavailable, match=rf"TLS certificate of registry {endpoint} could not be verified.*certs.d"):
        await c.get_manifest(REPO, "v1")


async def test_insecure_uses_https_without_verification(tls_registry, session):
    endpoint, _, manifest = tls_registry
    c = client(endpoint, session, insecure=True)
    assert (await c.get_manifest(REPO, "v1"))[1] == manifest
    assert c.scheme == "https"


# --- stream_blob: the same download handed to a consumer chunk by chunk ------------------------------------------


class CollectingSink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0

    async def __call__(self, chunk: bytes) -> None:
        self.calls += 1
        self.data += chunk


async def test_stream_blob_resumes_and_hands_on_each_byte_once(registry, proxy, session):
    _, img = registry
    proxy.truncate(BLOBS)
    sink = CollectingSink()
    await client(proxy.host, session).stream_blob(REPO, img.layer_desc, sink)
    assert bytes(sink.data) == img.layer
    ranges = [r.range for r in proxy.requests if r.path.endswith(img.layer_digest)]
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1].startswith("bytes=")


async def test_stream_blob_resume_answered_with_200_skips_what_it_has(fake, session):
    fake.cdn_cut_first = True
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(fake.blob), len(fake.blob))
    sink = CollectingSink()
    await fake_client(fake, session).stream_blob(REPO, desc, sink)
    assert bytes(sink.data) == fake.blob  # the re-sent beginning was not handed on twice
    assert fake.cdn_ranges[0] is None and fake.cdn_ranges[1].startswith("bytes=")


async def test_stream_blob_digest_mismatch_raises_after_the_bytes(proxy, session):
    blob, other = os.urandom(1000), os.urandom(1000)
    other_digest = serve_other_blob(proxy, blob, other)
    sink = CollectingSink()
    with pytest.raises(DataLoss, match=f"digest mismatch, got {other_digest}"):
        await client(proxy.host, session).stream_blob(REPO, Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(blob), len(blob)), sink)
    assert bytes(sink.data) == other  # handed on, but the consumer learns it is bad before using it


async def test_stream_blob_stops_when_the_sink_fails(registry, session):
    _, img = registry

    class Full(Exception):
        pass

    async def sink(chunk: bytes) -> None:
        raise Full()

    with pytest.raises(Full):
        await client(registry[0].host, session).stream_blob(REPO, img.layer_desc, sink)
