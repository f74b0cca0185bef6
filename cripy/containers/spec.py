"""OCI runtime spec (config.json) generation for CreateContainer: the heart of container creation.

build_spec() turns a ContainerRequest, the image's runtime config, the resolved process user and the pod's
context into the OCI spec dict that runc 1.1 consumes (runtime-spec 1.0.2), following what kubelet expects of
CRI-O / containerd: args/env/cwd precedence, default mounts, devices (devices.py), namespaces joined from the pod,
capabilities with ALL semantics, masked and read-only /proc paths, seccomp, resources, cgroups path.

What it needs from paths a request names (mount sources, devices, a Localhost seccomp profile) comes read ahead
in HostFacts (hostfacts.py); its only I/O is the daemon's own limits. Nothing is created: directories for the
image's anonymous volumes are returned in BuiltSpec.volume_dirs for the caller to create (and remove with the
container).
"""

from __future__ import annotations

import functools
import hashlib
import resource
import posixpath
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cripy.containers import seccomp
from cripy.containers.hostfacts import HostFacts
from cripy.containers.model import (
    ContainerRequest,
    ContainerSecurity,
    ImageRuntimeConfig,
    Mount,
    NamespaceMode,
    Resources,
    UserNamespace,
)
from cripy.containers.users import ProcessUser
from cripy.errors import FailedPrecondition, InvalidArgument
from cripy.linux import capabilities as caps

OCI_VERSION = "1.0.2"

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Sysctl prefixes that live in the IPC namespace (the rest of the namespaced ones are net.*).
_IPC_SYSCTLS = ("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")
_NAMESPACE_ALIASES = {"net": "network", "mnt": "mount"}


@dataclass
class PodContext:
    """What a container needs to know about its pod sandbox.

    namespace_paths maps an OCI namespace type (user, network, ipc, uts, pid; "net" is accepted too) to the pinned
    namespace file to join; a namespace that is neither host nor pinned is created new for the container.
    """

    pod_id: str
    hostname: str = ""
    namespace_paths: dict[str, str] = field(default_factory=dict)
    pid_mode: NamespaceMode = NamespaceMode.CONTAINER
    cgroup_parent: str = ""
    resolv_conf_path: str | None = None
    hosts_path: str | None = None
    hostname_path: str | None = None
    shm_path: str | None = None
    host_network: bool = False
    host_ipc: bool = False
    host_pid: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    user_namespace: UserNamespace | None = None  # the pod's own (its pinned file in namespace_paths["user"])


@dataclass
class SpecSettings:
    """Node-wide defaults of spec generation (from the daemon config)."""

    default_capabilities: list[str] = field(default_factory=lambda: list(caps.DEFAULT_CAPABILITIES))
    seccomp_default_profile: dict[str, Any] = field(default_factory=seccomp.default_profile)
    allow_negative_oom_score_adj: bool = False
    cgroup_parent_default: str = "/cripy"
    pids_limit: int = 0
    default_env: list[str] = field(default_factory=lambda: [DEFAULT_PATH_ENV])
    terminal_env: str = "TERM=xterm"
    rlimit_nofile: int = 1048576
    masked_paths: list[str] = field(default_factory=lambda: list(DEFAULT_MASKED_PATHS))
    readonly_paths: list[str] = field(default_factory=lambda: list(DEFAULT_READONLY_PATHS))
    host_dev_root: str = "/dev"


