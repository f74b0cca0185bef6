"""The registry's HTTP client (cripy/images/http.py) against small servers on 127.0.0.1 that answer byte for byte
what each test needs: reuse of kept-alive connections, chunked and length-delimited bodies, bodies cut short, a
silent server, a kept-alive connection the server dropped, bodiless answers, redirects for lookaside fetches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cripy.images import http

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[http.URL, list[int]]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[http.URL, list[int]]:
        connections: list[int] = []

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return http.URL(f"http://127.0.0.1:{port}/v2/"), connections

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def body_of(response: http.Response) -> bytes:
    data = b""
    while chunk := await response.read(7):
        data += chunk
    response.release()
    return data


async def test_length_body_and_kept_alive_connection_reused(serve) -> None:
    async def handler(reader, writer):
        for _ in range(3):
            request = await read_request(reader)
            assert b"Host: 127.0.0.1:" in request and b"User-Agent: test-agent" in request
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Many: a\r\nx-many: b\r\n\r\nhello world")
            await writer.drain()

    url, connections = await serve(handler)
    client = http.Client(user_agent="test-agent")
    for _ in range(3):
        response = await client.request("GET", url)
        assert (response.status, response.content_length) == (200, 11)
        assert response.headers.getall("X-MANY") == ["a", "b"] and response.headers.get("x-many") == "a"
        assert await body_of(response) == b"hello world"
    assert len(connections) == 1
    await client.close()


async def test_chunked_body_and_a_body_cut_short(serve) -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    url, _ = await serve(handler)
    client = http.Client()
    assert await body_of(await client.request("GET", url)) == b"hello world"
    cut = await client.request("GET", url)
    with pytest.raises(http.HTTPError):
        await body_of(cut)
    cut.close()
    await client.close()


async def test_a_silent_server_times_out(serve) -> None:
    async def handler(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    url, _ = await serve(handler)
    client = http.Client(read_timeout=0.2)
    with pytest.raises(TimeoutError):
        await client.request("GET", url)
    await client.close()


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_once(serve) -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # and close: the client keeps the connection, finds it dead at the next request and dials again

    url, connections = await serve(handler)
    client = http.Client()
    assert await body_of(await client.request("GET", url)) == b"ok"
    await asyncio.sleep(0.05)
    assert await body_of(await client.request("GET", url)) == b"ok"
    assert len(connections) == 2
    await client.close()


async def test_bodiless_answers_and_an_unfinished_response_is_not_reused(serve) -> None:
    async def handler(reader, writer):
        while True:
            request = await read_request(reader)
            if request.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            elif b"/v2/none" in request:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
            await writer.drain()

    url, connections = await serve(handler)
    client = http.Client()
    assert await body_of(await client.request("HEAD", url)) == b""
    assert await body_of(await client.request("GET", url.join("/v2/none"))) == b""
    assert len(connections) == 1
    partly = await client.request("GET", url)
    assert await partly.read(3) == b"012"
    partly.release()  # not fully read: dropped, not handed to the next request
    assert await body_of(await client.request("GET", url)) == b"0123456789"
    assert len(connections) == 2
    await client.close()


async def test_a_post_carries_its_form_and_a_malformed_answer_is_an_error(serve) -> None:
    got: list[bytes] = []

    async def handler(reader, writer):
        head = await read_request(reader)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        got.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await read_request(reader)
        writer.write(b"SPDY/9 nonsense\r\n\r\n")
        await writer.drain()

    url, _ = await serve(handler)
    client = http.Client()
    body, headers = http.form_body({"grant_type": "refresh_token", "scope": "repository:a/b:pull"})
    response = await client.request("POST", url, headers, body)
    await body_of(response)
    assert got == [b"grant_type=refresh_token&scope=repository%3Aa%2Fb%3Apull"]
    with pytest.raises(http.HTTPError, match="malformed"):
        await client.request("GET", url)
    await client.close()


async def test_redirects_are_followed_for_lookaside_fetches(serve) -> None:
    async def handler(reader, writer):
        while True:
            request = await read_request(reader)
            if b"GET /v2/ " in request:
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere/sig\r\nContent-Length: 0\r\n\r\n")
            else:
                assert b"GET /elsewhere/sig " in request
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nsig")
            await writer.drain()

    url, _ = await serve(handler)
    client = http.Client()
    assert await body_of(await http.get_following_redirects(client, url)) == b"sig"
    await client.close()


def test_urls() -> None:
    url = http.URL("https://registry.example:5000/v2/a/b/manifests/v1?x=1")
    assert url.origin() == ("https", "registry.example", 5000) and url.explicit_port
    assert url.target() == "/v2/a/b/manifests/v1?x=1"
    assert url.without_query() == "https://registry.example:5000/v2/a/b/manifests/v1"
    assert url.join("/token").text == "https://registry.example:5000/token"
    assert url.join("https://cdn.example/blob").origin() == ("https", "cdn.example", 443)
    assert http.URL("http://h/t").with_query({"scope": "repository:a:pull"}).target() == "/t?scope=repository%3Aa%3Apull"
    with pytest.raises(ValueError):
        http.URL("ftp://h/x")
    with pytest.raises(ValueError):
        http.URL("/relative")


def test_idle_connections_expire_and_their_keys_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pull has a TLS context (and so a pool key) of its own: its idle connections must not stay forever."""

    class Closing:
        def __init__(self, key: tuple) -> None:
            self.key, self.closed = key, False

        def close(self) -> None:
            self.closed = True

    now = [1000.0]
    monkeypatch.setattr(http.time, "monotonic", lambda: now[0])
    pool = http.Pool()
    old = Closing(("https", "registry", 443, 1))
    pool.put_back(old)  # type: ignore[arg-type]
    now[0] += http.IDLE_SECONDS + 1
    fresh = Closing(("https", "registry", 443, 2))
    pool.put_back(fresh)  # type: ignore[arg-type]
    assert old.closed and not fresh.closed
    assert pool.take(old.key) is None
    assert list(pool._idle) == [fresh.key]
