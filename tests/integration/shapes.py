"""Requests shaped the way the kubelet and critest send them, so that tests question our reading of the CRI with the
ecosystem's: critest's pods name no hostname and have names longer than a host name may be, with capitals; the
kubelet's carry its labels and annotations, a log directory under /var/log/pods' layout, a cgroup parent per QoS
class, explicit seccomp profiles, and containers with its mounts and environment.

The field values follow kubelet's kuberuntime (labels.go, kuberuntime_sandbox.go, kuberuntime_container.go) and
cri-tools' framework (CreatePodSandboxForContainer, BuildPodSandboxMetadata).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from cri_api.v1 import api_pb2

from tests.integration.podlib import BUSYBOX, PodEnv


def critest_pod_config(env: PodEnv, prefix: str = "create-PodSandbox-for-container-") -> api_pb2.PodSandboxConfig:
    """As critest's framework makes a pod: metadata from UUIDs, no hostname, no log directory, an empty linux
    config (so no namespace options: every namespace is the pod's), cgroup parent unset."""
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=prefix + str(uuid.uuid4()), uid=str(uuid.uuid4()),
                                            namespace="cri-test-namespace" + str(uuid.uuid4()), attempt=0),
        linux=api_pb2.LinuxPodSandboxConfig(),
        labels={"cri-test": "cri-test"},
    )


def critest_container_config(name_prefix: str, command: list[str], image: str = BUSYBOX) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name_prefix + str(uuid.uuid4()), attempt=0),
        image=api_pb2.ImageSpec(image=image),
        command=command,
        linux=api_pb2.LinuxContainerConfig(),
    )


def kubelet_pod_config(env: PodEnv, name: str, namespace: str = "default") -> api_pb2.PodSandboxConfig:
    """As the kubelet makes a BestEffort pod's sandbox (cgroupfs driver, seccompDefault off)."""
    uid = str(uuid.uuid4())
    log_directory = env.workdir / "var-log-pods" / f"{namespace}_{name}_{uid}"
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
        hostname=name,
        log_directory=str(log_directory),
        dns_config=api_pb2.DNSConfig(servers=["10.96.0.10"], searches=[f"{namespace}.svc.cluster.local",
                                                                        "svc.cluster.local", "cluster.local"],
                                     options=["ndots:5"]),
        labels={
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": namespace,
            "io.kubernetes.pod.uid": uid,
            "run": name,
        },
        annotations={
            "kubernetes.io/config.seen": "2026-12-06T03:52:40.000000000Z",
            "kubernetes.io/config.source": "api",
        },
        linux=api_pb2.LinuxPodSandboxConfig(
            cgroup_parent=f"{env.cgroup_parent}/kubepods/besteffort/pod{uid}",
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER,
                                                          ipc=api_pb2.POD),
                seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined),
            ),
            resources=api_pb2.LinuxContainerResources(cpu_shares=2, cpu_period=100000),
        ),
    )


def kubelet_container_config(pod: api_pb2.PodSandboxConfig, name: str, command: list[str], *,
                             termination_log: Path, image: str = BUSYBOX,
                             seccomp: int = api_pb2.SecurityProfile.RuntimeDefault) -> api_pb2.ContainerConfig:
    """As the kubelet makes a container: its labels and annotations, `<name>/<attempt>.log`, the termination
    message mount, the service environment, the pod's namespaces and an explicit seccomp profile."""
    meta = pod.metadata
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image=image),
        command=command,
        working_dir="",
        envs=[api_pb2.KeyValue(key="KUBERNETES_SERVICE_HOST", value="10.96.0.1"),
              api_pb2.KeyValue(key="KUBERNETES_SERVICE_PORT", value="443"),
              api_pb2.KeyValue(key="KUBERNETES_PORT", value="tcp://10.96.0.1:443")],
        mounts=[api_pb2.Mount(container_path="/dev/termination-log", host_path=str(termination_log))],
        labels={
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": meta.name,
            "io.kubernetes.pod.namespace": meta.namespace,
            "io.kubernetes.pod.uid": meta.uid,
        },
        annotations={
            "io.kubernetes.container.hash": "5d9e2f3a",
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
        },
        log_path=f"{name}/0.log",
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(cpu_shares=2, cpu_period=100000, oom_score_adj=1000),
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER,
                                                          ipc=api_pb2.POD),
                seccomp=api_pb2.SecurityProfile(profile_type=seccomp),
                masked_paths=["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                              "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                              "/sys/firmware"],
                readonly_paths=["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            ),
        ),
    )


@contextlib.contextmanager
def kubelet_pod_cgroup(config: api_pb2.PodSandboxConfig) -> Iterator[None]:
    """The kubelet makes a pod's cgroup (cgroupfs driver: in every v1 hierarchy) before RunPodSandbox and removes it
    after RemovePodSandbox; do the same around a test, down to the QoS level it made."""
    parent = config.linux.cgroup_parent.strip("/")
    hierarchies = [h for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir() and not h.is_symlink()]
    made = []
    for hierarchy in hierarchies:
        path = hierarchy / parent
        if not path.exists():
            path.mkdir(parents=True)
            made.append(path)
    try:
        yield
    finally:
        for path in made:
            top = path.parent.parent  # <session parent>/kubepods
            for directory in (path, path.parent, top):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
