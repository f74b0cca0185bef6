"""A container as the daemon keeps it: its request, its state machine and where its pieces live."""

from __future__ import annotations

from dataclasses import dataclass

from cripy.containers.model import ContainerRequest
from cripy.containers.users import ProcessUser

STATE_CREATING = "creating"
STATE_CREATED = "created"
STATE_RUNNING = "running"
STATE_EXITED = "exited"

REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM = "OOMKilled"
REASON_START_ERROR = "StartError"


@dataclass
class Container:
    id: str
    pod_id: str
    name: str  # the reserved name: <name>_<pod name>_<namespace>_<uid>_<attempt>
    state: str
    created_at: int  # ns since the epoch, like the times below
    image_id: str
    image_name: str
    request: ContainerRequest
    log_path: str
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    conmon_pid: int = 0
    stop_signal: str = ""
    cgroup_path: str = ""
    process_user: ProcessUser | None = None  # resolved at create; None for a container made before it was kept

    @property
    def running(self) -> bool:
        return self.state == STATE_RUNNING


def reserved_name(request: ContainerRequest, pod_name: str, pod_namespace: str, pod_uid: str) -> str:
    return f"{request.name}_{pod_name}_{pod_namespace}_{pod_uid}_{request.attempt}"
