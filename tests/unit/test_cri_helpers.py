"""Small pure helpers of the CRI edge and the container manager: status codes, filters, image users, stop signals,
log paths, host paths, the image's runtime config."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2
from google.protobuf import unknown_fields

from cripy import errors
from cripy.containers.container import STATE_CREATED, Container
from cripy.containers.context import image_runtime_config, log_path, signal_number
from cripy.containers.model import ContainerRequest, ImageRuntimeConfig, Mount, PodSandboxRequest
from cripy.cri.containers import ContainersServicer, container_status_to_pb, listed_containers
from cripy.cri.errors import STATUS_OF, grpc_method, status_code_for
from cripy.cri.filters import labels_match, wanted_filter
from cripy.cri.images import _user_of
from cripy.cri.pods import PodsServicer
from cripy.images.layerentries import LayerError
from cripy.images.store import Image
from cripy.pods.model import PodSandbox
from cripy.rpc.server import AbortError, Context
from cripy.rpc.wire import StatusCode

# ---- cri/errors.py -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (errors.InvalidArgument, StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, StatusCode.NOT_FOUND),
        (errors.AlreadyExists, StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition, StatusCode.FAILED_PRECONDITION),
        (errors.Unauthenticated, StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied, StatusCode.PERMISSION_DENIED),
        (errors.Unavailable, StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, StatusCode.DEADLINE_EXCEEDED),
        (errors.Unimplemented, StatusCode.UNIMPLEMENTED),
        (errors.Internal, StatusCode.INTERNAL),
        (errors.DataLoss, StatusCode.DATA_LOSS),
    ],
)
def test_status_code_for_each_error_kind(kind: type[errors.CripyError], code: StatusCode) -> None:
    assert status_code_for(kind("x")) == code


def test_every_error_kind_has_a_status_code() -> None:
    kinds = {value for value in vars(errors).values()
             if isinstance(value, type) and issubclass(value, errors.CripyError) and value is not errors.CripyError}
    assert kinds == set(STATUS_OF)


def test_subclasses_map_like_their_kind() -> None:
    assert status_code_for(LayerError("bad tar")) == StatusCode.INVALID_ARGUMENT

    class Gone(errors.NotFound):
        pass

    assert status_code_for(Gone("x")) == StatusCode.NOT_FOUND
    assert status_code_for(errors.CripyError("bare")) == StatusCode.UNKNOWN


class FakeContext(Context):
    """The server's context, remembering how the call was aborted."""

    def __init__(self) -> None:
        super().__init__((), None)

    @property
    def aborted(self) -> tuple[StatusCode, str] | None:
        code = self.code()
        return None if code is None else (code, self.details())


class Servicer:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    @grpc_method
    async def Call(self, request: Any, context: Any) -> str:
        if self.error is not None:
            raise self.error
        return f"reply to {request}"


async def test_grpc_method_passes_replies_through() -> None:
    context = FakeContext()
    assert await Servicer(None).Call("ping", context) == "reply to ping"
    assert context.aborted is None
    assert Servicer.Call.__name__ == "Call"


async def test_grpc_method_turns_domain_errors_into_status_codes() -> None:
    context = FakeContext()
    with pytest.raises(AbortError):
        await Servicer(errors.NotFound("container abc not found")).Call("r", context)
    assert context.aborted == (StatusCode.NOT_FOUND, "container abc not found")


async def test_grpc_method_turns_not_implemented_into_unimplemented() -> None:
    context = FakeContext()
    with pytest.raises(AbortError):
        await Servicer(NotImplementedError()).Call("r", context)
    assert context.aborted is not None
    assert context.aborted[0] == StatusCode.UNIMPLEMENTED
    assert "Call" in context.aborted[1]


async def test_grpc_method_answers_a_bug_as_internal() -> None:
    context = FakeContext()
    with pytest.raises(AbortError):
        await Servicer(KeyError("oops")).Call("r", context)
    assert context.aborted is not None and context.aborted[0] == StatusCode.INTERNAL


