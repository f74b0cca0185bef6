"""RegistryClient against a real docker-registry on 127.0.0.1, a fault-injecting proxy in front of it, and a small
fake token-auth registry (token flow, redirects to another origin, retries)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
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
from cripy.images import manifest as m
from cripy.images.auth import Credentials
from cripy.images.manifest import Descriptor
from cripy.images.registry import RegistryClient

pytestmark = pytest.mark.integration

REGISTRY_BIN = "/usr/bin/docker-registry"
REPO = "test/app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bcrypt(password: str) -> str | None:
    """bcrypt via libxcrypt (Python's crypt module) or `htpasswd -B`; None if neither can do it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            return hashed
    except ImportError:
        pass
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "4", "x", password], capture_output=True, text=True, check=True)
        return out.stdout.strip().split(":", 1)[1]
    return None


# --- the real registry -----------------------------------------------------------------------------------------


@dataclass
class RunningRegistry:
    endpoint: str
    auth_header: str | None = None

    def call(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.auth_header:
            headers["Authorization"] = self.auth_header
        if not url.startswith("http"):
            url = f"http://{self.endpoint}{url}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def push_blob(self, data: bytes) -> str:
        digest = sha256(data)
        status, headers, _ = self.call("POST", f"/v2/{REPO}/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.endpoint}{location}"
        sep = "&" if "?" in location else "?"
        status, _, body = self.call(
            "PUT", f"{location}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"}
        )
        assert status == 201, (status, body)
        return digest

    def push_manifest(self, reference: str, media_type: str, body: bytes) -> None:
        status, _, resp = self.call("PUT", f"/v2/{REPO}/manifests/{reference}", body, {"Content-Type": media_type})
        assert status == 201, (status, resp)


def start_registry(workdir: Path, htpasswd: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-secret"},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "cripy-test", "path": str(htpasswd)}}
    cfg = workdir / "config.yml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://{endpoint}/v2/", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # 401 from an auth registry still means it is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                pytest.fail(f"docker-registry did not start: {(workdir / 'registry.log').read_text()}")
            time.sleep(0.05)
    return proc, endpoint


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def push_image(reg: RunningRegistry, tag: str = "v1") -> PushedImage:
    layer = os.urandom(700_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(b"x")]}}).encode()
    layer_digest = reg.push_blob(layer)
    config_digest = reg.push_blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": m.OCI_MANIFEST,
            "config": {"mediaType": m.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": m.OCI_LAYER_TAR_GZIP, "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    reg.push_manifest(tag, m.OCI_MANIFEST, manifest)
    return PushedImage(layer, layer_digest, config, manifest, sha256(manifest))


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[tuple[RunningRegistry, PushedImage]]:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    proc, endpoint = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        reg = RunningRegistry(endpoint)
        yield reg, push_image(reg)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory) -> Iterator[tuple[RunningRegistry, PushedImage]]:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    hashed = bcrypt("right")
    if hashed is None:
        pytest.skip("no bcrypt: Python's crypt lacks $2b$ and htpasswd (Debian package apache2-utils) is missing")
    workdir = tmp_path_factory.mktemp("basic-registry")
    (workdir / "htpasswd").write_text(f"alice:{hashed}\n")
    proc, endpoint = start_registry(workdir, workdir / "htpasswd")
    try:
        reg = RunningRegistry(endpoint, "Basic " + base64.b64encode(b"alice:right").decode())
        yield reg, push_image(reg)
    finally:
        stop(proc)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20), trust_env=False) as s:
        yield s


def client(endpoint: str, session: aiohttp.ClientSession, **kwargs) -> RegistryClient:
    kwargs.setdefault("certs_dir", None)
    kwargs.setdefault("insecure", True)  # the test registries speak plain HTTP
    kwargs.setdefault("backoff", 0.01)
    return RegistryClient(endpoint, session=session, **kwargs)


# --- a fault-injecting proxy in front of the registry ----------------------------------------------------------


