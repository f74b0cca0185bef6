"""A thin synchronous CRI v1 client: one gRPC channel per endpoint, a deadline on every call, and gRPC failures
turned into one CRIError that names the call, the status code and (for connection failures) the endpoint.

Works against any CRI runtime (cripy, containerd, CRI-O); used by `cripy ctl` and by tests.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

DEFAULT_ENDPOINT = "unix:///run/cripy/cripy.sock"
DEFAULT_TIMEOUT = 10.0
# Pulls of big images take minutes; crictl gives them no deadline by default. A long one keeps a hung
# registry from hanging the client forever.
DEFAULT_PULL_TIMEOUT = 3600.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _DefaultDeadline:
    """Marker: use the client's default deadline (None already means "no deadline")."""


DEFAULT_DEADLINE = _DefaultDeadline()
Deadline = float | None | _DefaultDeadline


class CRIError(Exception):
    """A failed CRI call, formatted like crictl: `<call> failed: rpc error: code = NotFound desc = ...`."""

    def __init__(self, action: str, code: grpc.StatusCode, details: str, endpoint: str,
                 connect_error: str | None = None) -> None:
        self.action = action
        self.code = code
        self.details = details
        self.endpoint = endpoint
        # Set when the runtime could not be reached at all (as opposed to the runtime answering Unavailable).
        self.connect_error = connect_error
        super().__init__(str(self))

    @property
    def code_name(self) -> str:
        """The Go-style status code name crictl prints (NotFound, DeadlineExceeded, ...)."""
        if self.code == grpc.StatusCode.OK:
            return "OK"
        return "".join(part.capitalize() for part in self.code.name.split("_"))

    def __str__(self) -> str:
        message = f"{self.action} failed: rpc error: code = {self.code_name} desc = {self.details}"
        if self.connect_error:
            message += f" (cannot connect to the runtime at {self.endpoint}: {self.connect_error})"
        return message