# ---- cri/filters.py ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "selector", "matches"),
    [
        ({}, {}, True),
        ({"app": "web"}, {}, True),
        ({"app": "web", "tier": "fe"}, {"app": "web"}, True),
        ({"app": "web", "tier": "fe"}, {"app": "web", "tier": "fe"}, True),
        ({"app": "web"}, {"app": "db"}, False),
        ({"app": "web"}, {"tier": "fe"}, False),
        ({}, {"app": "web"}, False),
        ({"app": ""}, {"app": ""}, True),
        ({}, {"app": ""}, False),  # an absent key is not an empty value
    ],
)
def test_labels_match(labels: dict[str, str], selector: dict[str, str], matches: bool) -> None:
    assert labels_match(labels, selector) is matches


@pytest.mark.parametrize(
    ("request_", "constrains"),
    [
        (api_pb2.ListContainersRequest(), False),
        (api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter()), False),  # the kubelet's relist
        (api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
            state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_CREATED))), True),  # present, though zero
        (api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(label_selector={"app": ""})), True),
        (api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id="ab")), True),
        (api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter()), False),
        (api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(
            state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY))), True),
    ],
)
def test_an_empty_filter_asks_for_everything(request_: Any, constrains: bool) -> None:
    assert (wanted_filter(request_) is not None) is constrains


class _Containers:
    """What ListContainers asks of the container manager: the records' version and the records."""

    def __init__(self, containers: list[Container]) -> None:
        self.version = 1
        self.containers = containers
        self.listed = 0

    async def list(self) -> list[Container]:
        self.listed += 1
        return self.containers


def _container(ctr_id: str) -> Container:
    return Container(id=ctr_id, pod_id="p" * 64, name=f"{ctr_id}_p_ns_uid_0", state=STATE_CREATED, created_at=1,
                     image_id="sha256:" + "cd" * 32, image_name="b", request=ContainerRequest(name=ctr_id, image="b"),
                     log_path="/x.log")


def _listing_servicer(*containers: Container) -> ContainersServicer:
    servicer = ContainersServicer()
    servicer.containers = _Containers(list(containers))  # type: ignore[assignment]
    servicer.listed_containers = listed_containers()
    return servicer


async def test_the_kubelets_relist_is_answered_from_the_kept_list() -> None:
    """The kubelet's relist sends an empty ContainerFilter: while no record changed since the last whole list, it
    gets the answer kept then, at once (before any handler runs), as an unfiltered request does; a filtered list
    asked again likewise."""
    servicer = _listing_servicer(_container("a"), _container("b"))
    manager = servicer.containers
    context = Context((), None)
    relist = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter())
    assert servicer.ListContainers_at_once(relist, context) is None  # nothing kept yet
    first = await servicer.ListContainers(relist, context)
    assert [c.id for c in api_pb2.ListContainersResponse.FromString(first).containers] == ["a", "b"]
    assert servicer.ListContainers_at_once(relist, context) is first
    assert servicer.ListContainers_at_once(api_pb2.ListContainersRequest(), context) is first
    assert manager.listed == 1  # type: ignore[attr-defined]
    manager.version += 1  # type: ignore[attr-defined]
    assert servicer.ListContainers_at_once(relist, context) is None
    only_b = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(id="b"))
    assert servicer.ListContainers_at_once(only_b, context) is None
    answer = await servicer.ListContainers(only_b, context)
    assert [c.id for c in api_pb2.ListContainersResponse.FromString(answer).containers] == ["b"]
    assert servicer.ListContainers_at_once(only_b, context) is answer  # a filtered list asked again
    assert servicer.ListContainers_at_once(relist, context) is None  # not the whole list: none was made since


