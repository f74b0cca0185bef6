"""CRI RuntimeService: the daemon's own calls (Version, Status, RuntimeConfig), composed with the pod, container,
stats and streaming calls (cri/pods.py, cri/containers.py, cri/stats.py, cri/streaming.py). Calls cripy does not
serve answer Unimplemented (cri/handlers.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Awaitable, Callable

from cri_api.v1 import api_pb2

from cripy import CRI_API_VERSION, RUNTIME_NAME, __version__
from cripy.containers.manager import ContainerManager
from cripy.cri.containers import ContainersServicer, listed_containers
from cripy.cri.errors import grpc_method
from cripy.cri.pods import PodsServicer, listed_pods
from cripy.cri.stats import StatsServicer
from cripy.cri.streaming import StreamingServicer
from cripy.errors import Unimplemented
from cripy.oci.features import HandlerFeatures
from cripy.pods.manager import PodManager
from cripy.rpc.server import Context

if TYPE_CHECKING:
    from cripy.streaming.server import StreamingServer

# What the node reports about the network; answered by whoever owns networking.
NetworkStatusFn = Callable[[], tuple[bool, str, str]]


class RuntimeService(PodsServicer, ContainersServicer, StatsServicer, StreamingServicer):
    def __init__(
        self,
        *,
        pods: PodManager,
        containers: ContainerManager,
        handler_features: Callable[[], dict[str, HandlerFeatures]],
        network_status: NetworkStatusFn,
        config_info: Callable[[], dict],
        streaming_server: Callable[[], Awaitable[StreamingServer]],
    ) -> None:
        self.pods = pods
        self.containers = containers
        self.listed_pods = listed_pods()
        self.listed_containers = listed_containers()
        self.streaming_server = streaming_server
        self._handler_features = handler_features
        self._network_status = network_status
        self._config_info = config_info

    @grpc_method
    async def Version(self, request: api_pb2.VersionRequest, context: Context) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=CRI_API_VERSION,
        )

    @grpc_method
    async def Status(self, request: api_pb2.StatusRequest, context: Context) -> api_pb2.StatusResponse:
        # kubelet polls Status every few seconds; the CNI check stats the conf dir and plugin dirs.
        network_ready, reason, message = await asyncio.to_thread(self._network_status)
        conditions = [
            api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
            api_pb2.RuntimeCondition(type="NetworkReady", status=network_ready, reason=reason, message=message),
        ]
        handlers = [
            api_pb2.RuntimeHandler(name=name, features=api_pb2.RuntimeHandlerFeatures(
                recursive_read_only_mounts=features.recursive_read_only_mounts,
                user_namespaces=features.user_namespaces,
            ))
            for name, features in self._handler_features().items()
        ]
        # Verbose: cri/info.py's sections (config and its files, handlers, the CNI network), one JSON value each.
        sections = await asyncio.to_thread(self._config_info) if request.verbose else {}
        info = {key: json.dumps(value) for key, value in sections.items()}
        return api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(conditions=conditions), runtime_handlers=handlers, info=info,
            features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True),
        )

    @grpc_method
    async def RuntimeConfig(self, request: api_pb2.RuntimeConfigRequest, context: Context) -> api_pb2.RuntimeConfigResponse:
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=api_pb2.CGROUPFS)
        )

    @grpc_method
    async def CheckpointContainer(self, request: api_pb2.CheckpointContainerRequest, context: Context) -> api_pb2.CheckpointContainerResponse:
        raise Unimplemented("CheckpointContainer: cripy does not checkpoint containers: it would need CRIU, and "
                            "Debian's CRIU 3.17 fails on this kernel (`criu check`: vdso symtable)")

    @grpc_method
    async def UpdateRuntimeConfig(self, request: api_pb2.UpdateRuntimeConfigRequest, context: Context) -> api_pb2.UpdateRuntimeConfigResponse:
        # kubelet sends the pod CIDR here; cripy's CNI config owns addressing, so there is nothing to change.
        return api_pb2.UpdateRuntimeConfigResponse()