@dataclass
class Proxy:
    upstream: str
    mode: str = "pass"  # pass | cut-once | trickle
    port: int = 0
    seen: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (path, Range, Authorization)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Range"), request.headers.get("Authorization")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "accept-encoding")}
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.request(
                request.method, f"http://{self.upstream}{request.path_qs}", headers=headers,
                data=await request.read(), allow_redirects=False,
            ) as up:
                data = await up.read()
                out_headers = {k: v for k, v in up.headers.items() if k.lower() not in ("transfer-encoding", "content-length", "connection")}
                status = up.status
        is_blob = "/blobs/sha256:" in request.path and status in (200, 206)
        if not is_blob or self.mode == "pass":
            return web.Response(status=status, body=data, headers=out_headers)
        resp = web.StreamResponse(status=status, headers=out_headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        if self.mode == "cut-once":
            self.mode = "pass"
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.05)
            request.transport.close()
            return resp
        for i in range(0, len(data), 16):  # trickle: ~16 bytes per 0.2 s
            await resp.write(data[i : i + 16])
            await asyncio.sleep(0.2)
        return resp


@pytest.fixture
async def proxy(registry) -> AsyncIterator[Proxy]:
    reg, _ = registry
    p = Proxy(reg.endpoint)
    app = web.Application()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await p.handle(request)  # late-bound so a test can wrap p.handle

    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    p.port = site._server.sockets[0].getsockname()[1]
    try:
        yield p
    finally:
        await runner.cleanup()


# --- tests against the real registry ---------------------------------------------------------------------------


async def test_get_manifest_by_tag_and_digest(registry, session):
    reg, img = registry
    c = client(reg.endpoint, session)
    media_type, body, digest = await c.get_manifest(REPO, "v1")
    assert (media_type, body, digest) == (m.OCI_MANIFEST, img.manifest, img.manifest_digest)
    parsed = m.parse_manifest(media_type, body)
    assert parsed.layers[0].digest == img.layer_digest
    assert await c.get_manifest(REPO, img.manifest_digest) == (m.OCI_MANIFEST, img.manifest, img.manifest_digest)


async def test_unknown_tag_and_repo_are_not_found(registry, session):
    reg, _ = registry
    c = client(reg.endpoint, session)
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
    await client(reg.endpoint, session).fetch_blob(REPO, img.layer_desc, dest, lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == img.layer
    assert seen[-1] == (len(img.layer), len(img.layer))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert list(tmp_path.iterdir()) == [dest]


async def test_fetch_blob_size_mismatch_leaves_nothing(registry, session, tmp_path):
    reg, img = registry
    small = os.urandom(5)
    reg.push_blob(small)
    # the descriptor claims more bytes than the registry has for that digest
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(small), 6)
    with pytest.raises(DataLoss, match=rf"blob {sha256(small)} from {reg.endpoint}/test/app: the server announces 5 bytes"):
        await client(reg.endpoint, session).fetch_blob(REPO, desc, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


async def test_digest_mismatch_after_full_download(proxy, session, tmp_path):
    # A proxy that serves a different blob under the requested digest is the only way a real registry lies.
    reg_endpoint = proxy.upstream
    reg = RunningRegistry(reg_endpoint)
    blob = os.urandom(1000)
    other = os.urandom(1000)
    reg.push_blob(blob)
    other_digest = reg.push_blob(other)
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(blob), len(blob))

    original = proxy.handle

    async def swap(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(sha256(blob)):
            request = request.clone(rel_url=request.rel_url.with_path(request.path.replace(sha256(blob), other_digest)))
        return await original(request)

    proxy.handle = swap  # type: ignore[method-assign]
    with pytest.raises(DataLoss, match=f"digest mismatch, got {other_digest}"):
        await client(proxy.endpoint, session).fetch_blob(REPO, desc, tmp_path / "blob")
    assert list(tmp_path.iterdir()) == []


async def test_truncated_download_resumes_with_range(registry, proxy, session, tmp_path):
    _, img = registry
    proxy.mode = "cut-once"
    dest = tmp_path / "layer"
    await client(proxy.endpoint, session).fetch_blob(REPO, img.layer_desc, dest)
    assert dest.read_bytes() == img.layer
    ranges = [r for path, r, _ in proxy.seen if path.endswith(img.layer_digest)]
    assert ranges[0] is None
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1].startswith("bytes=")
    resumed_from = int(ranges[1][len("bytes=") : -1])
    assert 0 < resumed_from <= len(img.layer) // 2


async def test_stalled_download_hits_throughput_floor(registry, proxy, session, tmp_path):
    _, img = registry
    proxy.mode = "trickle"
    c = client(proxy.endpoint, session, min_throughput=100_000, throughput_window=1.0)
    with pytest.raises(DeadlineExceeded) as exc:
        await c.fetch_blob(REPO, img.layer_desc, tmp_path / "layer")
    assert f"pull of layer {img.layer_digest} from {proxy.endpoint}/{REPO} stalled" in str(exc.value)
    assert "under the floor of 100000 B/s" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