def normalize_endpoint(endpoint: str) -> str:
    """A gRPC target from the endpoint forms crictl accepts: unix:///path, unix:/path, /path, tcp://host:port."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise ValueError("empty CRI endpoint")
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://"):]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:"):]
    elif endpoint.startswith("/"):
        path = endpoint
    elif endpoint.startswith("tcp://"):
        return endpoint[len("tcp://"):]
    elif "://" in endpoint:
        raise ValueError(f"unsupported CRI endpoint {endpoint!r}: use unix:///path or tcp://host:port")
    else:
        return endpoint
    if not path:
        raise ValueError(f"CRI endpoint {endpoint!r} has no socket path")
    return "unix://" + os.path.abspath(path)


def connect_error(target: str, timeout: float = 2.0) -> str | None:
    """Why a plain connection to the gRPC target fails, or None when something is listening there."""
    address: str | tuple[str, int]
    if target.startswith("unix://"):
        family, address = socket.AF_UNIX, target[len("unix://"):]
    else:
        host, _, port = target.rpartition(":")
        if not port.isdigit():
            return None
        family, address = socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(address)
        except OSError as error:
            return error.strerror or str(error)
    return None


def _open_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ])


def cri_error(method: str, error: grpc.RpcError, endpoint: str) -> CRIError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    reason = connect_error(endpoint) if code == grpc.StatusCode.UNAVAILABLE else None
    return CRIError(method, code, details or "", endpoint, reason)


def _compact_json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=None)


class CRIClient:
    """Sync CRI v1 RuntimeService/ImageService calls with a default per-call deadline (None: no deadline)."""

    def __init__(self, runtime_endpoint: str = DEFAULT_ENDPOINT, image_endpoint: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 debug_log: Callable[[str], None] | None = None) -> None:
        self.runtime_endpoint = normalize_endpoint(runtime_endpoint)
        self.image_endpoint = normalize_endpoint(image_endpoint) if image_endpoint else self.runtime_endpoint
        self.timeout = timeout if timeout else None
        self._debug_log = debug_log
        self._runtime_channel = _open_channel(self.runtime_endpoint)
        if self.image_endpoint == self.runtime_endpoint:
            self._image_channel = self._runtime_channel
        else:
            self._image_channel = _open_channel(self.image_endpoint)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self._runtime_channel)
        self.images = api_pb2_grpc.ImageServiceStub(self._image_channel)

    def close(self) -> None:
        self._runtime_channel.close()
        if self._image_channel is not self._runtime_channel:
            self._image_channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------------

    def _call(self, stub: Any, method: str, request: Message, *, image: bool = False,
              timeout: Deadline = DEFAULT_DEADLINE) -> Any:
        endpoint = self.image_endpoint if image else self.runtime_endpoint
        deadline = self.timeout if isinstance(timeout, _DefaultDeadline) else timeout
        if self._debug_log:
            self._debug_log(f"{method} request: {_compact_json(request)}")
        try:
            response = getattr(stub, method)(request, timeout=deadline)
        except grpc.RpcError as error:
            raise cri_error(method, error, endpoint) from None
        if self._debug_log:
            self._debug_log(f"{method} response: {_compact_json(response)}")
        return response

    def _rt(self, method: str, request: Message, timeout: Deadline = DEFAULT_DEADLINE) -> Any:
        return self._call(self.runtime, method, request, timeout=timeout)

    def _img(self, method: str, request: Message, timeout: Deadline = DEFAULT_DEADLINE) -> Any:
        return self._call(self.images, method, request, image=True, timeout=timeout)

    def _extended(self, extra_seconds: float) -> float | None:
        """The default deadline plus the time the runtime is allowed to spend by the request itself."""
        return None if self.timeout is None else self.timeout + max(0.0, extra_seconds)

    # -- runtime service -------------------------------------------------------------------------------

    def version(self) -> api_pb2.VersionResponse:
        return self._rt("Version", api_pb2.VersionRequest(version="v1"))

    def status(self, verbose: bool = False) -> api_pb2.StatusResponse:
        return self._rt("Status", api_pb2.StatusRequest(verbose=verbose))

    def runtime_config(self) -> api_pb2.RuntimeConfigResponse:
        return self._rt("RuntimeConfig", api_pb2.RuntimeConfigRequest())

    def container_events(self) -> Iterator[api_pb2.ContainerEventResponse]:
        """The runtime's container events as they happen (a stream without a deadline)."""
        try:
            yield from self.runtime.GetContainerEvents(api_pb2.GetEventsRequest())
        except grpc.RpcError as error:
            raise cri_error("GetContainerEvents", error, self.runtime_endpoint) from None

    def run_pod_sandbox(self, config: api_pb2.PodSandboxConfig, runtime_handler: str = "") -> str:
        request = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._rt("RunPodSandbox", request).pod_sandbox_id

    def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        self._rt("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        self._rt("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    def pod_sandbox_status(self, pod_sandbox_id: str, verbose: bool = False) -> api_pb2.PodSandboxStatusResponse:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_sandbox_id, verbose=verbose)
        return self._rt("PodSandboxStatus", request)

    def list_pod_sandbox(self, filter: api_pb2.PodSandboxFilter | None = None) -> list[api_pb2.PodSandbox]:
        return list(self._rt("ListPodSandbox", api_pb2.ListPodSandboxRequest(filter=filter)).items)

    def create_container(self, pod_sandbox_id: str, config: api_pb2.ContainerConfig,
                         sandbox_config: api_pb2.PodSandboxConfig) -> str:
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_sandbox_id, config=config,
                                                 sandbox_config=sandbox_config)
        return self._rt("CreateContainer", request).container_id

    def start_container(self, container_id: str) -> None:
        self._rt("StartContainer", api_pb2.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        request = api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._rt("StopContainer", request, timeout=self._extended(timeout))

    def remove_container(self, container_id: str) -> None:
        self._rt("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, filter: api_pb2.ContainerFilter | None = None) -> list[api_pb2.Container]:
        return list(self._rt("ListContainers", api_pb2.ListContainersRequest(filter=filter)).containers)

    def container_status(self, container_id: str, verbose: bool = False) -> api_pb2.ContainerStatusResponse:
        request = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self._rt("ContainerStatus", request)

    def update_container_resources(self, container_id: str, linux: api_pb2.LinuxContainerResources,
                                   annotations: Mapping[str, str] | None = None) -> None:
        request = api_pb2.UpdateContainerResourcesRequest(container_id=container_id, linux=linux,
                                                          annotations=dict(annotations or {}))
        self._rt("UpdateContainerResources", request)

    def exec_sync(self, container_id: str, cmd: Iterable[str], timeout: int = 0) -> api_pb2.ExecSyncResponse:
        request = api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        # timeout 0 means "no limit" in CRI: the command may run as long as it likes.
        return self._rt("ExecSync", request, timeout=self._extended(timeout) if timeout > 0 else None)

    def exec(self, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
        return self._rt("Exec", request)

    def attach(self, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
        return self._rt("Attach", request)

    def port_forward(self, request: api_pb2.PortForwardRequest) -> api_pb2.PortForwardResponse:
        return self._rt("PortForward", request)

    def list_container_stats(self, filter: api_pb2.ContainerStatsFilter | None = None
                             ) -> list[api_pb2.ContainerStats]:
        return list(self._rt("ListContainerStats", api_pb2.ListContainerStatsRequest(filter=filter)).stats)

    def list_pod_sandbox_stats(self, filter: api_pb2.PodSandboxStatsFilter | None = None
                               ) -> list[api_pb2.PodSandboxStats]:
        request = api_pb2.ListPodSandboxStatsRequest(filter=filter)
        return list(self._rt("ListPodSandboxStats", request).stats)

    # -- image service ---------------------------------------------------------------------------------

    def list_images(self, image: str = "") -> list[api_pb2.Image]:
        image_filter = api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=image)) if image else None
        return list(self._img("ListImages", api_pb2.ListImagesRequest(filter=image_filter)).images)

    def image_status(self, image: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image), verbose=verbose)
        return self._img("ImageStatus", request)

    def pull_image(self, image: str, auth: api_pb2.AuthConfig | None = None,
                   sandbox_config: api_pb2.PodSandboxConfig | None = None,
                   annotations: Mapping[str, str] | None = None,
                   timeout: float | None = DEFAULT_PULL_TIMEOUT) -> str:
        """Pull `image`; returns the image reference the runtime reports (its id or digest)."""
        request = api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=image, annotations=dict(annotations or {})),
            auth=auth, sandbox_config=sandbox_config)
        return self._img("PullImage", request, timeout=timeout).image_ref

    def remove_image(self, image: str) -> None:
        self._img("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image)))

    def image_fs_info(self) -> api_pb2.ImageFsInfoResponse:
        return self._img("ImageFsInfo", api_pb2.ImageFsInfoRequest())
