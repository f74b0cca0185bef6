"""cripy.storage.serde: the domain dataclasses survive JSON, with enums, tuples, optionals and nesting intact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from cripy.containers.model import (
    ContainerRequest,
    ContainerSecurity,
    Device,
    DNSConfig,
    ImageRuntimeConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PodSandboxRequest,
    PodSecurity,
    PortMapping,
    Resources,
    SecurityProfile,
)
from cripy.storage import serde


def full_container_request() -> ContainerRequest:
    return ContainerRequest(
        name="app",
        image="docker.io/library/busybox:latest",
        attempt=2,
        command=["/bin/sh", "-c"],
        args=["echo hi"],
        working_dir="/work",
        envs=[("A", "1"), ("B", "two words")],
        mounts=[
            Mount("/data", "/srv/data", readonly=True, propagation="rslave", selinux_relabel=True),
            Mount("/cache", "/srv/cache"),
        ],
        devices=[Device("/dev/fuse", "/dev/fuse", "rw")],
        labels={"io.kubernetes.container.name": "app"},
        annotations={"a": "b"},
        log_path="app/2.log",
        stdin=True,
        stdin_once=True,
        tty=True,
        resources=Resources(
            cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 28,
            cpuset_cpus="0-1", hugepage_limits={"2MB": 4 << 20}, oom_score_adj=-997,
            unified={"memory.high": "100000"}, pids_limit=64,
        ),
        security=ContainerSecurity(
            capabilities_add=["NET_ADMIN"],
            capabilities_drop=["ALL"],
            privileged=False,
            namespace_options=NamespaceOptions(
                network=NamespaceMode.NODE, pid=NamespaceMode.TARGET, ipc=NamespaceMode.CONTAINER, target_id="abc"
            ),
            run_as_user=1000,
            run_as_group=0,  # 0 is a value, not "unset"
            supplemental_groups=[2000, 3000],
            supplemental_groups_policy="strict",
            no_new_privs=True,
            masked_paths=[],  # empty list means "none", distinct from None
            readonly_paths=None,
            seccomp=SecurityProfile("localhost", "/var/lib/kubelet/seccomp/p.json"),
        ),
        stop_signal="SIGINT",
    )


def full_pod_request() -> PodSandboxRequest:
    return PodSandboxRequest(
        name="web",
        uid="0f1e",
        namespace="default",
        attempt=1,
        hostname="web-0",
        log_directory="/var/log/pods/default_web_0f1e",
        dns=DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"]),
        port_mappings=[PortMapping("tcp", 80, 8080, "127.0.0.1"), PortMapping("udp", 53)],
        labels={"app": "web"},
        annotations={"x": "y"},
        cgroup_parent="/kubepods/burstable/pod0f1e",
        security=PodSecurity(
            namespace_options=NamespaceOptions(pid=NamespaceMode.POD),
            run_as_user=0,
            supplemental_groups=[1],
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
            seccomp=SecurityProfile("unconfined"),
        ),
        overhead=None,
        resources=Resources(cpu_shares=2, memory_limit_in_bytes=1 << 30),
        runtime_handler="runc",
    )


@pytest.mark.parametrize(
    "value",
    [
        ContainerRequest(name="minimal", image="busybox"),
        full_container_request(),
        PodSandboxRequest(name="p", uid="u", namespace="n"),
        full_pod_request(),
        ImageRuntimeConfig(user="1000:1000", env=["A=1"], entrypoint=["/e"], cmd=["c"], working_dir="/w",
                           volumes=["/v"], stop_signal="SIGQUIT", labels={"l": "v"}),
    ],
    ids=["container-minimal", "container-full", "pod-minimal", "pod-full", "image-config"],
)
def test_round_trip_is_exact(value: Any) -> None:
    text = serde.dumps(value)
    back = serde.loads(type(value), text)
    assert back == value
    assert serde.dumps(back) == text


def test_types_are_rebuilt_not_just_equal_values() -> None:
    back = serde.loads(ContainerRequest, serde.dumps(full_container_request()))
    assert all(isinstance(env, tuple) for env in back.envs)
    assert back.envs[1] == ("B", "two words")
    assert isinstance(back.mounts[0], Mount)
    assert isinstance(back.devices[0], Device)
    assert isinstance(back.resources, Resources)
    options = back.security.namespace_options
    assert options.network is NamespaceMode.NODE
    assert options.pid is NamespaceMode.TARGET
    assert isinstance(back.security.seccomp, SecurityProfile)
    assert back.security.masked_paths == [] and back.security.readonly_paths is None
    assert back.security.run_as_group == 0

    pod = serde.loads(PodSandboxRequest, serde.dumps(full_pod_request()))
    assert pod.overhead is None
    assert isinstance(pod.resources, Resources)
    assert isinstance(pod.port_mappings[0], PortMapping)
    assert pod.security.namespace_options.pid is NamespaceMode.POD


def test_json_form_is_plain_and_stable() -> None:
    text = serde.dumps(full_container_request())
    data = json.loads(text)
    assert data["security"]["namespace_options"]["network"] == "node"  # enum by value
    assert data["envs"][0] == ["A", "1"]  # tuples as arrays
    assert data["security"]["readonly_paths"] is None
    assert list(data) == sorted(data)  # sorted keys: the same object is the same text
    assert " " not in text.replace("two words", "").replace("echo hi", "")


def test_unknown_keys_are_ignored_at_every_level() -> None:
    data = json.loads(serde.dumps(full_pod_request()))
    data["added_in_a_later_version"] = {"nested": [1, 2]}
    data["dns"]["future_field"] = True
    data["port_mappings"][0]["future_field"] = "x"
    data["security"]["namespace_options"]["future_kind"] = "pod"
    back = serde.loads(PodSandboxRequest, json.dumps(data))
    assert back == full_pod_request()


def test_missing_keys_take_the_defaults() -> None:
    back = serde.loads(ContainerRequest, '{"name": "a", "image": "b", "security": {"privileged": true}}')
    assert back == ContainerRequest(name="a", image="b", security=ContainerSecurity(privileged=True))


def test_loads_accepts_bytes() -> None:
    value = ImageRuntimeConfig(user="u")
    assert serde.loads(ImageRuntimeConfig, serde.dumps(value).encode()) == value


def test_unknown_enum_value_is_an_error() -> None:
    data = json.loads(serde.dumps(ContainerRequest(name="a", image="b")))
    data["security"]["namespace_options"]["network"] = "galaxy"
    with pytest.raises(ValueError):
        serde.loads(ContainerRequest, json.dumps(data))


@dataclass
class _Shapes:
    fixed: tuple[int, str] = (0, "")
    variadic: tuple[int, ...] = ()
    nested: dict[str, list[Resources]] = field(default_factory=dict)
    maybe: NamespaceMode | None = None
    anything: Any = None


def test_other_container_shapes() -> None:
    value = _Shapes(
        fixed=(7, "x"),
        variadic=(1, 2, 3),
        nested={"a": [Resources(pids_limit=1)], "b": []},
        maybe=NamespaceMode.NODE,
        anything={"free": ["form"]},
    )
    back = serde.loads(_Shapes, serde.dumps(value))
    assert back == value
    assert isinstance(back.variadic, tuple) and isinstance(back.fixed, tuple)
    assert isinstance(back.nested["a"][0], Resources)
    assert back.maybe is NamespaceMode.NODE
    assert serde.loads(_Shapes, serde.dumps(_Shapes())) == _Shapes()
