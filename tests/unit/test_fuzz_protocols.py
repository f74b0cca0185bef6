"""Property-based fuzzing of what cripy reads from the wire and from registries: the streaming server's HTTP heads
and upgrades, SPDY/3.1 and WebSocket frames; a registry's manifests, configs, challenges, error bodies, token replies
and redirects (through the real client, cripy's own HTTP, against an aiohttp server that answers what hypothesis draws); layer tar streams.

Each reader may refuse what it gets, with its own error (HttpError, SpdyError, WebSocketError, a CripyError), and
nothing else: no other exception, no hang, and nothing written outside the directory a layer unpacks into. Bounded
for CI: a fixed number of examples each, no example database.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cripy.errors import CripyError
from cripy.images import http, manifest
from cripy.images.distribution import parse_www_authenticate, registry_error_text
from cripy.images.registry import RegistryClient
from cripy.images.unpack import unpack_stream
from cripy.streaming import spdy, spdyframing, websocket
from cripy.streaming.handshake import KIND_EXEC, HttpError, negotiate, parse_request_head
from cripy.streaming.server import ServerSettings, StreamingServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES * 8, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
FUZZ_SLOW = settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, at = [], 0
    for size in sizes:
        if at >= len(data):
            break
        pieces.append(data[at:at + size])
        at += size
    return pieces + ([data[at:]] if at < len(data) else [])


# ---------------------------------------------------------------------------------------------------- HTTP heads

header_names = st.sampled_from(["Connection", "Upgrade", "X-Stream-Protocol-Version", "Sec-WebSocket-Key",
                                "Sec-WebSocket-Version", "Sec-WebSocket-Protocol", "Host", "Content-Length", "X"])
header_values = st.one_of(st.text(max_size=60), st.sampled_from(
    ["Upgrade", "SPDY/3.1", "websocket", "13", "v4.channel.k8s.io", "v5.channel.k8s.io", "base64.channel.k8s.io",
     "portforward.k8s.io", "MDEyMzQ1Njc4OWFiY2RlZg==", "a" * 9000]))


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "", "G\0T", "CONNECT"]))
    target = draw(st.one_of(st.sampled_from(["/exec/tok", "/portforward/x", "/attach/", "*", "//", "/exec/%00"]),
                            st.text(max_size=30)))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "HTTP/1.1 x"]))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    text = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return text.encode(errors="surrogateescape")


@FUZZ
@given(raw=request_heads())
def test_request_heads_parse_or_are_refused(raw: bytes) -> None:
    try:
        request = parse_request_head(raw)
        negotiate(request, KIND_EXEC)
    except HttpError as e:
        assert 400 <= e.status < 600


@FUZZ_SLOW
@given(raw=request_heads(), tail=st.binary(max_size=300))
def test_a_live_streaming_server_answers_garbage_and_keeps_serving(raw: bytes, tail: bytes) -> None:
    async def run() -> None:
        server = StreamingServer(ServerSettings(), {})
        await server.start()
        try:
            for payload in (raw + tail, b"GET /exec/x HTTP/1.1\r\nHost: a\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(payload)
                try:
                    await writer.drain()
                    writer.write_eof()
                except (ConnectionError, OSError):
                    pass
                answer = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:200]
            assert answer.startswith(b"HTTP/1.1 404 ")  # the server still serves, and the token is unknown
        finally:
            await server.stop()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------------- SPDY


@st.composite
def spdy_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return spdyframing.control_frame(draw(st.integers(0, 20)), draw(st.integers(0, 255)), draw(st.binary(max_size=100)))
    if kind == 2:  # a DATA frame, written by hand: any stream id, any flags, a length that may lie
        data = draw(st.binary(max_size=100))
        length = draw(st.one_of(st.just(len(data)), st.integers(0, 2**24 - 1)))
        return (draw(st.integers(0, 2**31 - 1)).to_bytes(4, "big") + bytes([draw(st.integers(0, 255))])
                + length.to_bytes(3, "big") + data)
    if kind == 3:
        stream_id = draw(st.integers(0, 2**31 - 1))
        headers = draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4))
        try:
            block = spdyframing.HeaderCompressor().compress(headers) if draw(st.booleans()) else draw(st.binary(max_size=60))
        except spdy.SpdyError:  # what the encoder itself refuses (empty names) goes raw
            block = draw(st.binary(max_size=60))
        payload = stream_id.to_bytes(4, "big") + draw(st.binary(min_size=6, max_size=6)) + block
        return spdyframing.control_frame(1, draw(st.integers(0, 3)), payload)
    return draw(st.sampled_from([
        spdyframing.rst_stream_frame(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 20))),
        spdyframing.settings_frame({draw(st.integers(0, 2**24 - 1)): draw(st.integers(0, 2**32 - 1))}),
        spdyframing.ping_frame(draw(st.integers(0, 2**32 - 1))),
        spdyframing.goaway_frame(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 10))),
        spdyframing.window_update_frame(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))),
    ]))


@FUZZ
@given(frames=st.lists(spdy_frames(), max_size=8), sizes=st.lists(st.integers(1, 64), max_size=20))
def test_spdy_frames_are_read_or_refused(frames: list[bytes], sizes: list[int]) -> None:
    connection = spdy.SpdyConnection(is_server=True)
    try:
        for piece in chunked(b"".join(frames), sizes):
            connection.receive_data(piece)
            connection.data_to_send()
    except spdy.SpdyError:
        pass


# ---------------------------------------------------------------------------------------------------- WebSocket


@st.composite
def websocket_frames(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=200))
    mask = draw(st.one_of(st.none(), st.binary(min_size=4, max_size=4)))
    return websocket.encode_frame(draw(st.integers(0, 15)), draw(st.binary(max_size=300)), fin=draw(st.booleans()),
                                  mask_key=mask)


@FUZZ
@given(frames=st.lists(websocket_frames(), max_size=8), sizes=st.lists(st.integers(1, 64), max_size=20))
def test_websocket_frames_are_read_or_refused(frames: list[bytes], sizes: list[int]) -> None:
    connection = websocket.WebSocketConnection()
    try:
        for piece in chunked(b"".join(frames), sizes):
            connection.receive_data(piece)
            connection.data_to_send()
    except websocket.WebSocketError:
        pass


# ---------------------------------------------------------------------------------------------------- registry documents

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=30)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20)
MEDIA_TYPES = [manifest_type for manifest_type in (
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws", "text/html", "")]


@st.composite
def manifest_like(draw: st.DrawFn) -> bytes:
    """A manifest-shaped document with hostile fields, or plain hostile JSON, or bytes."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    descriptor = st.fixed_dictionaries({}, optional={
        "mediaType": st.one_of(st.sampled_from(MEDIA_TYPES), json_values),
        "digest": st.one_of(st.just("sha256:" + "a" * 64), st.text(max_size=80), json_values),
        "size": st.one_of(st.integers(-5, 2**70), json_values),
        "platform": st.one_of(json_values, st.fixed_dictionaries({"architecture": st.text(max_size=8),
                                                                   "os": st.text(max_size=8)})),
        "urls": json_values, "annotations": json_values,
    })
    doc = draw(st.fixed_dictionaries({}, optional={
        "schemaVersion": st.one_of(st.just(2), json_values),
        "mediaType": st.one_of(st.sampled_from(MEDIA_TYPES), json_values),
        "config": st.one_of(descriptor, json_values),
        "layers": st.one_of(st.lists(descriptor, max_size=3), json_values),
        "manifests": st.one_of(st.lists(descriptor, max_size=3), json_values),
    }))
    return json.dumps(doc).encode()