@dataclass
class BuiltSpec:
    """A generated spec plus what the caller must do or report around it."""

    spec: dict[str, Any]
    volume_dirs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def build_spec(
    req: ContainerRequest,
    image: ImageRuntimeConfig,
    *,
    ctr_id: str,
    rootfs: Path,
    user: ProcessUser,
    pod: PodContext,
    settings: SpecSettings,
    host: HostFacts,
    volumes_dir: Path,
    target_pid_ns: str | None = None,
) -> BuiltSpec:
    """The OCI spec of container `ctr_id` of pod `pod`; `host` is what read_host_facts read for `req`.

    volumes_dir: where anonymous volumes of the image live (one sub-directory per volume, returned in
    volume_dirs, not created here). target_pid_ns: the PID namespace file of the target container when the
    request asks for pid=TARGET (the caller resolves target_id).
    """
    sec = req.security
    if sec.privileged and pod.user_namespace is not None:
        raise InvalidArgument(f"container {req.name!r}: a privileged container cannot run in a pod with its own "
                              "user namespace")
    warnings: list[str] = []
    capability_sets = process_capabilities(sec, settings.default_capabilities)
    mounts, volume_dirs = build_mounts(req, image, pod=pod, volumes_dir=volumes_dir, sources=host.mount_sources)
    resources = req.resources
    if resources.pids_limit <= 0 and settings.pids_limit > 0:
        resources = replace(resources, pids_limit=settings.pids_limit)

    process: dict[str, Any] = {
        "terminal": req.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": process_args(req, image),
        "env": process_env(req, image, user=user, pod=pod, settings=settings),
        "cwd": working_dir(req, image),
        "capabilities": capability_sets,
        "rlimits": [_nofile_rlimit(settings.rlimit_nofile, warnings)],
        "noNewPrivileges": sec.no_new_privs,
        "oomScoreAdj": _oom_score_adj(resources.oom_score_adj, settings, warnings, req.name),
    }
    linux: dict[str, Any] = {
        "namespaces": build_namespaces(sec, pod, target_pid_ns),
        "resources": spec_resources(resources),
        "cgroupsPath": cgroups_path(pod, settings, ctr_id),
        "devices": [],
        "maskedPaths": [] if sec.privileged else list(_or_default(sec.masked_paths, settings.masked_paths)),
        "readonlyPaths": [] if sec.privileged else list(_or_default(sec.readonly_paths, settings.readonly_paths)),
        "sysctl": namespaced_sysctls(pod),
    }
    linux["devices"] = list(host.devices)
    linux["resources"]["devices"] = list(host.device_rules)
    if pod.user_namespace is not None:
        linux.update(id_mappings(pod.user_namespace))
    propagation = rootfs_propagation(req)
    if propagation:
        linux["rootfsPropagation"] = propagation
    profile = seccomp_profile(sec, capability_sets["bounding"], settings, host.seccomp_localhost)
    if profile is not None:
        linux["seccomp"] = profile

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(rootfs), "readonly": sec.readonly_rootfs},
        "mounts": mounts,
        "annotations": dict(req.annotations),
        "linux": linux,
    }
    if pod.hostname and not pod.host_network:
        spec["hostname"] = pod.hostname
    return BuiltSpec(spec=spec, volume_dirs=volume_dirs, warnings=warnings)


# --- process -------------------------------------------------------------------------------------------------


def process_args(req: ContainerRequest, image: ImageRuntimeConfig) -> list[str]:
    """Kubernetes semantics: command replaces the entrypoint (and drops the image cmd); args replace the cmd."""
    if req.command:
        argv = [*req.command, *req.args]
    else:
        argv = [*image.entrypoint, *(req.args if req.args else image.cmd)]
    if not argv:
        raise InvalidArgument(
            f"container {req.name!r}: no command specified (neither the request nor image {req.image} has one)"
        )
    return argv


def process_env(
    req: ContainerRequest, image: ImageRuntimeConfig, *, user: ProcessUser, pod: PodContext, settings: SpecSettings
) -> list[str]:
    """Defaults < image env < request envs, by key; HOME from the user unless someone set it."""
    env: dict[str, str | None] = {}
    layers: list[str] = list(settings.default_env)
    if pod.hostname:
        layers.append(f"HOSTNAME={pod.hostname}")
    if req.tty and settings.terminal_env:
        layers.append(settings.terminal_env)
    layers += image.env
    for item in layers:
        key, sep, value = item.partition("=")
        env[key] = value if sep else None
    for key, value in req.envs:
        env[key] = value
    env.setdefault("HOME", user.home or "/")
    return [key if value is None else f"{key}={value}" for key, value in env.items()]


def working_dir(req: ContainerRequest, image: ImageRuntimeConfig) -> str:
    cwd = req.working_dir or image.working_dir or "/"
    return posixpath.normpath(posixpath.join("/", cwd))


