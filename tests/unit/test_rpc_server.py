"""cripy/rpc/server.py and health.py on a real unix socket: grpcio's own client (grpc.aio) makes the calls the
kubelet would; where a test needs what no well-behaved client does (a request without a message, a deadline the
client does not enforce itself, windows it never reads), a raw HTTP/2 client of hand-built frames does.

The handlers record what happened to them (started, cancelled) in asyncio events the tests wait on, with a
generous bound so that a missed cancellation fails rather than hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cripy.rpc import http2, wire
from cripy.rpc.http2 import FrameType
from cripy.rpc.health import Health
from cripy.rpc.server import Context, Method, Server
from cripy.rpc.wire import StatusCode

MiB = 1024 * 1024
WAIT = 10.0  # seconds: a bound on what should take milliseconds, so that a bug fails instead of hanging
CLIENT_OPTIONS = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]


def raw(handler: Callable[..., Any], streaming: bool = False) -> Method:
    """A method taking and giving bytes as they are."""
    return Method(handler, bytes, bytes, streaming=streaming)


async def echo(request: bytes, context: Context) -> bytes:
    return b"echo:" + request


class Observed:
    """What happened to a handler: it started, it saw its cancellation, it ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.ended = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.started.set()
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.ended.set()

    async def forever(self, request: bytes, context: Context) -> bytes:
        async with self.running():
            await asyncio.sleep(3600)
        return b"never"


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Not tmp_path: a unix socket's path must fit in 108 bytes, and pytest's directories named after long test
    # names do not.
    directory = Path(tempfile.mkdtemp(prefix="rpc-", dir="/tmp"))
    yield directory / "grpc.sock"
    collect_dead_tasks()
    shutil.rmtree(directory)


@contextlib.asynccontextmanager
async def serving(socket_path: Path, methods: dict[str, Method], max_message_bytes: int = 16 * MiB,
                  on_idle: Callable[[], None] | None = None) -> AsyncIterator[Server]:
    server = Server(methods, max_message_bytes=max_message_bytes, on_idle=on_idle)
    await server.start(socket_path)
    try:
        yield server
    finally:
        await server.stop(grace=0)
        collect_dead_tasks()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def collect_dead_tasks() -> None:
    """A call's task that died of an exception is logged ("Task exception was never retrieved") when the garbage
    collector reaches it, and formatting that log's traceback parses source. Collected inside the test rather than
    at a random moment: inside pytest's own ast.parse of a failure report, the nested parse breaks CPython 3.11.7's
    non-reentrant AST state (SystemError "AST constructor recursion depth mismatch", and the whole session ends)."""
    gc.collect()


def channel(socket_path: Path) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix:{socket_path}", options=CLIENT_OPTIONS)


async def call(socket_path: Path, path: str, request: bytes = b"", **kwargs: Any) -> bytes:
    async with channel(socket_path) as ch:
        return await ch.unary_unary(path)(request, **kwargs)


