"""Domain model of CRI container and pod-sandbox requests.

Plain dataclasses with snake_case fields and safe defaults: everything the daemon needs from a
CreateContainer / RunPodSandbox request, free of protobuf types (cripy/cri/convert.py fills them).
Also the slice of an image's config that spec generation needs (ImageRuntimeConfig).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from cripy.linux.idmap import IDRange

Propagation = Literal["private", "rslave", "rshared"]
ProfileKind = Literal["runtime_default", "unconfined", "localhost"]
GroupsPolicy = Literal["merge", "strict"]


class NamespaceMode(enum.Enum):
    """How a container (or pod) gets a namespace: shared in the pod, its own, the node's, another container's."""

    POD = "pod"
    CONTAINER = "container"
    NODE = "node"
    TARGET = "target"


@dataclass
class Mount:
    """A host path bound into the container (recursive_read_only: every mount below it read-only too), or
    (`image` set) an image volume: the filesystem of an image already pulled, read-only, whole or from
    `image_sub_path` down (KEP-4639).

    uid_mappings / gid_mappings (the kubelet sends the pod's own for its volumes in a user namespace) ask for an
    id-mapped bind: files owned by host uid 0 are seen as container uid 0, and written back as host uid 0."""

    container_path: str
    host_path: str
    readonly: bool = False
    recursive_read_only: bool = False
    propagation: Propagation = "private"
    selinux_relabel: bool = False
    image: str = ""
    image_sub_path: str = ""
    # The image `image` named when the container was created: the container holds that one, whatever the name
    # points to later (filled by the container manager, not by the request).
    image_id: str = ""
    uid_mappings: list[IDRange] = field(default_factory=list)
    gid_mappings: list[IDRange] = field(default_factory=list)

    @property
    def idmapped(self) -> bool:
        return bool(self.uid_mappings or self.gid_mappings)


@dataclass
class Device:
    """A host device (or a directory of devices) made available in the container."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass
class Resources:
    """Linux resource limits of a container (0 / empty means "not set")."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: dict[str, int] = field(default_factory=dict)
    oom_score_adj: int = 0
    memory_swap_limit_in_bytes: int = 0
    unified: dict[str, str] = field(default_factory=dict)
    pids_limit: int = 0


@dataclass
class SecurityProfile:
    """A seccomp (or AppArmor) profile choice; localhost_ref is an absolute path for seccomp."""

    kind: ProfileKind = "runtime_default"
    localhost_ref: str = ""


@dataclass
class UserNamespace:
    """A pod's own user namespace (the kubelet's hostUsers: false), shared by all its containers: container ids
    `uids`/`gids` are the host ids the maps give them."""

    uids: list[IDRange]
    gids: list[IDRange]


@dataclass
class NamespaceOptions:
    """Namespace modes for network, PID and IPC; target_id names the container for TARGET mode; user is the pod's
    own user namespace (None: the node's)."""

    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: str = ""
    user: UserNamespace | None = None


@dataclass
class ContainerSecurity:
    """The Linux security context of one container.

    masked_paths / readonly_paths: None means "the runtime defaults", an empty list means "none".
    """

    capabilities_add: list[str] = field(default_factory=list)
    capabilities_drop: list[str] = field(default_factory=list)
    add_ambient: list[str] = field(default_factory=list)
    privileged: bool = False
    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: list[int] = field(default_factory=list)
    supplemental_groups_policy: GroupsPolicy = "merge"
    no_new_privs: bool = False
    masked_paths: list[str] | None = None
    readonly_paths: list[str] | None = None
    seccomp: SecurityProfile = field(default_factory=SecurityProfile)


@dataclass
class ContainerRequest:
    """Everything CreateContainer asked for, as domain values."""

    name: str
    image: str
    attempt: int = 0
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    envs: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources = field(default_factory=Resources)
    security: ContainerSecurity = field(default_factory=ContainerSecurity)
    stop_signal: str = ""


@dataclass
class DNSConfig:
    """Resolver settings of a pod (written to its resolv.conf)."""

    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class PortMapping:
    """One hostPort mapping of a pod; protocol is "tcp", "udp" or "sctp"."""

    protocol: str
    container_port: int
    host_port: int = 0
    host_ip: str = ""


@dataclass
class PodSecurity:
    """The Linux security context of a pod sandbox."""

    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    supplemental_groups: list[int] = field(default_factory=list)
    privileged: bool = False
    seccomp: SecurityProfile = field(default_factory=SecurityProfile)
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass
class PodSandboxRequest:
    """Everything RunPodSandbox asked for, as domain values."""

    name: str
    uid: str
    namespace: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    port_mappings: list[PortMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    security: PodSecurity = field(default_factory=PodSecurity)
    overhead: Resources | None = None
    resources: Resources | None = None
    runtime_handler: str = ""


@dataclass
class ImageRuntimeConfig:
    """The part of an OCI image config that decides how a container of it runs."""

    user: str = ""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    volumes: list[str] = field(default_factory=list)
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
