"""The pod sandbox as the daemon keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cripy.containers.model import NamespaceMode, PodSandboxRequest, UserNamespace
from cripy.linux.idmap import to_host

STATE_CREATING = "creating"
STATE_READY = "ready"
STATE_NOTREADY = "notready"


def namespaces_dir(run_dir: Path) -> Path:
    """Where a pod pins its namespaces, a file per kind ("net", "ipc", ...), under its run directory: also for the
    audit, which looks at pods it has no record of."""
    return run_dir / "ns"


@dataclass
class PodSandbox:
    id: str
    name: str  # the reserved name: <name>_<namespace>_<uid>_<attempt>
    state: str
    created_at: int  # ns since the epoch
    request: PodSandboxRequest
    runtime_handler: str
    cgroup_parent: str
    run_dir: Path
    ips: list[str] = field(default_factory=list)
    infra_id: str | None = None
    infra_pid: int | None = None

    @property
    def host_network(self) -> bool:
        return self.request.security.namespace_options.network is NamespaceMode.NODE

    @property
    def host_ipc(self) -> bool:
        return self.request.security.namespace_options.ipc is NamespaceMode.NODE

    @property
    def host_pid(self) -> bool:
        return self.request.security.namespace_options.pid is NamespaceMode.NODE

    @property
    def shares_pid(self) -> bool:
        return self.request.security.namespace_options.pid is NamespaceMode.POD

    @property
    def userns(self) -> UserNamespace | None:
        """The pod's own user namespace (None: its containers run in the node's)."""
        return self.request.security.namespace_options.user

    def host_ids(self, uid: int = 0, gid: int = 0) -> tuple[int, int]:
        """The host uid and gid that container ids `uid`, `gid` are in this pod (the same ids without a userns)."""
        if self.userns is None:
            return uid, gid
        host_uid, host_gid = to_host(self.userns.uids, uid), to_host(self.userns.gids, gid)
        if host_uid is None or host_gid is None:
            raise ValueError(f"ids {uid}:{gid} are not mapped in pod {self.id}'s user namespace")
        return host_uid, host_gid

    @property
    def hostname(self) -> str:
        # RunPodSandbox fills in the node's when the request names none; pods recorded before that used their name.
        return self.request.hostname or self.request.name

    @property
    def ns_dir(self) -> Path:
        return namespaces_dir(self.run_dir)

    @property
    def pinned_kinds(self) -> list[str]:
        # The user namespace comes first: created with the others, it owns them.
        kinds = ["user"] if self.userns is not None else []
        if not self.host_network:
            kinds += ["net", "uts"]
        if not self.host_ipc:
            kinds.append("ipc")
        return kinds

    def namespace_path(self, kind: str) -> Path | None:
        return self.ns_dir / kind if kind in self.pinned_kinds else None

    @property
    def netns(self) -> Path | None:
        return self.namespace_path("net")

    @property
    def shm_path(self) -> Path:
        return self.run_dir / "shm"

    @property
    def resolv_conf_path(self) -> Path:
        return self.run_dir / "resolv.conf"

    @property
    def hosts_path(self) -> Path:
        return self.run_dir / "hosts"

    @property
    def hostname_path(self) -> Path:
        return self.run_dir / "hostname"

    @property
    def pid_namespace(self) -> Path | None:
        """The shared PID namespace of the pod, held by its infra process."""
        return Path(f"/proc/{self.infra_pid}/ns/pid") if self.infra_pid else None


def reserved_name(request: PodSandboxRequest) -> str:
    return f"{request.name}_{request.namespace}_{request.uid}_{request.attempt}"