async def test_cancelled_download_removes_partial(registry, proxy, session, tmp_path):
    _, img = registry
    proxy.mode = "trickle"
    started = asyncio.Event()
    task = asyncio.create_task(
        client(proxy.endpoint, session).fetch_blob(REPO, img.layer_desc, tmp_path / "layer", lambda d, t: started.set())
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
        await client(reg.endpoint, session).fetch_blob(REPO, img.layer_desc, tmp_path / "layer")


async def test_insecure_falls_back_to_http(registry, session):
    reg, img = registry
    c = client(reg.endpoint, session, insecure=True)
    assert (await c.get_manifest(REPO, "v1"))[2] == img.manifest_digest
    assert c.scheme == "http"


async def test_tls_against_plain_http_is_unavailable_without_retries(registry, session):
    reg, _ = registry
    c = client(reg.endpoint, session, insecure=False, retries=3, backoff=5.0)
    with pytest.raises(Unavailable, match=rf"TLS handshake with {reg.endpoint} failed"):
        await c.get_manifest(REPO, "v1")


async def test_down_registry_is_unavailable_after_retries(session):
    endpoint = f"127.0.0.1:{free_port()}"
    c = client(endpoint, session, insecure=True, retries=2)
    with pytest.raises(Unavailable, match=rf"registry {endpoint} unavailable for manifest test/app:v1 after 3 attempts"):
        await c.get_manifest(REPO, "v1")


async def test_basic_auth(basic_registry, session, tmp_path):
    reg, img = basic_registry
    with pytest.raises(Unauthenticated, match=r"requires credentials \(Basic auth\) for manifest test/app:v1, and none"):
        await client(reg.endpoint, session).get_manifest(REPO, "v1")
    bad = client(reg.endpoint, session, credentials=Credentials(username="alice", password="wrong"))
    with pytest.raises(Unauthenticated, match=rf"registry {reg.endpoint} refused the credentials of user 'alice'"):
        await bad.get_manifest(REPO, "v1")
    good = client(reg.endpoint, session, credentials=Credentials(username="alice", password="right"))
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


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
async def tls_registry(tmp_path) -> AsyncIterator[tuple[str, Path, bytes]]:
    import ssl

    ca, cert, key = make_ca_and_server_cert(tmp_path)
    manifest = b'{"schemaVersion":2}'

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=manifest, content_type=m.OCI_MANIFEST)

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", handle)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}", ca, manifest
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
    proxy.mode = "cut-once"
    sink = CollectingSink()
    await client(proxy.endpoint, session).stream_blob(REPO, img.layer_desc, sink)
    assert bytes(sink.data) == img.layer
    ranges = [r for path, r, _ in proxy.seen if path.endswith(img.layer_digest)]
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1].startswith("bytes=")


async def test_stream_blob_resume_answered_with_200_skips_what_it_has(fake, session):
    fake.cdn_cut_first = True
    desc = Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(fake.blob), len(fake.blob))
    sink = CollectingSink()
    await fake_client(fake, session).stream_blob(REPO, desc, sink)
    assert bytes(sink.data) == fake.blob  # the re-sent beginning was not handed on twice
    assert fake.cdn_ranges[0] is None and fake.cdn_ranges[1].startswith("bytes=")


async def test_stream_blob_digest_mismatch_raises_after_the_bytes(proxy, session):
    reg = RunningRegistry(proxy.upstream)
    blob, other = os.urandom(1000), os.urandom(1000)
    reg.push_blob(blob)
    other_digest = reg.push_blob(other)
    original = proxy.handle

    async def swap(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(sha256(blob)):
            request = request.clone(rel_url=request.rel_url.with_path(request.path.replace(sha256(blob), other_digest)))
        return await original(request)

    proxy.handle = swap  # type: ignore[method-assign]
    sink = CollectingSink()
    with pytest.raises(DataLoss, match=f"digest mismatch, got {other_digest}"):
        await client(proxy.endpoint, session).stream_blob(REPO, Descriptor(m.OCI_LAYER_TAR_GZIP, sha256(blob), len(blob)), sink)
    assert bytes(sink.data) == other  # handed on, but the consumer learns it is bad before using it


async def test_stream_blob_stops_when_the_sink_fails(registry, session):
    _, img = registry

    class Full(Exception):
        pass

    async def sink(chunk: bytes) -> None:
        raise Full()

    with pytest.raises(Full):
        await client(registry[0].endpoint, session).stream_blob(REPO, img.layer_desc, sink)