def achievable_nofile_limit(wanted: int) -> int:
    """`wanted`, or the daemon's own hard RLIMIT_NOFILE when it lacks CAP_SYS_RESOURCE to go above it
    (runc would fail the whole container with EPERM otherwise)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or wanted <= hard:
        return wanted
    if caps.CAPABILITIES["CAP_SYS_RESOURCE"] in _own_effective_caps():
        return wanted
    return hard


@functools.cache
def _own_effective_caps() -> frozenset[int]:
    """The daemon's effective capabilities: read once (it never changes them), not for every container."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                mask = int(line.split(":", 1)[1], 16)
                return frozenset(bit for bit in range(64) if mask >> bit & 1)
    except OSError:
        pass
    return frozenset()


def _nofile_rlimit(wanted: int, warnings: list[str]) -> dict[str, Any]:
    limit = achievable_nofile_limit(wanted)
    if limit != wanted:
        warnings.append(f"RLIMIT_NOFILE lowered from {wanted} to {limit}: cripy lacks CAP_SYS_RESOURCE to raise it")
    return {"type": "RLIMIT_NOFILE", "hard": limit, "soft": limit}


def _oom_score_adj(value: int, settings: SpecSettings, warnings: list[str], name: str) -> int:
    if value < 0 and not settings.allow_negative_oom_score_adj:
        warnings.append(
            f"container {name!r}: oom_score_adj {value} raised to 0 (negative values are not allowed by the config)"
        )
        return 0
    return value


def process_capabilities(sec: ContainerSecurity, defaults: list[str]) -> dict[str, list[str]]:
    """The OCI capability sets: defaults, then add (ALL = every cap), drop (ALL = none), then single adds/drops.

    Individual names win over ALL on the other side: add [ALL] drop [CHOWN] is everything but CHOWN, add
    [CHOWN] drop [ALL] is CHOWN alone. Ambient capabilities are also made inheritable and permitted.
    """
    if sec.privileged:
        chosen = caps.grantable_capabilities()
    else:
        adds, add_all = _split_all(sec.capabilities_add)
        drops, drop_all = _split_all(sec.capabilities_drop)
        selected: dict[str, None] = dict.fromkeys(caps.normalize(c) for c in defaults)
        if add_all:
            selected = dict.fromkeys(caps.grantable_capabilities())
        if drop_all:
            selected = {}
        selected.update(dict.fromkeys(adds))
        for cap in drops:
            selected.pop(cap, None)
        chosen = list(selected)
    ambient = [caps.normalize(c) for c in sec.add_ambient]
    for cap in ambient:
        if cap not in chosen:
            chosen.append(cap)
    return {
        "bounding": list(chosen),
        "effective": list(chosen),
        "permitted": list(chosen),
        "inheritable": list(ambient),
        "ambient": list(ambient),
    }


def _split_all(names: list[str]) -> tuple[list[str], bool]:
    singles = [n for n in names if n.strip().upper() not in ("ALL", "CAP_ALL")]
    return [caps.normalize(n) for n in singles], len(singles) != len(names)


def seccomp_profile(sec: ContainerSecurity, bounding: list[str], settings: SpecSettings,
                    localhost: dict[str, Any] | None) -> dict[str, Any] | None:
    """linux.seccomp for the container, or None when it runs unconfined (privileged or Unconfined); `localhost` is
    the Localhost profile's document, read by read_host_facts."""
    if sec.privileged or sec.seccomp.kind == "unconfined":
        return None
    if sec.seccomp.kind != "localhost":
        return seccomp.render_profile(settings.seccomp_default_profile, bounding)
    ref = sec.seccomp.localhost_ref
    if localhost is None:
        raise ValueError(f"seccomp localhost profile {ref}: not read ahead (read_host_facts)")
    try:
        return seccomp.render_profile(localhost, bounding)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InvalidArgument(f"seccomp localhost profile {ref} is malformed: {type(e).__name__}: {str(e)[:200]}") from None


