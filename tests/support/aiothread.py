"""Runs an aiohttp web application on 127.0.0.1 in a background thread with its own event loop, so that
synchronous tests and fixtures can start and stop HTTP servers (token server, fault proxy)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago (a target for "registry is down" tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BackgroundHTTPServer:
    """Owns one thread, one event loop, one aiohttp AppRunner bound to 127.0.0.1:<random port>."""

    def __init__(self, app_factory: Callable[[], web.Application], *, name: str,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._app_factory = app_factory
        self._name = name
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name} is not running")
        return self._loop

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._name} already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.port = self.call(self._start_site())
        except BaseException:
            self._stop_loop()
            raise

    async def _start_site(self) -> int:
        runner = web.AppRunner(self._app_factory(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl_context)
        await site.start()
        self._runner = runner
        sockets = runner.addresses
        return int(sockets[0][1])

    def call(self, coro: Awaitable[T], timeout: float = 30) -> T:
        """Runs a coroutine on the server's loop from another thread and returns its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            if self._runner is not None:
                self.call(self._runner.cleanup())
        finally:
            self._runner = None
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
