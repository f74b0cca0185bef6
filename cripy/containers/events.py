"""Container lifecycle events (GetContainerEvents): created, started, stopped, deleted, fanned out to every
subscriber. A subscriber that stops reading loses its oldest events rather than slowing the daemon down."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024


class EventType(enum.Enum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True)
class ContainerEvent:
    container_id: str
    pod_id: str
    type: EventType
    created_at: int = field(default_factory=time.time_ns)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[ContainerEvent]] = set()

    def subscribe(self) -> asyncio.Queue[ContainerEvent]:
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ContainerEvent]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: ContainerEvent) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                log.warning("a container event subscriber is not keeping up: dropped its oldest event")
            queue.put_nowait(event)
