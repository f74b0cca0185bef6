"""A pipe for one blob between the event loop and a thread: the download writes chunks on the loop, the thread
that unpacks the layer reads them, and at most a bounded number of bytes is in flight between them. Kept apart
from the store (which only wires a layer's download to its unpacking) because it is the one piece that crosses
threads and owns locking."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Callable, TypeVar

from cripy.errors import Unavailable

T = TypeVar("T")


class ConsumerGone(Exception):
    """The unpacking thread stopped reading (it failed); its own error says why."""


class ChunkPipe:
    """Blob chunks from the event loop (write, close, abort) to one reading thread (read_chunk), with at most
    `limit` bytes in flight: a full pipe makes write wait, so a slow disk slows the download instead of
    filling memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, label: str) -> None:
        self._loop = loop
        self._limit = limit
        self._label = label
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._closed = False
        self._aborted: BaseException | None = None
        self._reader_gone = False
        self._writer_waiting = False
        self._space = asyncio.Event()
        self._start: Callable[[], asyncio.Future] | None = None
        self.consumer: asyncio.Future | None = None  # the reading thread's outcome, once started

    def on_first_write(self, start: Callable[[], asyncio.Future]) -> None:
        self._start = start

    def _ensure_consumer(self) -> None:
        if self.consumer is None and self._start is not None:
            self.consumer = self._start()

    async def write(self, chunk: bytes) -> None:
        self._ensure_consumer()
        while True:
            with self._cond:
                if self._reader_gone:
                    raise ConsumerGone(f"layer {self._label}: the unpacking stopped")
                if self._buffered < self._limit:
                    self._chunks.append(chunk)
                    self._buffered += len(chunk)
                    self._cond.notify()
                    return
                self._writer_waiting = True
                self._space.clear()
            await self._space.wait()

    def close(self) -> None:
        """The blob is complete and verified: the reader sees its end after the last chunk."""
        self._ensure_consumer()
        with self._cond:
            self._closed = True
            self._cond.notify()

    def abort(self, error: BaseException) -> None:
        with self._cond:
            self._aborted = error
            self._chunks.clear()
            self._cond.notify()

    def read_chunk(self) -> bytes:
        """Thread side: the next chunk, b"" at the verified end; raises Unavailable once aborted."""
        with self._cond:
            while not self._chunks and not self._closed and self._aborted is None:
                self._cond.wait()
            if self._aborted is not None:
                raise Unavailable(f"layer {self._label}: the download stopped: "
                                  f"{str(self._aborted) or type(self._aborted).__name__}")
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            self._wake_writer()
            return chunk

    def reader_done(self) -> None:
        """Thread side: no more reads will come (success or failure); a waiting writer must not wait forever."""
        with self._cond:
            self._reader_gone = True
            self._chunks.clear()
            self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writer_waiting:
            self._writer_waiting = False
            self._loop.call_soon_threadsafe(self._space.set)


def start_reader_thread(fn: Callable[..., T], pipe: ChunkPipe, *args: object, what: str, **kwargs: object) -> asyncio.Future:
    """fn(pipe, *args, **kwargs) in a thread of its own (a blocked reader must not hold a shared executor's
    worker); the future resolves when the thread is done, with fn's result or exception."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result: object = None
        error: BaseException | None = None
        try:
            result = fn(pipe, *args, **kwargs)
        except BaseException as e:  # handed to the awaiting coroutine
            error = e
        finally:
            pipe.reader_done()
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is gone (shutdown): nobody waits for the outcome any more
            pass

    threading.Thread(target=run, name=what, daemon=True).start()
    return future
