"""CRI container calls: create/start/stop/remove, status and list, exec-sync, resources, logs, events; checkpoint
answers Unimplemented with its reason."""

from __future__ import annotations

import json
from typing import AsyncIterator, Callable

from cri_api.v1 import api_pb2

from cripy.containers.container import STATE_CREATED, STATE_CREATING, STATE_EXITED, STATE_RUNNING, Container
from cripy.containers.events import ContainerEvent, EventType
from cripy.containers.model import Mount
from cripy.containers.manager import ContainerManager
from cripy.containers.spec import spec_resources
from cripy.cri.convert import PROPAGATION, container_request_from_pb, resources_from_pb
from cripy.cri import validate
from cripy.cri.errors import answers_at_once, grpc_method, unimplemented
from cripy.cri.filters import filter_key, labels_match, wanted_filter
from cripy.cri.kept import KeptList
from cripy.cri.pods import pod_status_to_pb
from cripy.errors import InvalidArgument
from cripy.pods.manager import PodManager
from cripy.rpc.server import Context

_STATE = {
    STATE_CREATING: api_pb2.CONTAINER_UNKNOWN,
    STATE_CREATED: api_pb2.CONTAINER_CREATED,
    STATE_RUNNING: api_pb2.CONTAINER_RUNNING,
    STATE_EXITED: api_pb2.CONTAINER_EXITED,
}
_EVENT = {
    EventType.CREATED: api_pb2.CONTAINER_CREATED_EVENT,
    EventType.STARTED: api_pb2.CONTAINER_STARTED_EVENT,
    EventType.STOPPED: api_pb2.CONTAINER_STOPPED_EVENT,
    EventType.DELETED: api_pb2.CONTAINER_DELETED_EVENT,
}
_PROPAGATION = {name: number for number, name in PROPAGATION.items()}  # back to the CRI enum