def _or_default(value: list[str] | None, default: list[str]) -> list[str]:
    return default if value is None else value


# --- mounts --------------------------------------------------------------------------------------------------


def build_mounts(
    req: ContainerRequest, image: ImageRuntimeConfig, *, pod: PodContext, volumes_dir: Path, sources: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[Path]]:
    """All mounts, parents before children; request mounts replace defaults at the same destination. sources[i]
    is where request mount i comes from on the node (HostFacts.mount_sources)."""
    requested: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(req.mounts):
        dest = _clean_destination(m.container_path, f"container {req.name!r}: mounts[{i}]")
        if dest in requested:
            raise InvalidArgument(f"container {req.name!r}: mounts[{i}] duplicates the destination {dest}")
        requested[dest] = {
            "destination": dest,
            "type": "bind",
            "source": sources[i],
            "options": ["rbind", *_access_options(m), _PROPAGATION_OPTION[m.propagation]],
        }
    defaults = default_mounts(req.security, pod)
    mounts = [m for m in defaults if m["destination"] not in requested]
    mounts += requested.values()
    volume_dirs = []
    taken = {m["destination"] for m in mounts}
    for volume in image.volumes:
        dest = _clean_destination(volume, f"image {req.image}: volume")
        if dest in taken:
            continue
        source = volumes_dir / hashlib.sha256(dest.encode()).hexdigest()[:16]
        volume_dirs.append(source)
        taken.add(dest)
        mounts.append(
            {"destination": dest, "type": "bind", "source": str(source), "options": ["rbind", "rw", "rprivate"]}
        )
    mounts.sort(key=lambda m: _depth(m["destination"]))
    return mounts, volume_dirs


_PROPAGATION_OPTION = {"private": "rprivate", "rslave": "rslave", "rshared": "rshared"}


def _access_options(mount: Mount) -> list[str]:
    """A read-only bind is read-only at its top only ("ro"); a recursive one also gets runc's "rro", which sets
    MOUNT_ATTR_RDONLY on every mount below it (mount_setattr with AT_RECURSIVE). The handler was checked to offer
    it before the spec is built."""
    if mount.recursive_read_only:
        return ["ro", "rro"]
    return ["ro" if mount.readonly else "rw"]


def default_mounts(sec: ContainerSecurity, pod: PodContext) -> list[dict[str, Any]]:
    """The kernel filesystems every container gets, plus the pod's hostname/hosts/resolv.conf and /dev/shm."""
    sys_mode = "rw" if sec.privileged else "ro"
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode]},
    ]
    # A fresh mqueue mount shows the message queues of the container's IPC namespace: the host's when it shares
    # the host IPC namespace (a bind of the host's /dev/mqueue would need the host to have one mounted).
    mounts.append({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                   "options": ["nosuid", "noexec", "nodev"]})
    if pod.host_ipc:
        mounts.append(_bind("/dev/shm", "/dev/shm", "rw"))
    else:
        if pod.shm_path:
            # The pod's tmpfs is noexec; a bind that asked less would have to clear that, which a user namespace
            # may not do to a mount the node made (EPERM) - and should not anyway.
            shm = _bind("/dev/shm", pod.shm_path, "rw")
            shm["options"].append("noexec")
            mounts.append(shm)
        else:
            mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                           "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    etc_mode = "ro" if sec.readonly_rootfs else "rw"
    for dest, source in (("/etc/hostname", pod.hostname_path), ("/etc/hosts", pod.hosts_path),
                         ("/etc/resolv.conf", pod.resolv_conf_path)):
        if source:
            mounts.append(_bind(dest, source, etc_mode))
    return mounts


def _bind(dest: str, source: str, mode: str) -> dict[str, Any]:
    options = ["rbind", "rprivate", "nosuid", "nodev", mode]
    return {"destination": dest, "type": "bind", "source": source, "options": options}


def rootfs_propagation(req: ContainerRequest) -> str | None:
    """Shared/slave request mounts only propagate if the container's root mount is shared/slave too."""
    kinds = {m.propagation for m in req.mounts}
    if "rshared" in kinds:
        return "rshared"
    if "rslave" in kinds:
        return "rslave"
    return None