@FUZZ
@given(body=manifest_like(), media_type=st.one_of(st.sampled_from(MEDIA_TYPES), st.text(max_size=40)))
def test_manifests_parse_or_are_refused(body: bytes, media_type: str) -> None:
    try:
        parsed = manifest.parse_manifest(media_type, body)
    except CripyError:
        return
    if isinstance(parsed, manifest.ImageIndex):
        try:
            manifest.select_platform(parsed, manifest.host_platform())
        except CripyError:
            pass


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()), st.fixed_dictionaries(
    {}, optional={"architecture": json_values, "os": json_values, "config": json_values, "rootfs": st.one_of(
        json_values, st.fixed_dictionaries({"type": st.just("layers"), "diff_ids": json_values}))},
).map(lambda v: json.dumps(v).encode())))
def test_image_configs_parse_or_are_refused(body: bytes) -> None:
    try:
        manifest.parse_image_config(body)
    except CripyError:
        pass


@FUZZ
@given(headers=st.lists(st.one_of(st.text(max_size=120), st.sampled_from([
    'Bearer realm="https://auth/token",service="r",scope="repository:a:pull"', 'Basic realm="x"', 'Bearer',
    'Bearer realm="', 'Bearer realm=\\"x\\"', ', , ,', 'Bearer a=b=c, d'])), max_size=3),
    body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_challenges_and_error_bodies_parse(headers: list[str], body: bytes) -> None:
    parse_www_authenticate(headers)
    registry_error_text(body)


# ---------------------------------------------------------------------------------------------------- a live registry


@st.composite
def registry_replies(draw: st.DrawFn) -> list[dict[str, Any]]:
    """What the registry answers, request after request: statuses, headers (challenges, redirects, types), bodies."""
    replies = []
    for _ in range(draw(st.integers(1, 4))):
        status = draw(st.sampled_from([200, 200, 200, 301, 302, 307, 401, 403, 404, 429, 500, 503, 206, 204]))
        headers: dict[str, str] = {}
        if status in (301, 302, 307):
            headers["Location"] = draw(st.one_of(st.sampled_from(
                ["/token", "/v2/", "http://127.0.0.1:1/x", "file:///etc/passwd", "//evil/x", "", "ftp://a"]),
                st.text(max_size=40)))
        if status == 401:
            headers["WWW-Authenticate"] = draw(st.sampled_from(
                ['Bearer realm="{realm}",service="r"', 'Bearer realm="file:///etc/passwd"', 'Basic realm="x"',
                 "Bearer", 'Bearer realm="http://127.0.0.1:1/t"']))
        if draw(st.booleans()):
            headers["Content-Type"] = draw(st.one_of(st.sampled_from(MEDIA_TYPES + ["application/json"]),
                                                     st.text(max_size=30)))
        if draw(st.booleans()):
            headers["Retry-After"] = draw(st.sampled_from(["0", "1", "-1", "999999", "x", "Wed, 21 Oct 2015"]))
        body = draw(st.one_of(manifest_like(), st.fixed_dictionaries({}, optional={
            "token": st.one_of(st.text(max_size=40), json_values), "access_token": json_values,
            "expires_in": st.one_of(st.integers(-10, 2**70), json_values), "issued_at": json_values,
        }).map(lambda v: json.dumps(v).encode())))
        replies.append({"status": status, "headers": headers, "body": body})
    return replies


@FUZZ_SLOW
@given(replies=registry_replies())
@example(replies=[{"status": 301, "headers": {"Location": "\x80"}, "body": b""}])  # h11 cannot encode that target
def test_the_registry_client_survives_any_registry(replies: list[dict[str, Any]]) -> None:
    async def run() -> None:
        served = iter(replies * 3)

        async def answer(request: web.Request) -> web.Response:
            reply = next(served, {"status": 404, "headers": {}, "body": b"{}"})
            headers = {k: v.replace("{realm}", f"http://{request.host}/token") for k, v in reply["headers"].items()}
            try:
                return web.Response(status=reply["status"], headers=headers, body=reply["body"])
            except (ValueError, TypeError):
                return web.Response(status=400)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            session = http.Client(read_timeout=10)
            try:
                client = RegistryClient(f"127.0.0.1:{port}", insecure=True, session=session, certs_dir=None,
                                        retries=1, backoff=0, max_retry_after=1)
                try:
                    async with asyncio.timeout(20):
                        media_type, body, _ = await client.get_manifest("fuzz/image", "latest")
                        manifest.parse_manifest(media_type, body)
                except CripyError:
                    pass
            finally:
                await session.close()
        finally:
            await runner.cleanup()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------------- tar streams

member_names = st.one_of(st.sampled_from([
    "a", "dir/", "dir/file", "../escape", "../../etc/x", "/abs", "./.wh..wh..opq", "dir/.wh.file", ".wh.a", "a/../../b",
    "a\0b", "", ".", "link", "dev/null", "x" * 300]), st.text(max_size=30))


@st.composite
def tar_streams(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=2000))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=draw(st.sampled_from(
            [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))) as tar:
        for _ in range(draw(st.integers(0, 6))):
            info = tarfile.TarInfo(draw(member_names))
            info.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                              tarfile.CHRTYPE, tarfile.FIFOTYPE, b"x"]))
            info.linkname = draw(member_names)
            info.mode = draw(st.integers(0, 0o7777))
            info.uid, info.gid = draw(st.integers(0, 2**21 - 1)), draw(st.integers(0, 2**21 - 1))
            info.mtime = draw(st.integers(0, 2**33 - 1))
            data = draw(st.binary(max_size=100)) if info.type == tarfile.REGTYPE else b""
            info.size = len(data)
            if draw(st.integers(0, 5)) == 0:
                info.pax_headers = {draw(st.sampled_from(["path", "linkpath", "size", "mtime", "SCHILY.xattr.user.x",
                                                          "uid"])): draw(st.text(max_size=20))}
            try:
                tar.addfile(info, io.BytesIO(data))
            except (ValueError, tarfile.TarError, UnicodeError):
                continue
    raw = buffer.getvalue()
    if draw(st.booleans()) and raw:  # a corrupted byte or a cut stream
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:] if draw(st.booleans()) else raw[:at]
    return raw


class _Chunks:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read_chunk(self) -> bytes:
        chunk = self._data[self._at:self._at + 4096]
        self._at += len(chunk)
        return chunk


@FUZZ
@given(stream=tar_streams())
def test_tar_streams_unpack_or_are_refused_and_never_escape(stream: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("tar")
    dest = base / "layers" / "one"
    dest.parent.mkdir()
    try:
        unpack_stream(_Chunks(stream), dest, "application/vnd.oci.image.layer.v1.tar")
    except CripyError:
        assert not dest.exists(), "a refused layer left its directory"
    outside = sorted(str(p.relative_to(base)) for p in base.rglob("*") if not p.is_relative_to(dest))
    assert outside == ["layers"], f"written outside the layer: {outside}"
