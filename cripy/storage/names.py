"""Name reservations for pods and containers, with kubelet's retry semantics.

kubelet repeats a RunPodSandbox or CreateContainer that timed out on its side, with the same metadata. While the
first call is still running, the repeat waits for it and gets the same id; a name held by an object that exists
is refused with an error naming that object's id. The database's UNIQUE name column is the durable half of this;
the in-memory table covers calls in flight.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from cripy.errors import AlreadyExists


class NameReservations:
    """Serialises creations per name and lets a repeated call join the one in flight."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._in_flight: dict[str, asyncio.Future[str]] = {}

    async def create_once(
        self,
        name: str,
        holder: Callable[[str], Awaitable[str | None]],
        create: Callable[[], Awaitable[str]],
    ) -> str:
        """Run create() unless a call for `name` is in flight (then answer its id); refuse a name held already."""
        running = self._in_flight.get(name)
        if running is not None:
            return await asyncio.shield(running)
        existing = await holder(name)
        if existing is not None:
            raise AlreadyExists(f"{self._what} name {name!r} is reserved by {self._what} {existing}")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._in_flight[name] = future
        try:
            new_id = await create()
            future.set_result(new_id)
            return new_id
        except BaseException as e:
            future.set_exception(e)
            future.exception()
            raise
        finally:
            del self._in_flight[name]
