"""CRI streaming calls: Exec, Attach and PortForward answer with a single-use URL on the streaming server.

No streaming happens here: the request is validated (by the streaming handlers: the container must be running,
at least one stream, no tty with stderr; the pod must be ready) and stored behind a token, and the client then
speaks the kubelet streaming protocols to the URL (cripy/streaming/).
"""

from __future__ import annotations

import grpc
from cri_api.v1 import api_pb2

from cripy.cri import validate
from cripy.cri.errors import grpc_method
from cripy.errors import Unavailable
from cripy.streaming.portforward import PortForwardRequest
from cripy.streaming.remotecommand import AttachRequest, ExecRequest
from cripy.streaming.server import KIND_ATTACH, KIND_EXEC, KIND_PORTFORWARD, StreamingServer


class StreamingServicer:
    """Mixed into RuntimeService; `self.streaming` is the running streaming server (None: not serving)."""

    streaming: StreamingServer | None

    def _server(self) -> StreamingServer:
        if self.streaming is None:
            raise Unavailable("the streaming server is not running: exec, attach and port-forward are unavailable")
        return self.streaming

    @grpc_method
    async def Exec(self, request: api_pb2.ExecRequest, context: grpc.aio.ServicerContext) -> api_pb2.ExecResponse:
        validate.exec_command(request.cmd, f"Exec in container {request.container_id}")
        domain = ExecRequest(container_id=request.container_id, cmd=tuple(request.cmd), tty=request.tty,
                             stdin=request.stdin, stdout=request.stdout, stderr=request.stderr)
        return api_pb2.ExecResponse(url=await self._server().url_for(KIND_EXEC, domain))

    @grpc_method
    async def Attach(self, request: api_pb2.AttachRequest, context: grpc.aio.ServicerContext) -> api_pb2.AttachResponse:
        domain = AttachRequest(container_id=request.container_id, tty=request.tty, stdin=request.stdin,
                               stdout=request.stdout, stderr=request.stderr)
        return api_pb2.AttachResponse(url=await self._server().url_for(KIND_ATTACH, domain))

    @grpc_method
    async def PortForward(self, request: api_pb2.PortForwardRequest, context: grpc.aio.ServicerContext) -> api_pb2.PortForwardResponse:
        domain = PortForwardRequest(pod_id=request.pod_sandbox_id, ports=tuple(request.port))
        return api_pb2.PortForwardResponse(url=await self._server().url_for(KIND_PORTFORWARD, domain))