class ContainersServicer:
    """Mixed into RuntimeService; `self.pods` and `self.containers` are the managers."""

    pods: PodManager
    # Checkpointing goes through CRIU (runc checkpoint), and CRIU cannot start on the kernel cripy is built and
    # tested on, so cripy offers no checkpoint it could not test.
    CheckpointContainer = unimplemented(
        "CheckpointContainer", "checkpointing needs CRIU, which fails on the kernel cripy is tested on (`criu check`:"
        " \"vdso: Failed to fill self vdso symtable\"), so cripy has no checkpoint support")
    containers: ContainerManager
    listed_containers: KeptList[Container]

    @grpc_method
    async def CreateContainer(self, request: api_pb2.CreateContainerRequest, context: Context) -> api_pb2.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("CreateContainer needs a pod_sandbox_id")
        domain = container_request_from_pb(request.config, request.sandbox_config)
        ctr_id = await self.containers.create(request.pod_sandbox_id, domain)
        return api_pb2.CreateContainerResponse(container_id=ctr_id)

    @grpc_method
    async def StartContainer(self, request: api_pb2.StartContainerRequest, context: Context) -> api_pb2.StartContainerResponse:
        await self.containers.start(request.container_id)
        return api_pb2.StartContainerResponse()

    @grpc_method
    async def StopContainer(self, request: api_pb2.StopContainerRequest, context: Context) -> api_pb2.StopContainerResponse:
        await self.containers.stop(request.container_id, int(request.timeout))
        return api_pb2.StopContainerResponse()

    @grpc_method
    async def RemoveContainer(self, request: api_pb2.RemoveContainerRequest, context: Context) -> api_pb2.RemoveContainerResponse:
        await self.containers.remove(request.container_id)
        return api_pb2.RemoveContainerResponse()

    @answers_at_once
    def ListContainers_at_once(self, request: api_pb2.ListContainersRequest, context: Context) -> bytes | None:
        """A list asked again while no container changed: the answer given then (the kubelet's relist, its
        housekeeping's list by state, its pods' statuses by pod)."""
        return self.listed_containers.kept(filter_key(wanted_filter(request)), self.containers.version)

    @grpc_method
    async def ListContainers(self, request: api_pb2.ListContainersRequest, context: Context) -> bytes:
        wanted = wanted_filter(request)
        version = self.containers.version
        matches = None if wanted is None else _matcher(wanted)
        listed = [
            container for container in await self.containers.list()
            if container.state != STATE_CREATING and (matches is None or matches(container))
        ]
        answer = self.listed_containers.answer(listed, complete=wanted is None)
        self.listed_containers.keep(filter_key(wanted), answer, version)
        return answer

    @answers_at_once
    def ContainerStatus_at_once(self, request: api_pb2.ContainerStatusRequest,
                                context: Context) -> api_pb2.ContainerStatusResponse | None:
        """A container's status is its record, in memory: the kubelet asks it of every container it syncs. The
        verbose status and a container that is not there (an error to report) are the handler's."""
        container = None if request.verbose else self.containers.lookup(request.container_id)
        return None if container is None else api_pb2.ContainerStatusResponse(
            status=container_status_to_pb(container))

    @grpc_method
    async def ContainerStatus(self, request: api_pb2.ContainerStatusRequest, context: Context) -> api_pb2.ContainerStatusResponse:
        container = await self.containers.get(request.container_id)
        info = {"info": json.dumps(_verbose(container))} if request.verbose else {}
        return api_pb2.ContainerStatusResponse(status=container_status_to_pb(container), info=info)

    @grpc_method
    async def UpdateContainerResources(self, request: api_pb2.UpdateContainerResourcesRequest, context: Context) -> api_pb2.UpdateContainerResourcesResponse:
        if not request.HasField("linux"):
            raise InvalidArgument("UpdateContainerResources needs linux resources")
        await self.containers.update_resources(request.container_id, resources_from_pb(request.linux))
        return api_pb2.UpdateContainerResourcesResponse()

    @grpc_method
    async def ReopenContainerLog(self, request: api_pb2.ReopenContainerLogRequest, context: Context) -> api_pb2.ReopenContainerLogResponse:
        await self.containers.reopen_log(request.container_id)
        return api_pb2.ReopenContainerLogResponse()

    @grpc_method
    async def ExecSync(self, request: api_pb2.ExecSyncRequest, context: Context) -> api_pb2.ExecSyncResponse:
        validate.exec_command(request.cmd, f"ExecSync in container {request.container_id}")
        result = await self.containers.exec_sync(request.container_id, list(request.cmd), int(request.timeout))
        return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    async def GetContainerEvents(self, request: api_pb2.GetEventsRequest, context: Context) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        queue = self.containers.events.subscribe()
        try:
            while True:
                event = await queue.get()
                yield await self._event_to_pb(event)
        finally:
            self.containers.events.unsubscribe(queue)

    async def _event_to_pb(self, event: ContainerEvent) -> api_pb2.ContainerEventResponse:
        response = api_pb2.ContainerEventResponse(
            container_id=event.container_id,
            container_event_type=_EVENT[event.type],
            created_at=event.created_at,
        )
        pod = await self.pods.find(event.pod_id)
        if pod is not None:
            response.pod_sandbox_status.CopyFrom(pod_status_to_pb(pod))
            for container in await self.containers.list(pod.id):
                if container.state != STATE_CREATING:
                    response.containers_statuses.append(container_status_to_pb(container))
        return response


def listed_containers() -> KeptList[Container]:
    """ListContainers' kept entries: a container's entry changes only with its state (the rest is fixed at
    creation)."""
    return KeptList(lambda container: (container.id, container.state), _encoded_entry)


def _encoded_entry(container: Container) -> bytes:
    return api_pb2.ListContainersResponse(containers=[_list_entry(container)]).SerializeToString()


def _list_entry(container: Container) -> api_pb2.Container:
    return api_pb2.Container(
        id=container.id,
        pod_sandbox_id=container.pod_id,
        metadata=_metadata(container),
        image=api_pb2.ImageSpec(image=container.image_name),
        image_ref=container.image_id,
        image_id=container.image_id,
        state=_STATE[container.state],
        created_at=container.created_at,
        labels=container.request.labels,
        annotations=container.request.annotations,
    )


