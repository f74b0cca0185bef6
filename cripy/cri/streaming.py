"""CRI streaming calls: Exec, Attach and PortForward answer with a single-use URL on the streaming server.

No streaming happens here: the request is validated (by the streaming handlers: the container must be running,
at least one stream, no tty with stderr; the pod must be ready) and stored behind a token, and the client then
speaks the kubelet streaming protocols to the URL (cripy/streaming/). The streaming server, and the protocol code
behind it, start with the first of these calls: a node nobody execs into does not carry them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from cri_api.v1 import api_pb2

from cripy.cri import validate
from cripy.cri.errors import grpc_method
from cripy.rpc.server import Context

if TYPE_CHECKING:
    from cripy.streaming.server import StreamingServer


class StreamingServicer:
    """Mixed into RuntimeService; `self.streaming_server()` is the running streaming server, started if need be."""

    streaming_server: Callable[[], Awaitable["StreamingServer"]]

    @grpc_method
    async def Exec(self, request: api_pb2.ExecRequest, context: Context) -> api_pb2.ExecResponse:
        validate.exec_command(request.cmd, f"Exec in container {request.container_id}")
        from cripy.streaming.remotecommand import ExecRequest
        from cripy.streaming.server import KIND_EXEC

        domain = ExecRequest(container_id=request.container_id, cmd=tuple(request.cmd), tty=request.tty,
                             stdin=request.stdin, stdout=request.stdout, stderr=request.stderr)
        return api_pb2.ExecResponse(url=await (await self.streaming_server()).url_for(KIND_EXEC, domain))

    @grpc_method
    async def Attach(self, request: api_pb2.AttachRequest, context: Context) -> api_pb2.AttachResponse:
        from cripy.streaming.remotecommand import AttachRequest
        from cripy.streaming.server import KIND_ATTACH

        domain = AttachRequest(container_id=request.container_id, tty=request.tty, stdin=request.stdin,
                               stdout=request.stdout, stderr=request.stderr)
        return api_pb2.AttachResponse(url=await (await self.streaming_server()).url_for(KIND_ATTACH, domain))

    @grpc_method
    async def PortForward(self, request: api_pb2.PortForwardRequest, context: Context) -> api_pb2.PortForwardResponse:
        from cripy.streaming.portforward import PortForwardRequest
        from cripy.streaming.server import KIND_PORTFORWARD

        domain = PortForwardRequest(pod_id=request.pod_sandbox_id, ports=tuple(request.port))
        return api_pb2.PortForwardResponse(url=await (await self.streaming_server()).url_for(KIND_PORTFORWARD, domain))
