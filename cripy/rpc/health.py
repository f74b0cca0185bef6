"""grpc.health.v1.Health: Check and Watch over the statuses the daemon sets, per service name ("" is the whole
server). Once shutdown begins every service is NOT_SERVING and stays so.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from grpc_health.v1 import health_pb2

from cripy.rpc.server import Context, Method
from cripy.rpc.wire import StatusCode

SERVICE = "grpc.health.v1.Health"
Status = int  # a health_pb2.HealthCheckResponse.ServingStatus value


class Health:
    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {}
        self._changed = asyncio.Condition()
        self._shutting_down = False
        self._version = 0  # counts the changes, so a watcher cannot miss one made while it was sending

    async def set(self, service: str, status: Status) -> None:
        if self._shutting_down:
            return
        self._statuses[service] = status
        await self._notify()

    async def _notify(self) -> None:
        self._version += 1
        async with self._changed:
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        self._shutting_down = True
        await self._notify()

    async def check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(StatusCode.NOT_FOUND, f"unknown service {request.service[:200]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def watch(self, request: health_pb2.HealthCheckRequest,
                    context: Context) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The service's status now, then every change of it, until the client goes or the daemon stops."""
        last = None
        while True:
            seen = self._version
            status = self._statuses.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            if self._shutting_down:
                return  # NOT_SERVING was the last word: the watcher is not what keeps the daemon from stopping
            async with self._changed:
                await self._changed.wait_for(lambda: self._version != seen)

    def methods(self) -> dict[str, Method]:
        serialize = health_pb2.HealthCheckResponse.SerializeToString
        return {
            f"/{SERVICE}/Check": Method(self.check, health_pb2.HealthCheckRequest.FromString, serialize),
            f"/{SERVICE}/Watch": Method(self.watch, health_pb2.HealthCheckRequest.FromString, serialize,
                                        streaming=True),
        }
