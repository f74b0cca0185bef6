"""Name reservations for pods and containers, with kubelet's retry semantics.

kubelet repeats a RunPodSandbox or CreateContainer that timed out on its side, with the same metadata. While the
first call is still running, the repeat waits for it and gets the same id; a name held by an object that exists
is refused with an error naming that object's id. The database's UNIQUE name column is the durable half of this;
the in-memory table covers calls in flight.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from cripy import timing
from cripy.errors import AlreadyExists


class NameReservations:
    """Serialises creations per name and lets a repeated call join the one in flight.

    The creation runs as a task of its own: when the client that asked gives up (kubelet's deadline cancels its
    call), the creation still completes, and kubelet's retry joins it instead of starting over.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._in_flight: dict[str, asyncio.Task[str]] = {}
        self._callers: dict[str, timing.Call | None] = {}  # whose call started each creation in flight

    async def create_once(
        self,
        name: str,
        holder: Callable[[str], Awaitable[str | None]],
        create: Callable[[], Awaitable[str]],
    ) -> str:
        """Run create() unless a call for `name` is in flight (then answer its id); refuse a name held already."""
        running = self._in_flight.get(name)
        if running is None:
            existing = await holder(name)
            running = self._in_flight.get(name)  # another call may have started while we looked
        if running is None:
            if existing is not None:
                raise AlreadyExists(f"{self._what} name {name!r} is reserved by {self._what} {existing}")
            running = asyncio.get_running_loop().create_task(_held(create), name=f"create {self._what} {name}")
            self._in_flight[name] = running
            self._callers[name] = timing.current()
            running.add_done_callback(lambda _: self._forget(name))
        else:
            timing.join(self._callers.get(name))
        return await asyncio.shield(running)

    def _forget(self, name: str) -> None:
        self._in_flight.pop(name, None)
        self._callers.pop(name, None)


async def _held(create: Callable[[], Awaitable[str]]) -> str:
    """The creation keeps its call listed in flight until it is done, even if the client gave up on it."""
    with timing.hold():
        return await create()