# ---- cri/images.py::_user_of ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (None, "")),
        ("0", (0, "")),
        ("1000", (1000, "")),
        ("1000:2000", (1000, "")),
        ("app", (None, "app")),
        ("app:staff", (None, "app")),
        (":2000", (None, "")),
    ],
)
def test_user_of(user: str, expected: tuple[int | None, str]) -> None:
    assert _user_of(user) == expected


# ---- cri/containers.py: ContainerStatus ------------------------------------------------------------------------------


def test_container_status_reports_an_image_volume_with_the_id_it_mounted() -> None:
    image_id = "sha256:" + "ab" * 32
    request = ContainerRequest(name="a", image="b", mounts=[
        Mount("/srv", "/host/srv"),
        Mount("/v", "", readonly=True, image="example.com/data:1", image_sub_path="etc", image_id=image_id),
    ])
    container = Container(id="c" * 64, pod_id="p" * 64, name="a_p_ns_uid_0", state=STATE_CREATED, created_at=1,
                          image_id="sha256:" + "cd" * 32, image_name="b", request=request, log_path="/x.log")
    wire = container_status_to_pb(container).SerializeToString()
    # Read back as a client with newer CRI bindings would: ImageSpec.image_ref is field 20 of the ImageSpec.
    host, volume = api_pb2.ContainerStatus.FromString(wire).mounts
    assert (host.host_path, host.HasField("image")) == ("/host/srv", False)
    assert (volume.container_path, volume.host_path, volume.readonly) == ("/v", "", True)
    assert (volume.image.image, volume.image.user_specified_image) == (image_id, "example.com/data:1")
    assert volume.image_sub_path == "etc"
    fields = [(f.field_number, f.wire_type, f.data) for f in unknown_fields.UnknownFieldSet(volume.image)]
    assert fields == [(20, 2, image_id.encode())]


# ---- containers/manager.py helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("", signal.SIGTERM),
        ("SIGTERM", signal.SIGTERM),
        ("SIGINT", signal.SIGINT),
        ("sigquit", signal.SIGQUIT),
        ("QUIT", signal.SIGQUIT),
        ("usr1", signal.SIGUSR1),
        ("SIGKILL", signal.SIGKILL),
        ("9", 9),
        ("15", 15),
        ("SIGWINCH", signal.SIGWINCH),
        ("SIGNOPE", signal.SIGTERM),  # unknown: logged, SIGTERM used
        ("-1", signal.SIGTERM),
    ],
)
def test_signal_number(name: str, number: int) -> None:
    assert signal_number(name) == number


@pytest.mark.parametrize(("name", "offset"), [("SIGRTMIN+3", 3), ("RTMIN+3", 3)])
def test_signal_number_real_time(name: str, offset: int) -> None:
    assert signal_number(name) == signal.SIGRTMIN + offset


@pytest.mark.parametrize("name", ["0", "999"])
def test_signal_number_refuses_numbers_that_are_not_signals(name: str) -> None:
    assert signal_number(name) == signal.SIGTERM


def pod(tmp_path: Path, log_directory: str = "") -> PodSandbox:
    request = PodSandboxRequest(name="web", uid="u1", namespace="default", log_directory=log_directory)
    return PodSandbox(id="p1", name="web_default_u1_0", state="ready", created_at=0, request=request,
                      runtime_handler="runc", cgroup_parent="/cripy/p1", run_dir=tmp_path / "pods" / "p1")


def test_log_path_joins_the_pod_log_directory(tmp_path: Path) -> None:
    request = ContainerRequest(name="app", image="busybox", attempt=1, log_path="app/1.log")
    assert log_path(pod(tmp_path, "/var/log/pods/default_web_u1"), request) == "/var/log/pods/default_web_u1/app/1.log"


@pytest.mark.parametrize(("asked", "log_directory"), [("", ""), ("", "/var/log/pods/x"), ("relative.log", "")])
def test_log_path_defaults_to_the_pod_run_dir(tmp_path: Path, asked: str, log_directory: str) -> None:
    request = ContainerRequest(name="app", image="busybox", attempt=3, log_path=asked)
    the_pod = pod(tmp_path, log_directory)
    assert log_path(the_pod, request) == str(the_pod.run_dir / "logs" / "app_3.log")