def _clean_destination(path: str, where: str) -> str:
    if not path or not path.startswith("/"):
        raise InvalidArgument(f"{where}: destination {path!r} must be an absolute path")
    return posixpath.normpath(path).replace("//", "/")


def _depth(dest: str) -> int:
    return len([p for p in dest.split("/") if p])


# --- namespaces, cgroups, sysctls, resources ---------------------------------------------------------------


def build_namespaces(sec: ContainerSecurity, pod: PodContext, target_pid_ns: str | None = None) -> list[dict[str, str]]:
    """Join the pod's pinned namespaces (its user namespace first), omit the host ones, create the rest (mount
    always new, no cgroup ns); namespaces created here belong to the pod's user namespace."""
    paths = {_NAMESPACE_ALIASES.get(k, k): v for k, v in pod.namespace_paths.items()}
    opts = sec.namespace_options
    namespaces: list[dict[str, str]] = []
    if pod.user_namespace is not None:
        if not paths.get("user"):
            raise FailedPrecondition(f"pod {pod.pod_id} has no pinned user namespace to join")
        namespaces.append({"type": "user", "path": paths["user"]})

    def shared(kind: str, on_host: bool) -> None:
        if on_host:
            return
        namespaces.append({"type": kind, "path": paths[kind]} if paths.get(kind) else {"type": kind})

    pid_on_host = pod.host_pid or opts.pid is NamespaceMode.NODE
    if not pid_on_host:
        if opts.pid is NamespaceMode.POD:
            if not paths.get("pid"):
                raise FailedPrecondition(f"pod {pod.pod_id} has no shared PID namespace to join (pid=POD)")
            namespaces.append({"type": "pid", "path": paths["pid"]})
        elif opts.pid is NamespaceMode.TARGET:
            if not target_pid_ns:
                raise FailedPrecondition(
                    f"pid namespace of target container {opts.target_id!r} is unknown (is it running?)"
                )
            namespaces.append({"type": "pid", "path": target_pid_ns})
        else:
            namespaces.append({"type": "pid"})
    shared("network", pod.host_network or opts.network is NamespaceMode.NODE)
    shared("ipc", pod.host_ipc or opts.ipc is NamespaceMode.NODE)
    shared("uts", pod.host_network)
    namespaces.append({"type": "mount"})
    return namespaces


def id_mappings(userns: UserNamespace) -> dict[str, list[dict[str, int]]]:
    """linux.uidMappings and gidMappings of a container joining `userns` (runc checks its ids against them)."""
    return {
        "uidMappings": [{"containerID": r.container_id, "hostID": r.host_id, "size": r.length} for r in userns.uids],
        "gidMappings": [{"containerID": r.container_id, "hostID": r.host_id, "size": r.length} for r in userns.gids],
    }


def cgroups_path(pod: PodContext, settings: SpecSettings, ctr_id: str) -> str:
    parent = (pod.cgroup_parent or settings.cgroup_parent_default).rstrip("/")
    if not parent.startswith("/"):
        parent = "/" + parent
    return f"{parent}/cripy-{ctr_id}"


def namespaced_sysctls(pod: PodContext) -> dict[str, str]:
    """The pod's sysctls, minus those that would land in a host namespace (runc refuses those anyway)."""
    result = {}
    for key, value in pod.sysctls.items():
        if pod.host_network and key.startswith("net."):
            continue
        if pod.host_ipc and key.startswith(_IPC_SYSCTLS):
            continue
        result[key] = value
    return result


def spec_resources(res: Resources) -> dict[str, Any]:
    """linux.resources (LinuxResources) of `res`; unset values are left out. Also the body of `runc update`."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares > 0:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota != 0:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period > 0:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if res.memory_limit_in_bytes > 0:
        memory["limit"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes != 0:
        memory["swap"] = res.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": size, "limit": limit} for size, limit in res.hugepage_limits.items()]
    if res.pids_limit > 0:
        out["pids"] = {"limit": res.pids_limit}
    if res.unified:
        out["unified"] = dict(res.unified)
    return out
