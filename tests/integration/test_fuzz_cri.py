"""Property-based fuzzing of every CRI call: each request starts from one the kubelet would send (a real pod, a
running container, the test image) and has one to three of its fields, anywhere in the message, replaced by hostile
values: strings with NUL bytes, '..', shell and path tricks, paths at a canary directory, up to hundreds of kB;
numbers at their limits; enums out of range; lists and maps of such values.

Whatever comes in, the daemon answers with a status that is the client's (never INTERNAL or UNKNOWN), stays up,
writes nothing outside its root, run root and the pod's log directory (the canary stays empty), and its RSS stays
bounded. Bounded for CI: a fixed number of examples per call (FUZZ_EXAMPLES, default 25), no shrinking budget
beyond hypothesis' default, no example database.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.podlib import BUSYBOX, PodEnv, short_tempdir, write_test_images
from tests.integration.conftest_leaks import session_cgroup_parent

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CALL_TIMEOUT = 30.0
# Measured: +10 MiB over the 698 cases (49 -> 59 MiB) with the malloc arenas capped, +18 before; the hostile run
# that filed issue 10 saw +41 MiB that stayed.
RSS_GROWTH_LIMIT = 32 * 1024 * 1024
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# Slow by nature when a mutated value happens to be valid: bounded separately.
SLOW_CALLS = {"RunPodSandbox": 12, "PullImage": 10, "CreateContainer": 20}
SKIPPED = {"GetContainerEvents"}  # a stream that never ends: fuzzed by opening and cancelling it below
STATS: dict[str, int] = {"cases": 0}


class Target:
    """The fuzzed daemon, with a real pod and running container that requests are based on."""

    def __init__(self, env: PodEnv) -> None:
        self.env = env
        self.canary = env.workdir / "canary"
        self.canary.mkdir()
        self.pod_id, self.pod_config = env.run_pod("fuzz-base")
        self.ctr_id = env.run(self.pod_id, self.pod_config, "base", ["sleep", "3600"])
        self.log_dir = Path(self.pod_config.log_directory)

    def ensure_base(self) -> None:
        """A mutated Stop/Remove may have taken the base objects: make them again."""
        pods = {p.id: p for p in self.env.list_pods()}
        pod = pods.get(self.pod_id)
        if pod is None or pod.state != api_pb2.SANDBOX_READY:
            self.pod_id, self.pod_config = self.env.run_pod(f"fuzz-base-{secrets.token_hex(3)}")
            self.ctr_id = ""
        if not self.ctr_id or self.env.status(self.ctr_id).state != api_pb2.CONTAINER_RUNNING:
            self.ctr_id = self.env.run(self.pod_id, self.pod_config, f"base-{secrets.token_hex(3)}",
                                       ["sleep", "3600"])

    def base(self, method: str) -> Message:
        """A request as a well-behaved client would send it."""
        e, pod, ctr = self.env, self.pod_id, self.ctr_id
        pb = api_pb2
        unique = secrets.token_hex(4)
        bases: dict[str, Message] = {
            "RunPodSandbox": pb.RunPodSandboxRequest(config=e.pod_config(f"fuzz-{unique}")),
            "StopPodSandbox": pb.StopPodSandboxRequest(pod_sandbox_id=secrets.token_hex(32)),
            "RemovePodSandbox": pb.RemovePodSandboxRequest(pod_sandbox_id=secrets.token_hex(32)),
            "PodSandboxStatus": pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True),
            "ListPodSandbox": pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=pod[:12])),
            "CreateContainer": pb.CreateContainerRequest(
                pod_sandbox_id=pod, sandbox_config=self.pod_config,
                config=e.container_config(f"fuzz-{unique}", ["sleep", "1"])),
            "StartContainer": pb.StartContainerRequest(container_id=secrets.token_hex(32)),
            "StopContainer": pb.StopContainerRequest(container_id=secrets.token_hex(32), timeout=1),
            "RemoveContainer": pb.RemoveContainerRequest(container_id=secrets.token_hex(32)),
            "ListContainers": pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)),
            "ContainerStatus": pb.ContainerStatusRequest(container_id=ctr, verbose=True),
            "UpdateContainerResources": pb.UpdateContainerResourcesRequest(
                container_id=ctr, linux=pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20)),
            "ReopenContainerLog": pb.ReopenContainerLogRequest(container_id=ctr),
            "ExecSync": pb.ExecSyncRequest(container_id=ctr, cmd=["true"], timeout=10),
            "Exec": pb.ExecRequest(container_id=ctr, cmd=["true"], stdout=True),
            "Attach": pb.AttachRequest(container_id=ctr, stdout=True),
            "PortForward": pb.PortForwardRequest(pod_sandbox_id=pod, port=[80]),
            "ContainerStats": pb.ContainerStatsRequest(container_id=ctr),
            "ListContainerStats": pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod)),
            "PodSandboxStats": pb.PodSandboxStatsRequest(pod_sandbox_id=pod),
            "ListPodSandboxStats": pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=pod)),
            "UpdateRuntimeConfig": pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(
                network_config=pb.NetworkConfig(pod_cidr="10.0.0.0/24"))),
            "Status": pb.StatusRequest(verbose=True),
            "Version": pb.VersionRequest(version="v1"),
            "CheckpointContainer": pb.CheckpointContainerRequest(container_id=ctr, location="/nonexistent"),
            "ListMetricDescriptors": pb.ListMetricDescriptorsRequest(),
            "ListPodSandboxMetrics": pb.ListPodSandboxMetricsRequest(),
            "RuntimeConfig": pb.RuntimeConfigRequest(),
            "ListImages": pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=BUSYBOX))),
            "ImageStatus": pb.ImageStatusRequest(image=pb.ImageSpec(image=BUSYBOX), verbose=True),
            "PullImage": pb.PullImageRequest(image=pb.ImageSpec(image="127.0.0.1:1/fuzz/none:latest")),
            "RemoveImage": pb.RemoveImageRequest(image=pb.ImageSpec(image="localhost/fuzz/absent:latest")),
            "ImageFsInfo": pb.ImageFsInfoRequest(),
        }
        if method in bases:
            return bases[method]
        # A call newer than this list: its empty request is the base.
        for service in ("RuntimeService", "ImageService"):
            methods = api_pb2.DESCRIPTOR.services_by_name[service].methods_by_name
            if method in methods:
                return methods[method].input_type._concrete_class()
        raise KeyError(method)


# ---------------------------------------------------------------------------------------------------- values


def hostile_strings(canary: Path, log_dir: Path) -> st.SearchStrategy[str]:
    relative_canary = os.path.relpath(canary / "x", log_dir)
    tricks = ["", ".", "..", "../../../..", "/", "/etc/passwd", "/proc/self/mem", "/dev/zero", "a\0b", "\0",
              "\n", "a\nb", " ", "${HOME}", "$(touch /tmp/fuzzpwn)", "`id`", "'\"\\", "\u202e\u0000", "-rf",
              "--help", "%s%n", "*", "localhost/../../x", "sha256:" + "0" * 64, str(canary / "x"),
              relative_canary, "../" + relative_canary, str(canary) + "/../canary/y", "0-1,abc", "-1",
              "18446744073709551616", "unix:///etc/x", "http://169.254.169.254/", "A" * 64 + ":" + "b" * 64]
    return st.one_of(
        st.sampled_from(tricks),
        st.text(max_size=40),
        st.integers(min_value=200, max_value=300_000).map(lambda n: "x" * n),
        st.integers(min_value=1, max_value=3000).map(lambda n: "é\0" * n),
    )


INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar_values(field: FieldDescriptor, strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return strings
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(min_value=-3, max_value=40)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    low, high = INT_LIMITS[field.type]
    edges = sorted({low, high, 0, 1, -1 if low < 0 else 0, 2, 1000, 1_000_000, high // 2, low // 2})
    return st.one_of(st.sampled_from(edges), st.integers(min_value=low, max_value=high))


# ---------------------------------------------------------------------------------------------------- mutation


def leaf_paths(descriptor: Any, depth: int = 0) -> list[tuple[str, ...]]:
    """Every field reachable from the message (messages recursed into, up to a depth: CRI messages are shallow)."""
    paths = []
    for field in descriptor.fields:
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.type == FieldDescriptor.TYPE_MESSAGE and not is_map:
            paths.append((field.name,))  # the message left empty, or a fresh element
            if depth < 5:
                paths += [(field.name, *rest) for rest in leaf_paths(field.message_type, depth + 1)]
        else:
            paths.append((field.name,))
    return paths


@st.composite
def mutated(draw: st.DrawFn, base: Message, strings: st.SearchStrategy[str]) -> Message:
    message = type(base)()
    message.CopyFrom(base)
    paths = leaf_paths(message.DESCRIPTOR)
    if not paths:
        return message  # nothing to mutate (ImageFsInfo, RuntimeConfig): the call itself is still made
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        _set(draw, message, path, strings)
    return message


def _set(draw: st.DrawFn, message: Message, path: tuple[str, ...], strings: st.SearchStrategy[str]) -> None:
    field = message.DESCRIPTOR.fields_by_name[path[0]]
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    if is_map:
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        for _ in range(draw(st.integers(1, 2))):
            key = draw(strings)
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key]  # creates an empty entry
            else:
                target[key] = draw(scalar_values(value_field, strings))
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.is_repeated:
            child = getattr(message, field.name).add()
        else:
            child = getattr(message, field.name)
            child.SetInParent()
        if len(path) > 1:
            _set(draw, child, path[1:], strings)
        return
    values = scalar_values(field, strings)
    if field.is_repeated:
        container = getattr(message, field.name)
        del container[:]
        container.extend(draw(st.lists(values, max_size=3)))
    else:
        setattr(message, field.name, draw(values))


# ---------------------------------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    image_dir = write_test_images(short_tempdir("fimg"))
    env = PodEnv(short_tempdir("fz"), image_dir, cgroup_parent=session_cgroup_parent())
    try:
        yield Target(env)
    finally:
        env.close()
        import shutil
        shutil.rmtree(image_dir, ignore_errors=True)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _methods() -> list[tuple[str, str]]:
    found = []
    for service in ("RuntimeService", "ImageService"):
        for method in api_pb2.DESCRIPTOR.services_by_name[service].methods:
            if method.name not in SKIPPED and not method.server_streaming and not method.client_streaming:
                found.append((service, method.name))
    return found


METHODS = _methods()


def _call(target: Target, service: str, method: str, request: Message) -> grpc.StatusCode:
    descriptor = api_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    response_type = descriptor.output_type._concrete_class
    stub = target.env.daemon.channel.unary_unary(
        f"/runtime.v1.{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_type.FromString)
    try:
        stub(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_fuzz_every_cri_call(target: Target) -> None:
    daemon = target.env.daemon
    rss_before = _rss(daemon.pid)  # type: ignore[arg-type]
    started = time.monotonic()
    strings = hostile_strings(target.canary, target.log_dir)
    failures: list[str] = []
    for service, method in METHODS:
        target.ensure_base()
        count = min(EXAMPLES, SLOW_CALLS.get(method, EXAMPLES))

        @settings(max_examples=count, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            request = data.draw(mutated(target.base(method), strings))
            code = _call(target, service, method, request)
            STATS["cases"] += 1
            STATS[code.name] = STATS.get(code.name, 0) + 1
            assert daemon.pid is not None and Path(f"/proc/{daemon.pid}").exists(), "the daemon died"
            assert code not in FORBIDDEN, f"{method}: {code.name} for {str(request)[:2000]}"
            if code is grpc.StatusCode.DEADLINE_EXCEEDED and method != "PullImage":
                raise AssertionError(f"{method} did not answer within {CALL_TIMEOUT}s: {str(request)[:2000]}")

        try:
            fuzz()
        except AssertionError as e:
            failures.append(str(e)[:3000])
    # The events stream: opened with hostile requests (it has no fields that matter) and cancelled.
    events = daemon.runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=1)
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(events))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    target.env.remove_all_pods()
    time.sleep(1)
    rss_after = _rss(daemon.pid)  # type: ignore[arg-type]
    print(f"\nCRI fuzz: {STATS['cases']} cases over {len(METHODS)} calls in {time.monotonic() - started:.0f}s; "
          f"codes {dict(sorted((k, v) for k, v in STATS.items() if k != 'cases'))}; daemon RSS "
          f"{rss_before >> 20} MB before, {rss_after >> 20} MB after")
    assert not failures, "\n\n".join(failures)
    assert list(target.canary.iterdir()) == [], "the daemon wrote into the canary directory"
    assert not Path("/tmp/fuzzpwn").exists()
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, f"RSS grew from {rss_before >> 20} to {rss_after >> 20} MB"
