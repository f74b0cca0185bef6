"""CRI pod sandbox calls: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox,
UpdatePodSandboxResources."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable

from cri_api.v1 import api_pb2

from cripy.cri.convert import NAMESPACE_MODE, pod_request_from_pb, resources_from_pb
from cripy.cri.errors import answers_at_once, grpc_method
from cripy.cri.filters import filter_key, labels_match, wanted_filter
from cripy.cri.kept import KeptList
from cripy.errors import CripyError
from cripy.linux import cgroups, cgroupstats
from cripy.pods.manager import PodManager
from cripy.pods.model import STATE_NOTREADY, STATE_READY, PodSandbox
from cripy.rpc.server import Context

_NAMESPACE_MODE = {mode: number for number, mode in NAMESPACE_MODE.items()}  # back to the CRI enum


class PodsServicer:
    """Mixed into RuntimeService; `self.pods` is the PodManager."""

    pods: PodManager
    listed_pods: KeptList[PodSandbox]

    @grpc_method
    async def RunPodSandbox(self, request: api_pb2.RunPodSandboxRequest, context: Context) -> api_pb2.RunPodSandboxResponse:
        pod_id = await self.pods.run(pod_request_from_pb(request.config, request.runtime_handler))
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    @grpc_method
    async def StopPodSandbox(self, request: api_pb2.StopPodSandboxRequest, context: Context) -> api_pb2.StopPodSandboxResponse:
        await self.pods.stop(request.pod_sandbox_id)
        return api_pb2.StopPodSandboxResponse()

    @grpc_method
    async def RemovePodSandbox(self, request: api_pb2.RemovePodSandboxRequest, context: Context) -> api_pb2.RemovePodSandboxResponse:
        await self.pods.remove(request.pod_sandbox_id)
        return api_pb2.RemovePodSandboxResponse()

    @answers_at_once
    def PodSandboxStatus_at_once(self, request: api_pb2.PodSandboxStatusRequest,
                                 context: Context) -> api_pb2.PodSandboxStatusResponse | None:
        """A pod's status is its record, in memory: the kubelet asks it of every pod it syncs. The verbose status
        reads the pod's cgroup, and a pod that is not there is an error to report: both are the handler's."""
        pod = None if request.verbose else self.pods.lookup(request.pod_sandbox_id)
        return None if pod is None else api_pb2.PodSandboxStatusResponse(status=pod_status_to_pb(pod))

    @grpc_method
    async def PodSandboxStatus(self, request: api_pb2.PodSandboxStatusRequest, context: Context) -> api_pb2.PodSandboxStatusResponse:
        pod = await self.pods.get(request.pod_sandbox_id)
        info = {"info": json.dumps(await asyncio.to_thread(_verbose, pod))} if request.verbose else {}
        return api_pb2.PodSandboxStatusResponse(status=pod_status_to_pb(pod), info=info)

    @grpc_method
    async def UpdatePodSandboxResources(self, request: api_pb2.UpdatePodSandboxResourcesRequest, context: Context) -> api_pb2.UpdatePodSandboxResourcesResponse:
        where = f"pod sandbox {request.pod_sandbox_id}"
        overhead = (resources_from_pb(request.overhead, f"{where}: overhead")
                    if request.HasField("overhead") else None)
        resources = (resources_from_pb(request.resources, f"{where}: resources")
                     if request.HasField("resources") else None)
        await self.pods.update_resources(request.pod_sandbox_id, overhead=overhead, resources=resources)
        return api_pb2.UpdatePodSandboxResourcesResponse()

    @answers_at_once
    def ListPodSandbox_at_once(self, request: api_pb2.ListPodSandboxRequest, context: Context) -> bytes | None:
        """A list asked again while no pod changed: the answer given then (the kubelet's relist, its
        housekeeping's list by state, its pods' statuses by pod)."""
        return self.listed_pods.kept(filter_key(wanted_filter(request)), self.pods.version)

    @grpc_method
    async def ListPodSandbox(self, request: api_pb2.ListPodSandboxRequest, context: Context) -> bytes:
        wanted = wanted_filter(request)
        version = self.pods.version
        matches = None if wanted is None else _matcher(wanted)
        listed = [
            pod for pod in await self.pods.list()
            # a pod still being created is not listed until it is
            if pod.state in (STATE_READY, STATE_NOTREADY) and (matches is None or matches(pod))
        ]
        answer = self.listed_pods.answer(listed, complete=wanted is None)
        self.listed_pods.keep(filter_key(wanted), answer, version)
        return answer


def listed_pods() -> KeptList[PodSandbox]:
    """ListPodSandbox's kept entries: a pod's entry changes only with its state (the rest is fixed at creation)."""
    return KeptList(lambda pod: (pod.id, pod.state), _encoded_entry)


def _encoded_entry(pod: PodSandbox) -> bytes:
    return api_pb2.ListPodSandboxResponse(items=[api_pb2.PodSandbox(
        id=pod.id,
        metadata=_metadata(pod),
        state=_state(pod),
        created_at=pod.created_at,
        labels=pod.request.labels,
        annotations=pod.request.annotations,
        runtime_handler=pod.runtime_handler,
    )]).SerializeToString()


def _matcher(wanted: api_pb2.PodSandboxFilter) -> Callable[[PodSandbox], bool]:
    """The filter as a test of a pod, its fields read from the message once, not once per pod."""
    id_prefix, selector = wanted.id, dict(wanted.label_selector)
    state = wanted.state.state if wanted.HasField("state") else None

    def matches(pod: PodSandbox) -> bool:
        return (pod.id.startswith(id_prefix) and (state is None or _state(pod) == state)
                and (not selector or labels_match(pod.request.labels, selector)))

    return matches


def _state(pod: PodSandbox) -> api_pb2.PodSandboxState.ValueType:
    return api_pb2.SANDBOX_READY if pod.state == STATE_READY else api_pb2.SANDBOX_NOTREADY


def _metadata(pod: PodSandbox) -> api_pb2.PodSandboxMetadata:
    r = pod.request
    return api_pb2.PodSandboxMetadata(name=r.name, uid=r.uid, namespace=r.namespace, attempt=r.attempt)


def pod_status_to_pb(pod: PodSandbox) -> api_pb2.PodSandboxStatus:
    options = pod.request.security.namespace_options
    network = api_pb2.PodSandboxNetworkStatus()
    if pod.ips and pod.state == STATE_READY:
        network.ip = pod.ips[0]
        network.additional_ips.extend(api_pb2.PodIP(ip=ip) for ip in pod.ips[1:])
    return api_pb2.PodSandboxStatus(
        id=pod.id,
        metadata=_metadata(pod),
        state=_state(pod),
        created_at=pod.created_at,
        network=network,
        linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(options=api_pb2.NamespaceOption(
            network=_NAMESPACE_MODE[options.network],
            pid=_NAMESPACE_MODE[options.pid],
            ipc=_NAMESPACE_MODE[options.ipc],
            userns_options=_userns_options(pod),
        ))),
        labels=pod.request.labels,
        annotations=pod.request.annotations,
        runtime_handler=pod.runtime_handler,
    )


def _userns_options(pod: PodSandbox) -> api_pb2.UserNamespace:
    userns = pod.userns
    if userns is None:
        return api_pb2.UserNamespace(mode=api_pb2.NODE)
    return api_pb2.UserNamespace(
        mode=api_pb2.POD,
        uids=[api_pb2.IDMapping(host_id=r.host_id, container_id=r.container_id, length=r.length) for r in userns.uids],
        gids=[api_pb2.IDMapping(host_id=r.host_id, container_id=r.container_id, length=r.length) for r in userns.gids],
    )


def _verbose(pod: PodSandbox) -> dict:
    """Blocking (reads the pod's cgroup): run it in a worker thread."""
    return {
        "id": pod.id,
        "name": pod.name,
        "runtimeHandler": pod.runtime_handler,
        "cgroupParent": pod.cgroup_parent,
        "runDir": str(pod.run_dir),
        "namespaces": {kind: str(pod.namespace_path(kind)) for kind in pod.pinned_kinds},
        "infraPid": pod.infra_pid,
        "ips": pod.ips,
        "hostname": pod.hostname,
        "portMappings": [vars(m) for m in pod.request.port_mappings],
        "resources": {
            "overhead": _asdict(pod.request.overhead),
            "resources": _asdict(pod.request.resources),
            "podCgroupLimits": _pod_cgroup_limits(pod),
        },
    }


def _asdict(value: object) -> dict | None:
    return None if value is None else dataclasses.asdict(value)  # type: ignore[call-overload]


def _pod_cgroup_limits(pod: PodSandbox) -> dict | None:
    """What the pod's own cgroup (the kubelet's) holds, to set beside what UpdatePodSandboxResources recorded;
    None when the pod has no cgroup of its own or it cannot be read."""
    parent = pod.request.cgroup_parent
    try:
        if not parent or not cgroups.exists(parent):
            return None
        return dataclasses.asdict(cgroupstats.read_limits(parent))
    except (OSError, CripyError):
        return None
