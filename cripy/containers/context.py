"""What a container's request meets before its spec is built: the pod's context (its namespaces, files and
cgroup), the image's runtime configuration, where the log goes, its stop signal. Pure functions of the records;
what the request names on the node (the host paths it binds) is read by hostfacts.py."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from cripy.containers.model import ContainerRequest, ImageRuntimeConfig
from cripy.containers.spec import PodContext
from cripy.images.store import Image
from cripy.pods.model import PodSandbox

log = logging.getLogger(__name__)


def pod_context(pod: PodSandbox) -> PodContext:
    paths = {}
    for kind, oci in (("net", "network"), ("ipc", "ipc"), ("uts", "uts")):
        path = pod.namespace_path(kind)
        if path is not None:
            paths[oci] = str(path)
    if pod.pid_namespace is not None:
        paths["pid"] = str(pod.pid_namespace)
    user = pod.namespace_path("user")
    if user is not None:
        paths["user"] = str(user)
    return PodContext(
        pod_id=pod.id,
        hostname=pod.hostname,
        namespace_paths=paths,
        pid_mode=pod.request.security.namespace_options.pid,
        cgroup_parent=pod.cgroup_parent,
        resolv_conf_path=str(pod.resolv_conf_path),
        hosts_path=str(pod.hosts_path),
        hostname_path=str(pod.hostname_path),
        shm_path=None if pod.host_ipc else str(pod.shm_path),
        host_network=pod.host_network,
        host_ipc=pod.host_ipc,
        host_pid=pod.host_pid,
        sysctls=dict(pod.request.security.sysctls),
        user_namespace=pod.userns,
    )


def image_runtime_config(image: Image) -> ImageRuntimeConfig:
    config = image.config.get("config") or {}
    return ImageRuntimeConfig(
        user=config.get("User") or "",
        env=list(config.get("Env") or []),
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        working_dir=config.get("WorkingDir") or "",
        volumes=sorted(config.get("Volumes") or {}),
        stop_signal=config.get("StopSignal") or "",
        labels=dict(config.get("Labels") or {}),
    )


def log_path(pod: PodSandbox, request: ContainerRequest) -> str:
    """The log's place: log_path (relative, checked not to leave it) in the pod's log_directory (absolute)."""
    if request.log_path and pod.request.log_directory:
        return str(Path(pod.request.log_directory) / request.log_path)
    # kubelet always sets both; crictl may not. The log then lives with the pod's runtime files.
    return str(pod.run_dir / "logs" / f"{request.name}_{request.attempt}.log")


def signal_number(name: str) -> int:
    """A stop signal as images and CRI write it: "SIGTERM", "TERM", "15", "SIGRTMIN+3", "RTMAX-1"."""
    if not name:
        return signal.SIGTERM
    text = name.strip().upper().removeprefix("SIG")
    number: int | None = None
    if text.isdigit():
        number = int(text)
    elif text.startswith(("RTMIN", "RTMAX")):
        base = signal.SIGRTMIN if text.startswith("RTMIN") else signal.SIGRTMAX
        offset = text[5:]
        if not offset:
            number = int(base)
        elif offset[0] in "+-" and offset[1:].isdigit():
            number = int(base) + int(offset)
    else:
        member = signal.Signals.__members__.get("SIG" + text)
        number = int(member) if member is not None else None
    if number is None or not 1 <= number <= signal.SIGRTMAX:
        log.warning("unknown stop signal %r: using SIGTERM", name)
        return signal.SIGTERM
    return number