def image_with(config: dict) -> Image:
    return Image(id="sha256:x", repo_tags=[], repo_digests=[], size=0, manifest_digest="sha256:m",
                 config=config, chain_ids=[])


def test_image_runtime_config_from_the_image_config() -> None:
    config = {"config": {
        "User": "app:app",
        "Env": ["PATH=/bin", "A=1"],
        "Entrypoint": ["/entry"],
        "Cmd": ["run", "--fast"],
        "WorkingDir": "/srv",
        "Volumes": {"/var/lib/data": {}, "/cache": {}},
        "StopSignal": "SIGQUIT",
        "Labels": {"maintainer": "me"},
    }}
    assert image_runtime_config(image_with(config)) == ImageRuntimeConfig(
        user="app:app", env=["PATH=/bin", "A=1"], entrypoint=["/entry"], cmd=["run", "--fast"], working_dir="/srv",
        volumes=["/cache", "/var/lib/data"], stop_signal="SIGQUIT", labels={"maintainer": "me"},
    )


@pytest.mark.parametrize(
    "config",
    [{}, {"config": None}, {"config": {}},
     {"config": {"User": None, "Env": None, "Entrypoint": None, "Cmd": None, "WorkingDir": None,
                 "Volumes": None, "StopSignal": None, "Labels": None}}],
)
def test_image_runtime_config_tolerates_absent_and_null_fields(config: dict) -> None:
    assert image_runtime_config(image_with(config)) == ImageRuntimeConfig()


# ---- the status calls, answered at once -----------------------------------------------------------------------------


class _Records:
    """What the status calls ask of a manager: a record by id, now (lookup) or awaited (get), as the managers do."""

    def __init__(self, **records: Any) -> None:
        self.records = records

    def lookup(self, ident: str) -> Any:
        if not ident:
            raise errors.InvalidArgument("the id is empty")
        return self.records.get(ident)

    async def get(self, ident: str) -> Any:
        record = self.lookup(ident)
        if record is None:
            raise errors.NotFound(f"{ident!r} not found")
        return record


async def test_statuses_are_answered_at_once_as_their_handlers_answer(tmp_path: Path) -> None:
    """A status is a record in memory: answered at once, the very response the handler gives. A verbose status and
    a record that is not there are left to the handler, which reads the cgroup or reports NotFound."""
    context = Context((), None)
    pods = PodsServicer()
    pods.pods = _Records(p1=pod(tmp_path))  # type: ignore[assignment]
    asked = api_pb2.PodSandboxStatusRequest(pod_sandbox_id="p1")
    assert pods.PodSandboxStatus_at_once(asked, context) == await pods.PodSandboxStatus(asked, context)
    assert pods.PodSandboxStatus_at_once(asked, context).status.id == "p1"
    assert pods.PodSandboxStatus_at_once(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="p1", verbose=True),
                                         context) is None
    assert pods.PodSandboxStatus_at_once(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="gone"), context) is None

    containers = ContainersServicer()
    containers.containers = _Records(a=_container("a"))  # type: ignore[assignment]
    asked_ctr = api_pb2.ContainerStatusRequest(container_id="a")
    assert containers.ContainerStatus_at_once(asked_ctr, context) == await containers.ContainerStatus(asked_ctr,
                                                                                                    context)
    assert containers.ContainerStatus_at_once(asked_ctr, context).status.id == "a"
    assert containers.ContainerStatus_at_once(api_pb2.ContainerStatusRequest(container_id="a", verbose=True),
                                              context) is None
    assert containers.ContainerStatus_at_once(api_pb2.ContainerStatusRequest(container_id="b"), context) is None
    with pytest.raises(errors.InvalidArgument):  # the server then gives the call to the handler, which reports it
        containers.ContainerStatus_at_once(api_pb2.ContainerStatusRequest(), context)
