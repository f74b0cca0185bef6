"""The infra process of a pod that shares one PID namespace: the pause role, played by catatonit.

It is a tiny OCI container of its own: an empty rootfs with the pause binary bound in, the pod's user (when it has
its own), network, IPC and UTS namespaces joined, and a new PID namespace (owned by the pod's user namespace) that
the pod's containers then join through /proc/<pid>/ns/pid.
"""

from __future__ import annotations

from typing import Any

from cripy.containers.spec import id_mappings
from cripy.pods.model import PodSandbox

PAUSE_PATH_IN_CONTAINER = "/pause"


def infra_spec(pod: PodSandbox, infra_id: str, pause_command: str) -> dict[str, Any]:
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "mount"}]
    for kind, oci_type in (("user", "user"), ("net", "network"), ("ipc", "ipc"), ("uts", "uts")):
        path = pod.namespace_path(kind)
        if path is not None:
            namespaces.append({"type": oci_type, "path": str(path)})
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [PAUSE_PATH_IN_CONTAINER, "-P"],
            "env": ["PATH=/"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": PAUSE_PATH_IN_CONTAINER, "type": "bind", "source": pause_command,
             "options": ["rbind", "ro", "nosuid", "nodev"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": f"{pod.cgroup_parent.rstrip('/')}/cripy-{infra_id}",
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if pod.namespace_path("uts") is not None:
        spec["hostname"] = pod.hostname
    if pod.userns is not None:
        spec["linux"].update(id_mappings(pod.userns))
    return spec