async def status_of(socket_path: Path, path: str, request: bytes = b"", **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(socket_path, path, request, **kwargs)
    return error.value


# -------------------------------------------------------------------------------------------------- unary calls


async def test_a_unary_call_is_answered(socket_path: Path) -> None:
    async with serving(socket_path, {"/t.S/Echo": raw(echo)}):
        assert await call(socket_path, "/t.S/Echo", b"hello") == b"echo:hello"
        assert await call(socket_path, "/t.S/Echo", b"") == b"echo:"


async def test_on_idle_is_called_when_the_last_call_in_flight_has_ended(socket_path: Path) -> None:
    idle: list[int] = []
    release = asyncio.Event()
    first_started = asyncio.Event()

    async def held(request: bytes, context: Context) -> bytes:
        first_started.set()
        await release.wait()
        return b"held"

    async with serving(socket_path, {"/t.S/Echo": raw(echo), "/t.S/Held": raw(held)},
                       on_idle=lambda: idle.append(1)):
        assert await call(socket_path, "/t.S/Echo", b"a") == b"echo:a"
        await asyncio.wait_for(until(lambda: len(idle) == 1), WAIT)
        async with channel(socket_path) as ch:
            waiting = asyncio.ensure_future(ch.unary_unary("/t.S/Held")(b""))
            await asyncio.wait_for(first_started.wait(), WAIT)
            assert await ch.unary_unary("/t.S/Echo")(b"b") == b"echo:b"
            assert len(idle) == 1, "a call was still in flight"
            release.set()
            assert await asyncio.wait_for(waiting, WAIT) == b"held"
        await asyncio.wait_for(until(lambda: len(idle) == 2), WAIT)
        assert await status_of(socket_path, "/t.S/Missing")
        assert len(idle) == 2, "a call refused before it ran never began"


async def test_an_answer_from_memory_is_given_without_the_handler(socket_path: Path) -> None:
    """Method.at_once answers in the step that received the request; None, an exception or an answer over the
    limit leave the call to the handler, which answers it as it would have."""
    handled: list[bytes] = []
    idle: list[int] = []

    def from_memory(request: bytes, context: Context) -> bytes | None:
        if request == b"boom":
            raise ValueError("not from memory")
        if request == b"big":
            return b"x" * (MiB + 1)
        return b"kept" if request == b"kept" else None

    async def handler(request: bytes, context: Context) -> bytes:
        handled.append(request)
        if request == b"big":
            return b"x" * (MiB + 1)
        return b"built:" + request

    method = Method(handler, bytes, bytes, at_once=from_memory)
    async with serving(socket_path, {"/t.S/List": method}, max_message_bytes=MiB, on_idle=lambda: idle.append(1)):
        assert await call(socket_path, "/t.S/List", b"kept") == b"kept"
        assert handled == [] and len(idle) == 1  # answered at once, and the server knows it is idle again
        assert await call(socket_path, "/t.S/List", b"other") == b"built:other"
        assert await call(socket_path, "/t.S/List", b"boom") == b"built:boom"
        error = await status_of(socket_path, "/t.S/List", b"big")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert handled == [b"other", b"boom", b"big"]
        async with channel(socket_path) as ch:  # many on one connection, mixed with the handler's answers
            answers = await asyncio.gather(*(ch.unary_unary("/t.S/List")(b"kept" if i % 2 else b"%d" % i)
                                             for i in range(50)))
        assert answers == [b"kept" if i % 2 else b"built:%d" % i for i in range(50)]


async def test_an_abort_reaches_the_client_with_its_code_and_message_intact(socket_path: Path) -> None:
    message = "pod «web» 容器 is 100% gone\n(see %41)"

    async def refuse(request: bytes, context: Context) -> bytes:
        await context.abort(StatusCode.FAILED_PRECONDITION, message)

    async with serving(socket_path, {"/t.S/Refuse": raw(refuse)}):
        error = await status_of(socket_path, "/t.S/Refuse", b"x")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == message


async def test_an_abort_naming_an_undecodable_path_still_ends_the_call(socket_path: Path) -> None:
    """A message may hold a lone surrogate (a path's undecodable byte, by os.fsdecode): the call must still end
    with its code, not hang until the client's deadline."""
    path = os.fsdecode(b"/var/lib/cripy/\xff")

    async def refuse(request: bytes, context: Context) -> bytes:
        await context.abort(StatusCode.NOT_FOUND, f"no such file {path}")

    async with serving(socket_path, {"/t.S/Refuse": raw(refuse), "/t.S/Echo": raw(echo)}):
        error = await status_of(socket_path, "/t.S/Refuse", timeout=3)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details().startswith("no such file /var/lib/cripy/")
        assert await call(socket_path, "/t.S/Echo", b"x") == b"echo:x"


async def test_abort_refuses_ok(socket_path: Path) -> None:
    async def confused(request: bytes, context: Context) -> bytes:
        await context.abort(StatusCode.OK, "fine")

    async with serving(socket_path, {"/t.S/Confused": raw(confused)}):
        error = await status_of(socket_path, "/t.S/Confused")
    assert error.code() == grpc.StatusCode.UNKNOWN and "ValueError" in error.details()


async def test_an_unknown_method_is_unimplemented(socket_path: Path) -> None:
    async with serving(socket_path, {"/t.S/Echo": raw(echo)}):
        error = await status_of(socket_path, "/t.S/Nope", b"x")
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "/t.S/Nope" in error.details()
        assert await call(socket_path, "/t.S/Echo", b"still") == b"echo:still"


async def test_a_request_that_does_not_decode_is_an_invalid_argument(socket_path: Path) -> None:
    handled = []

    async def handler(request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        handled.append(request)
        return health_pb2.HealthCheckResponse()

    method = Method(handler, health_pb2.HealthCheckRequest.FromString,
                    health_pb2.HealthCheckResponse.SerializeToString)
    async with serving(socket_path, {"/t.S/Proto": method}):
        error = await status_of(socket_path, "/t.S/Proto", b"\xff\xff\xff")  # a truncated field
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not decode" in error.details()
    assert handled == []


async def test_a_failing_handler_is_unknown_and_the_server_keeps_serving(socket_path: Path) -> None:
    async def broken(request: bytes, context: Context) -> bytes:
        raise RuntimeError("a bug in the handler")

    async with serving(socket_path, {"/t.S/Broken": raw(broken), "/t.S/Echo": raw(echo)}):
        async with channel(socket_path) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await ch.unary_unary("/t.S/Broken")(b"x")
            assert error.value.code() == grpc.StatusCode.UNKNOWN
            assert "RuntimeError" in error.value.details() and "a bug in the handler" in error.value.details()
            assert await ch.unary_unary("/t.S/Echo")(b"after") == b"echo:after"  # the same connection


async def test_a_handlers_own_timeout_is_not_the_clients_deadline(socket_path: Path) -> None:
    """A TimeoutError of the handler's making (a subprocess or lock it gave up on) is an unexpected failure like
    any other: the client set no deadline, and DEADLINE_EXCEEDED would tell it that its own deadline passed."""
    async def gives_up(request: bytes, context: Context) -> bytes:
        raise TimeoutError("runc did not answer in 10 s")

    async with serving(socket_path, {"/t.S/GivesUp": raw(gives_up)}):
        error = await status_of(socket_path, "/t.S/GivesUp")
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "runc did not answer" in error.details()


async def test_metadata_reaches_the_handler(socket_path: Path) -> None:
    seen: list[tuple[tuple[str, str | bytes], ...]] = []

    async def look(request: bytes, context: Context) -> bytes:
        seen.append(context.invocation_metadata())
        return b""

    async with serving(socket_path, {"/t.S/Look": raw(look)}):
        await call(socket_path, "/t.S/Look", metadata=(("x-request-id", "abc-1"), ("x-blob-bin", b"\0\xff\n"),
                                                         ("x-request-id", "abc-2")))
    metadata = seen[0]
    assert [value for key, value in metadata if key == "x-request-id"] == ["abc-1", "abc-2"]
    assert ("x-blob-bin", b"\0\xff\n") in metadata
    assert any(key == "user-agent" for key, _ in metadata)
    assert not any(key.startswith(":") or key in ("content-type", "te", "grpc-timeout") for key, _ in metadata)


# ------------------------------------------------------------------------------------------------ deadlines


async def test_the_clients_deadline_cancels_the_handler(socket_path: Path) -> None:
    observed = Observed()
    remaining: list[float | None] = []

    async def slow(request: bytes, context: Context) -> bytes:
        remaining.append(context.time_remaining())
        return await observed.forever(request, context)

    async with serving(socket_path, {"/t.S/Slow": raw(slow)}):
        error = await status_of(socket_path, "/t.S/Slow", timeout=0.5)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(observed.cancelled.wait(), WAIT)
    assert remaining[0] is not None and 0 < remaining[0] <= 0.6  # grpc-timeout is rounded up to its unit


async def test_without_a_deadline_no_time_is_remaining(socket_path: Path) -> None:
    remaining: list[float | None] = []

    async def look(request: bytes, context: Context) -> bytes:
        remaining.append(context.time_remaining())
        return b""

    async with serving(socket_path, {"/t.S/Look": raw(look)}):
        await call(socket_path, "/t.S/Look")
    assert remaining == [None]


async def test_the_server_enforces_the_deadline_itself(socket_path: Path) -> None:
    """A client that sends grpc-timeout and then waits: the server ends the call with DEADLINE_EXCEEDED."""
    observed = Observed()
    async with serving(socket_path, {"/t.S/Forever": raw(observed.forever)}):
        async with raw_client(socket_path) as client:
            stream_id = client.request("/t.S/Forever", wire.message(b"x"), [("grpc-timeout", "200m")])
            response = await client.response(stream_id)
        assert observed.cancelled.is_set()
    assert response.status == StatusCode.DEADLINE_EXCEEDED


# ------------------------------------------------------------------------------------------------ streaming


async def test_a_streaming_call_gives_its_messages_in_order_then_its_status(socket_path: Path) -> None:
    async def count(request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()
        await context.abort(StatusCode.OUT_OF_RANGE, "no more")

    async with serving(socket_path, {"/t.S/Count": raw(count, streaming=True)}):
        async with channel(socket_path) as ch:
            stream = ch.unary_stream("/t.S/Count")(b"50")
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as error:
                async for message in stream:
                    received.append(message)
    assert received == [str(i).encode() for i in range(50)]
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE and error.value.details() == "no more"


async def test_cancelling_a_streaming_call_cancels_its_handler(socket_path: Path) -> None:
    observed = Observed()

    async def ticks(request: bytes, context: Context) -> AsyncIterator[bytes]:
        async with observed.running():
            yield b"first"
            await asyncio.sleep(3600)
            yield b"never"

    async with serving(socket_path, {"/t.S/Ticks": raw(ticks, streaming=True)}):
        async with channel(socket_path) as ch:
            stream = ch.unary_stream("/t.S/Ticks")(b"")
            assert await stream.read() == b"first"
            stream.cancel()
            await asyncio.wait_for(observed.cancelled.wait(), WAIT)
            assert await ch.unary_stream("/t.S/Ticks")(b"").read() == b"first"  # the connection serves on


async def test_a_reset_reaches_a_streaming_handler_held_back_by_the_clients_window(socket_path: Path) -> None:
    """The handler waits for the client's window (its answers are over the stream's high-water mark); the client
    resets the stream: the handler's own clean-up must run then, not whenever its generator is collected."""
    observed = Observed()

    async def big(request: bytes, context: Context) -> AsyncIterator[bytes]:
        async with observed.running():
            while True:
                yield b"b" * (2 * MiB)

    async with serving(socket_path, {"/t.S/Big": raw(big, streaming=True)}):
        async with raw_client(socket_path) as client:  # h2's default window, 64 KiB, and nothing read
            stream_id = client.request("/t.S/Big", wire.message(b""))
            await asyncio.wait_for(observed.started.wait(), WAIT)
            await asyncio.sleep(0.2)  # the handler is now waiting in the server's back-pressure
            client.writer.write(http2.frame(FrameType.RST_STREAM, 0, stream_id,
                                            http2.ErrorCode.CANCEL.to_bytes(4, "big")))
            await asyncio.wait_for(observed.ended.wait(), 5)


# ---------------------------------------------------------------------------------------------------- sizes


async def test_ten_mebibytes_each_way_arrive_whole(socket_path: Path) -> None:
    """Far above the initial windows of both sides (64 KiB): flow control must move all of it."""
    payload = os.urandom(10 * MiB)

    async def mirror(request: bytes, context: Context) -> bytes:
        return request[::-1]

    async with serving(socket_path, {"/t.S/Mirror": raw(mirror)}):
        assert await call(socket_path, "/t.S/Mirror", payload) == payload[::-1]


async def test_a_request_larger_than_the_default_window_arrives_when_the_limit_allows_it(socket_path: Path) -> None:
    """The connection's window is given back only as requests end, so it must hold the largest request taken."""
    payload = os.urandom(20 * MiB)

    async def size(request: bytes, context: Context) -> bytes:
        return str(len(request)).encode()

    async with serving(socket_path, {"/t.S/Size": raw(size)}, max_message_bytes=24 * MiB):
        assert await asyncio.wait_for(call(socket_path, "/t.S/Size", payload), 30) == str(20 * MiB).encode()


async def test_a_request_over_the_limit_is_resource_exhausted(socket_path: Path) -> None:
    handled = []

    async def take(request: bytes, context: Context) -> bytes:
        handled.append(len(request))
        return b"ok"

    async with serving(socket_path, {"/t.S/Take": raw(take)}, max_message_bytes=MiB):
        assert await call(socket_path, "/t.S/Take", b"x" * MiB) == b"ok"  # the limit itself is allowed
        error = await status_of(socket_path, "/t.S/Take", b"x" * (2 * MiB))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await call(socket_path, "/t.S/Take", b"small") == b"ok"
    assert handled == [MiB, 5]


async def test_a_response_over_the_limit_is_resource_exhausted(socket_path: Path) -> None:
    async def bloat(request: bytes, context: Context) -> bytes:
        return b"x" * int(request)

    async with serving(socket_path, {"/t.S/Bloat": raw(bloat)}, max_message_bytes=MiB):
        assert len(await call(socket_path, "/t.S/Bloat", str(MiB).encode())) == MiB
        error = await status_of(socket_path, "/t.S/Bloat", str(MiB + 1).encode())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MiB + 1) in error.details()


async def test_two_hundred_concurrent_calls_on_one_channel(socket_path: Path) -> None:
    in_flight = 0
    most = 0
    release = asyncio.Event()

    async def wait_then_echo(request: bytes, context: Context) -> bytes:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if most == 200:
            release.set()
        await asyncio.wait_for(release.wait(), WAIT)
        in_flight -= 1
        return request

    async with serving(socket_path, {"/t.S/Wait": raw(wait_then_echo)}):
        async with channel(socket_path) as ch:
            method = ch.unary_unary("/t.S/Wait")
            answers = await asyncio.gather(*(method(str(i).encode()) for i in range(200)))
    assert answers == [str(i).encode() for i in range(200)]
    assert most == 200  # all of them were in the handler at once


async def test_a_request_without_one_whole_message_or_with_a_bad_timeout_is_an_invalid_argument(socket_path: Path) -> None:
    handled = []

    async def take(request: bytes, context: Context) -> bytes:
        handled.append(request)
        return b"ok"

    async with serving(socket_path, {"/t.S/Take": raw(take)}):
        async with raw_client(socket_path) as client:
            empty = client.request("/t.S/Take", b"")
            two = client.request("/t.S/Take", wire.message(b"a") + wire.message(b"b"))
            cut = client.request("/t.S/Take", wire.message(b"abc")[:6])
            late = client.request("/t.S/Take", wire.message(b"a"), [("grpc-timeout", "soon")])
            one = client.request("/t.S/Take", wire.message(b"a"))
            statuses = [(await client.response(stream_id)).status for stream_id in (empty, two, cut, late, one)]
    assert statuses == [StatusCode.INVALID_ARGUMENT] * 4 + [StatusCode.OK]
    assert handled == [b"a"]


# ---------------------------------------------------------------------------------------------------- stop


async def test_stop_lets_a_call_in_flight_finish_and_cancels_a_long_one(socket_path: Path) -> None:
    quick, long = Observed(), Observed()

    async def finishes(request: bytes, context: Context) -> bytes:
        async with quick.running():
            await asyncio.sleep(0.3)
        return b"finished"

    methods = {"/t.S/Quick": raw(finishes), "/t.S/Long": raw(long.forever)}
    async with serving(socket_path, methods) as server, channel(socket_path) as ch:
        quick_call = asyncio.ensure_future(ch.unary_unary("/t.S/Quick")(b""))
        long_call = asyncio.ensure_future(ch.unary_unary("/t.S/Long")(b""))
        await asyncio.wait_for(asyncio.gather(quick.started.wait(), long.started.wait()), WAIT)
        await server.stop(grace=1.0)
        assert await quick_call == b"finished"
        await asyncio.wait_for(long.cancelled.wait(), WAIT)
        with pytest.raises(grpc.aio.AioRpcError):
            await long_call
    assert not quick.cancelled.is_set()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(socket_path, "/t.S/Quick", timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_returns_once_the_calls_it_cancels_have_ended(socket_path: Path) -> None:
    """The daemon closes its database right after stop(): no handler may still be running then."""
    long = Observed()
    async with serving(socket_path, {"/t.S/Long": raw(long.forever)}) as server, channel(socket_path) as ch:
        long_call = asyncio.ensure_future(ch.unary_unary("/t.S/Long")(b""))
        await asyncio.wait_for(long.started.wait(), WAIT)
        await server.stop(grace=0.2)
        assert long.ended.is_set(), "stop() returned while a handler it was to cancel still ran"
        with pytest.raises(grpc.aio.AioRpcError):
            await long_call


async def test_stop_delivers_the_whole_answer_of_a_call_that_finished_in_the_grace(socket_path: Path) -> None:
    """A call done within the grace period is only finished once its answer left: a response larger than the
    client's window (h2's default, 64 KiB) waits on the client's WINDOW_UPDATEs, which need the connection open."""
    payload = os.urandom(8 * MiB)
    quick = Observed()

    async def big(request: bytes, context: Context) -> bytes:
        async with quick.running():
            await asyncio.sleep(0.2)
        return payload

    async with serving(socket_path, {"/t.S/Big": raw(big)}) as server, raw_client(socket_path) as client:
        stream_id = client.request("/t.S/Big", wire.message(b""))
        await asyncio.wait_for(quick.started.wait(), WAIT)
        stopping = asyncio.ensure_future(server.stop(grace=5))
        response = await client.response(stream_id)
        await asyncio.wait_for(stopping, WAIT)
    assert response.status == StatusCode.OK
    assert len(response.data) == len(wire.message(payload)) and response.data == wire.message(payload)


# ------------------------------------------------------------------------------------------- bad connections


async def test_garbage_on_a_connection_closes_it_and_the_server_serves_others(socket_path: Path) -> None:
    async with serving(socket_path, {"/t.S/Echo": raw(echo)}):
        async with channel(socket_path) as ch:
            assert await ch.unary_unary("/t.S/Echo")(b"before") == b"echo:before"
            for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64):
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
                writer.write(garbage)
                received = await asyncio.wait_for(reader.read(), WAIT)  # to EOF: the server closed it
                writer.close()
                frames = frame_kinds(received)
                assert frames[0] == 4 and frames[-1] == 7, frames  # our SETTINGS first, a GOAWAY last
            assert await ch.unary_unary("/t.S/Echo")(b"after") == b"echo:after"  # the open connection too


async def test_a_client_that_goes_cancels_its_calls(socket_path: Path) -> None:
    observed = Observed()
    async with serving(socket_path, {"/t.S/Forever": raw(observed.forever)}):
        async with raw_client(socket_path) as client:
            client.request("/t.S/Forever", wire.message(b"x"))
            await asyncio.wait_for(observed.started.wait(), WAIT)
        await asyncio.wait_for(observed.cancelled.wait(), WAIT)


async def test_a_streaming_call_holds_back_when_the_client_does_not_read(socket_path: Path) -> None:
    """A client may open its windows wide and then stop reading: what the server keeps for it must stay bounded
    (the socket's back-pressure, not only HTTP/2's windows), and the handler must wait instead of producing on."""
    produced = 0
    cap = 64

    async def flood(request: bytes, context: Context) -> AsyncIterator[bytes]:
        nonlocal produced
        chunk = b"f" * MiB
        while produced < cap:
            produced += 1
            yield chunk

    async with serving(socket_path, {"/t.S/Flood": raw(flood, streaming=True)}, max_message_bytes=2 * MiB):
        async with raw_client(socket_path, window=2**31 - 1) as client:
            client.request("/t.S/Flood", wire.message(b""))
            await client.flush()
            # Read nothing; wait for the handler to settle (or to reach the cap).
            last, still = -1, 0
            while still < 5 and produced < cap:
                await asyncio.sleep(0.1)
                still = still + 1 if produced == last else 0
                last = produced
    assert produced < 16, f"the handler produced {produced} MiB for a client that read none of it"


# ------------------------------------------------------------------------------------------------------ health


async def test_health_check(socket_path: Path) -> None:
    health = Health()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set("runtime.v1.RuntimeService", health_pb2.HealthCheckResponse.NOT_SERVING)
    async with serving(socket_path, health.methods()):
        async with channel(socket_path) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert (await stub.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
            answer = await stub.Check(health_pb2.HealthCheckRequest(service="runtime.v1.RuntimeService"))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND and "no.Such" in error.value.details()


async def test_health_watch_sees_changes_and_the_shutdown(socket_path: Path) -> None:
    health = Health()
    service = "runtime.v1.RuntimeService"
    Status = health_pb2.HealthCheckResponse
    async with serving(socket_path, health.methods()):
        async with channel(socket_path) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=service))

            async def next_status() -> int:
                return (await asyncio.wait_for(watch.read(), WAIT)).status

            assert await next_status() == Status.SERVICE_UNKNOWN
            await health.set(service, Status.SERVING)
            assert await next_status() == Status.SERVING
            await health.set(service, Status.SERVING)  # no change, nothing sent
            await health.set("other", Status.NOT_SERVING)  # another service's change, nothing sent
            await health.set(service, Status.NOT_SERVING)
            assert await next_status() == Status.NOT_SERVING
            await health.set(service, Status.SERVING)
            assert await next_status() == Status.SERVING
            await health.enter_graceful_shutdown()
            assert await next_status() == Status.NOT_SERVING
            # ... and the watch ends there, so that it does not hold the daemon's stop for its grace period
            assert await asyncio.wait_for(watch.read(), WAIT) is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
            await health.set(service, Status.SERVING)  # too late: shutdown is for good
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == Status.NOT_SERVING


# ------------------------------------------------------------------------------------------ the raw client


def frame_kinds(data: bytes) -> list[int]:
    kinds, at = [], 0
    while len(data) - at >= 9:
        kinds.append(data[at + 3])
        at += 9 + int.from_bytes(data[at:at + 3], "big")
    return kinds


class Response:
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.data = bytearray()
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> StatusCode | None:
        codes = [value for name, value in self.headers if name == "grpc-status"]
        return StatusCode(int(codes[-1])) if codes else None


class RawClient:
    """A minimal HTTP/2 client of hand-built frames, for what grpcio's client never sends. It credits back every
    DATA frame it reads, answers SETTINGS and PING, and reads on past a GOAWAY (streams up to its last stream id
    are still answered: RFC 9113 6.8)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int | None) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.responses: dict[int, Response] = {}
        self.next_stream_id = 1
        self.inbox = bytearray()
        self.block = bytearray()
        settings = b""
        if window is not None:
            settings = http2.Setting.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + window.to_bytes(4, "big")
        self.writer.write(http2.PREFACE + http2.frame(FrameType.SETTINGS, 0, 0, settings))
        if window is not None:
            self.writer.write(http2.frame(FrameType.WINDOW_UPDATE, 0, 0, (window - 65_535).to_bytes(4, "big")))

    def request(self, path: str, body: bytes, extra: list[tuple[str, str]] = []) -> int:
        stream_id, self.next_stream_id = self.next_stream_id, self.next_stream_id + 2
        self.responses[stream_id] = Response()
        block = self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                     (":authority", "localhost"), ("content-type", "application/grpc"),
                                     ("te", "trailers"), *extra])
        self.writer.write(http2.frame(FrameType.HEADERS, http2.END_HEADERS, stream_id, block))
        assert len(body) <= http2.MAX_FRAME_SIZE
        self.writer.write(http2.frame(FrameType.DATA, http2.END_STREAM, stream_id, body))
        return stream_id

    async def flush(self) -> None:
        await self.writer.drain()

    async def response(self, stream_id: int) -> Response:
        response = self.responses[stream_id]
        while not response.ended:
            try:
                data = await asyncio.wait_for(self.reader.read(256 * 1024), WAIT)
            except ConnectionError:  # our WINDOW_UPDATEs met a closed socket
                data = b""
            assert data, (f"the server closed the connection before stream {stream_id} ended "
                          f"({len(response.data)} bytes of its data read)")
            self.inbox += data
            while len(self.inbox) >= 9 and len(self.inbox) >= 9 + int.from_bytes(self.inbox[:3], "big"):
                length = int.from_bytes(self.inbox[:3], "big")
                kind, flags = self.inbox[3], self.inbox[4]
                frame_stream = int.from_bytes(self.inbox[5:9], "big")
                payload = bytes(self.inbox[9:9 + length])
                del self.inbox[:9 + length]
                self._frame(kind, flags, frame_stream, payload)
        return response

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        response = self.responses.get(stream_id)
        if kind == FrameType.SETTINGS and not flags & http2.ACK:
            self.writer.write(http2.frame(FrameType.SETTINGS, http2.ACK, 0))
        elif kind == FrameType.PING and not flags & http2.ACK:
            self.writer.write(http2.frame(FrameType.PING, http2.ACK, 0, payload))
        elif kind == FrameType.DATA and response is not None:
            response.data += payload
            if payload:
                credit = len(payload).to_bytes(4, "big")
                self.writer.write(http2.frame(FrameType.WINDOW_UPDATE, 0, 0, credit))
                if not flags & http2.END_STREAM:
                    self.writer.write(http2.frame(FrameType.WINDOW_UPDATE, 0, stream_id, credit))
        elif kind in (FrameType.HEADERS, FrameType.CONTINUATION):
            self.block += payload
            if flags & http2.END_HEADERS:
                headers = self.decoder.decode(bytes(self.block))
                self.block.clear()
                if response is not None:
                    response.headers += headers
        elif kind == FrameType.RST_STREAM and response is not None:
            response.reset = int.from_bytes(payload, "big")
            response.ended = True
        if response is not None and kind in (FrameType.DATA, FrameType.HEADERS) and flags & http2.END_STREAM:
            response.ended = True


@contextlib.asynccontextmanager
async def raw_client(socket_path: Path, window: int | None = None) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        yield RawClient(reader, writer, window)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_handlers_of_reset_calls_count_against_the_stream_limit(socket_path: Path) -> None:
    """HTTP/2 "rapid reset": a client that opens and resets streams frees their HTTP/2 slots at once, but a handler
    may take its time to end (a thread it waits on). Until it has, no new call starts beyond the limit."""
    release = asyncio.Event()
    live = most = started = 0

    async def stubborn(request: bytes, context: Context) -> bytes:
        nonlocal live, most, started
        live += 1
        started += 1
        most = max(most, live)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()
            raise
        finally:
            live -= 1
        return b"never"

    server = Server({"/t.S/Slow": raw(stubborn)}, max_message_bytes=MiB, max_concurrent_streams=4)
    await server.start(socket_path)
    try:
        async with channel(socket_path) as ch:
            slow = ch.unary_unary("/t.S/Slow")
            calls = [asyncio.ensure_future(slow(b"x", timeout=0.3)) for _ in range(12)]
            await asyncio.sleep(1.5)
            assert (started, most) == (4, 4)
            release.set()
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT)
        assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                   for r in results)
        assert most == 4
    finally:
        release.set()
        await server.stop(grace=0)
        collect_dead_tasks()


async def test_a_client_flooding_unfinished_requests_is_cut_off_at_one_window(socket_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Many streams, each a request that never ends: the stream windows are credited as data arrives, so only the
    connection's window bounds what the server holds. A client that ignores it is disconnected once it sends past
    it (FLOW_CONTROL_ERROR), and the server goes on serving others."""
    async with serving(socket_path, {"/t.S/Echo": raw(echo)}, max_message_bytes=MiB):
        window = http2.window_for(MiB + 5)
        frames_per_stream = 63  # of a message announced as MiB - 16 bytes: never whole, never over the limit
        first = wire_message_head(MiB - 16) + b"\0" * (http2.MAX_FRAME_SIZE - 5)
        rest = b"\0" * http2.MAX_FRAME_SIZE
        streams = window // (frames_per_stream * http2.MAX_FRAME_SIZE) + 2
        async with raw_client(socket_path) as client:
            for stream_id in range(1, 2 * streams, 2):
                block = client.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/t.S/Echo"),
                                               (":authority", "localhost"), ("content-type", "application/grpc"),
                                               ("te", "trailers")])
                client.writer.write(http2.frame(FrameType.HEADERS, http2.END_HEADERS, stream_id, block))
                client.writer.write(http2.frame(FrameType.DATA, 0, stream_id, first))
                for _ in range(frames_per_stream - 1):
                    client.writer.write(http2.frame(FrameType.DATA, 0, stream_id, rest))
            assert streams * frames_per_stream * http2.MAX_FRAME_SIZE > window
            with contextlib.suppress(ConnectionError):
                await client.flush()
                while await asyncio.wait_for(client.reader.read(65536), WAIT):
                    pass  # to EOF, or to the broken pipe our last writes met: the server closed the connection
        assert "FLOW_CONTROL_ERROR: DATA of 16384 bytes" in caplog.text
        async with channel(socket_path) as ch:
            assert await ch.unary_unary("/t.S/Echo")(b"after") == b"echo:after"


def wire_message_head(length: int) -> bytes:
    """A gRPC message's 5-byte head: not compressed, `length` bytes follow."""
    return b"\0" + length.to_bytes(4, "big")