def _matcher(wanted: api_pb2.ContainerFilter) -> Callable[[Container], bool]:
    """The filter as a test of a container, its fields read from the message once, not once per container."""
    id_prefix, pod_prefix, selector = wanted.id, wanted.pod_sandbox_id, dict(wanted.label_selector)
    state = wanted.state.state if wanted.HasField("state") else None

    def matches(container: Container) -> bool:
        return (container.id.startswith(id_prefix) and container.pod_id.startswith(pod_prefix)
                and (state is None or _STATE[container.state] == state)
                and (not selector or labels_match(container.request.labels, selector)))

    return matches


def _metadata(container: Container) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=container.request.name, attempt=container.request.attempt)


def container_status_to_pb(container: Container) -> api_pb2.ContainerStatus:
    request = container.request
    status = api_pb2.ContainerStatus(
        id=container.id,
        metadata=_metadata(container),
        state=_STATE[container.state],
        created_at=container.created_at,
        started_at=container.started_at,
        finished_at=container.finished_at,
        exit_code=container.exit_code,
        image=api_pb2.ImageSpec(image=container.image_name),
        image_ref=container.image_id,
        image_id=container.image_id,
        reason=container.reason,
        message=container.message,
        labels=request.labels,
        annotations=request.annotations,
        mounts=[_mount_to_pb(m) for m in request.mounts],
        log_path=container.log_path,
    )
    user = container.process_user
    if user is not None:
        status.user.linux.CopyFrom(api_pb2.LinuxContainerUser(
            uid=user.uid, gid=user.gid, supplemental_groups=user.additional_gids))
    resources = spec_resources(request.resources)
    linux = status.resources.linux
    linux.cpu_period = resources.get("cpu", {}).get("period", 0)
    linux.cpu_quota = resources.get("cpu", {}).get("quota", 0)
    linux.cpu_shares = resources.get("cpu", {}).get("shares", 0)
    linux.cpuset_cpus = resources.get("cpu", {}).get("cpus", "")
    linux.cpuset_mems = resources.get("cpu", {}).get("mems", "")
    linux.memory_limit_in_bytes = resources.get("memory", {}).get("limit", 0)
    linux.oom_score_adj = request.resources.oom_score_adj
    return status


def _mount_to_pb(mount: Mount) -> api_pb2.Mount:
    message = api_pb2.Mount(container_path=mount.container_path, host_path=mount.host_path, readonly=mount.readonly,
                            recursive_read_only=mount.recursive_read_only,
                            propagation=_PROPAGATION.get(mount.propagation, api_pb2.PROPAGATION_PRIVATE))
    if mount.image:
        message.image.CopyFrom(_image_volume_spec(mount.image, mount.image_id))
        message.image_sub_path = mount.image_sub_path
    return message


def _image_volume_spec(requested: str, image_id: str) -> api_pb2.ImageSpec:
    """The image an image volume mounts, as ContainerStatus reports it: `image` is the id (what the kubelet's
    image garbage collection matches against its image list, as CRI-O reports it), `user_specified_image` the
    reference asked for, and `image_ref` (KEP-5365) the id again. image_ref, field 20, is newer than the CRI
    bindings cripy is built with, so it is written in its wire form: a length-delimited field 20."""
    spec = api_pb2.ImageSpec(image=image_id or requested, user_specified_image=requested)
    if image_id:
        value = image_id.encode()
        spec.MergeFromString(_IMAGE_REF_KEY + _varint(len(value)) + value)
    return spec


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_IMAGE_REF_KEY = _varint((20 << 3) | 2)  # field 20, wire type 2 (length-delimited)


def _verbose(container: Container) -> dict:
    return {
        "id": container.id,
        "name": container.name,
        "podSandboxId": container.pod_id,
        "pid": container.pid,
        "conmonPid": container.conmon_pid,
        "cgroupPath": container.cgroup_path,
        "stopSignal": container.stop_signal,
        "imageName": container.image_name,
    }

