"""Protobuf -> domain conversion of CRI container and pod-sandbox configs.

The only module that reads ContainerConfig / PodSandboxConfig messages. It validates what protobuf cannot
(negative sizes, unknown enum numbers, required fields) and raises cripy.errors.InvalidArgument naming the field,
or Unimplemented for features cripy does not offer (CDI devices).
Whether the pod's runtime handler can honour what is asked (recursive read-only mounts) is checked at create.

Choices worth knowing:
- An unset seccomp profile (neither `seccomp` nor the deprecated `seccomp_profile_path`) means Unconfined, as
  the CRI says; the kubelet always sends the profile it wants (RuntimeDefault when seccompDefault is on).
- Empty masked_paths / readonly_paths mean "runtime defaults": protobuf cannot tell empty from unset, and the
  other runtimes read it the same way.
- A container without namespace_options inherits the pod's.
- log_path stays relative: the container manager joins it to the log_directory of the pod as RunPodSandbox gave
  it (not to the copy of the pod's config a CreateContainer carries). It may not leave that directory, and
  log_directory must be absolute: the kubelet never sends anything else, and a runtime does not write where it was
  not asked to.
- Resource values are checked against what the kernel and runc take (cgroup v1 and v2 alike): cpu_period within
  [1000, 1000000] us, cpu_quota -1 or within [1000, 2^44-1] us, cpu_shares within [2, 262144], a memory limit of
  at least 12 MiB (CRI-O's floor: less cannot start a process), swap not below memory, cpusets in the kernel's list
  form. 0 means unset for each. Whether the node can honour them (cgroup v1 and `unified`, CPUs that exist) is
  the container manager's check at create.
- A pod's user namespace (userns_options mode POD) takes exactly one uid and one gid mapping that maps container
  id 0 and leaves the node's id 0 out, as the kubelet sends them; its containers share it (a container asking for
  another one is refused). CONTAINER and TARGET modes do not exist for user namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re

from cri_api.v1 import api_pb2 as pb

from cripy.cri.validate import cpu_list, shown
from cripy.errors import InvalidArgument, Unimplemented
from cripy.containers.model import (
    ContainerRequest,
    ContainerSecurity,
    Device,
    DNSConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PodSandboxRequest,
    PodSecurity,
    PortMapping,
    Resources,
    SecurityProfile,
    UserNamespace,
)
from cripy.linux.idmap import IDRange

PROPAGATION = {
    pb.PROPAGATION_PRIVATE: "private",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}
NAMESPACE_MODE = {
    pb.POD: NamespaceMode.POD,
    pb.CONTAINER: NamespaceMode.CONTAINER,
    pb.NODE: NamespaceMode.NODE,
    pb.TARGET: NamespaceMode.TARGET,
}
_PROFILE_KIND = {
    pb.SecurityProfile.RuntimeDefault: "runtime_default",
    pb.SecurityProfile.Unconfined: "unconfined",
    pb.SecurityProfile.Localhost: "localhost",
}
_PROTOCOL = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}
_GROUPS_POLICY = {pb.Merge: "merge", pb.Strict: "strict"}
_HUGEPAGE_SIZE = re.compile(r"^[1-9][0-9]*[KMGTP]B$")
_MAX_ID = 2**32 - 2
CPU_PERIOD_RANGE = (1000, 1_000_000)  # microseconds: the kernel's cfs period bounds
CPU_QUOTA_RANGE = (1000, 2**44 - 1)  # microseconds: at least 1 ms; the kernel's max_cfs_runtime
CPU_SHARES_RANGE = (2, 262_144)  # cgroup v1's bounds (runc converts to cpu.weight on v2)
MIN_MEMORY_LIMIT = 12 * 1024 * 1024
_UNIFIED_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]+$")


def container_request_from_pb(config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig) -> ContainerRequest:
    """Translate a CreateContainer config (with its pod's config for inherited values) into a ContainerRequest."""
    if not config.HasField("metadata") or not config.metadata.name:
        raise InvalidArgument("container config: metadata.name is required")
    if not config.image.image:
        raise InvalidArgument(f"container {config.metadata.name!r}: image.image is required")
    if config.CDI_devices:
        raise Unimplemented(f"container {config.metadata.name!r}: CDI devices are not supported by cripy")
    where = f"container {config.metadata.name!r}"
    linux = config.linux
    return ContainerRequest(
        name=config.metadata.name,
        attempt=config.metadata.attempt,
        image=config.image.image,
        command=list(config.command),
        args=list(config.args),
        working_dir=config.working_dir,
        envs=_envs(config.envs, where),
        mounts=[_mount(m, f"{where}: mounts[{i}]") for i, m in enumerate(config.mounts)],
        devices=[_device(d, f"{where}: devices[{i}]") for i, d in enumerate(config.devices)],
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=_log_path(config.log_path, where),
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        resources=resources_from_pb(linux.resources, f"{where}: linux.resources"),
        security=_container_security(linux.security_context, sandbox_config, where),
        stop_signal=_signal_name(config.stop_signal, where),
    )


def pod_request_from_pb(config: pb.PodSandboxConfig, runtime_handler: str) -> PodSandboxRequest:
    """Translate a RunPodSandbox config into a PodSandboxRequest."""
    meta = config.metadata
    if not config.HasField("metadata") or not meta.name:
        raise InvalidArgument("pod sandbox config: metadata.name is required")
    where = f"pod sandbox {meta.namespace}/{meta.name}"
    if not meta.uid:
        raise InvalidArgument(f"{where}: metadata.uid is required")
    if not meta.namespace:
        raise InvalidArgument(f"{where}: metadata.namespace is required")
    linux = config.linux
    if config.log_directory and not os.path.isabs(config.log_directory):
        raise InvalidArgument(f"{where}: log_directory={shown(config.log_directory)} must be an absolute path")
    return PodSandboxRequest(
        name=meta.name,
        uid=meta.uid,
        namespace=meta.namespace,
        attempt=meta.attempt,
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=DNSConfig(
            servers=list(config.dns_config.servers),
            searches=list(config.dns_config.searches),
            options=list(config.dns_config.options),
        ),
        port_mappings=[_port_mapping(p, f"{where}: port_mappings[{i}]") for i, p in enumerate(config.port_mappings)],
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        cgroup_parent=_cgroup_parent(linux.cgroup_parent, where),
        security=_pod_security(linux.security_context, dict(linux.sysctls), where),
        overhead=resources_from_pb(linux.overhead, f"{where}: linux.overhead") if linux.HasField("overhead") else None,
        resources=(
            resources_from_pb(linux.resources, f"{where}: linux.resources") if linux.HasField("resources") else None
        ),
        runtime_handler=runtime_handler,
    )


def pull_namespace_from_pb(request: pb.PullImageRequest) -> str:
    """The Kubernetes namespace of the pod an image is pulled for ("" when the request carries no pod): it picks
    the per-namespace trust policy."""
    if not request.HasField("sandbox_config"):
        return ""
    return request.sandbox_config.metadata.namespace


def resources_from_pb(res: pb.LinuxContainerResources, where: str = "linux.resources") -> Resources:
    """Translate and validate LinuxContainerResources (also used by UpdateContainerResources)."""
    _require_unset_or_within(res.cpu_period, CPU_PERIOD_RANGE, where, "cpu_period", "microseconds")
    if res.cpu_quota != -1:
        _require_unset_or_within(res.cpu_quota, CPU_QUOTA_RANGE, where, "cpu_quota",
                                 "microseconds, or -1 (unlimited)")
    _require_unset_or_within(res.cpu_shares, CPU_SHARES_RANGE, where, "cpu_shares", "")
    _require(res.memory_limit_in_bytes == 0 or res.memory_limit_in_bytes >= MIN_MEMORY_LIMIT, where,
             "memory_limit_in_bytes", res.memory_limit_in_bytes,
             f"is too low: at least {MIN_MEMORY_LIMIT} bytes (or 0, unlimited)")
    swap = res.memory_swap_limit_in_bytes
    _require(swap >= -1, where, "memory_swap_limit_in_bytes", swap, "must be -1 (unlimited) or more")
    _require(swap <= 0 or res.memory_limit_in_bytes == 0 or swap >= res.memory_limit_in_bytes, where,
             "memory_swap_limit_in_bytes", swap,
             f"is memory plus swap: it cannot be below memory_limit_in_bytes={res.memory_limit_in_bytes}")
    _require(-1000 <= res.oom_score_adj <= 1000, where, "oom_score_adj", res.oom_score_adj,
             "must be within [-1000, 1000]")
    for field in ("cpuset_cpus", "cpuset_mems"):
        if getattr(res, field):
            cpu_list(getattr(res, field), f"{where}: {field}")
    for key, value in res.unified.items():
        _require(bool(_UNIFIED_KEY.match(key)), where, "unified key", key, "is not a cgroup v2 file name")
        _require("\n" not in value, where, f"unified[{key}]", value, "must be one line")
    hugepages: dict[str, int] = {}
    for i, limit in enumerate(res.hugepage_limits):
        _require(bool(_HUGEPAGE_SIZE.match(limit.page_size)), where, f"hugepage_limits[{i}].page_size",
                 limit.page_size, "must look like 2MB or 1GB")
        _require(limit.limit >= 0, where, f"hugepage_limits[{i}].limit", limit.limit, "must not be negative")
        hugepages[limit.page_size] = limit.limit
    return Resources(
        cpu_period=res.cpu_period,
        cpu_quota=res.cpu_quota,
        cpu_shares=res.cpu_shares,
        memory_limit_in_bytes=res.memory_limit_in_bytes,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
        hugepage_limits=hugepages,
        oom_score_adj=res.oom_score_adj,
        memory_swap_limit_in_bytes=res.memory_swap_limit_in_bytes,
        unified=dict(res.unified),
    )


def _require(ok: bool, where: str, field: str, value: object, why: str) -> None:
    if not ok:
        raise InvalidArgument(f"{where}: {field}={shown(value)} {why}")


def _require_unset_or_within(value: int, bounds: tuple[int, int], where: str, field: str, unit: str) -> None:
    low, high = bounds
    _require(value == 0 or low <= value <= high, where, field, value,
             f"must be within [{low}, {high}]{' ' + unit if unit else ''} (or 0, unset)")


def _envs(envs, where: str) -> list[tuple[str, str]]:
    result = []
    for i, kv in enumerate(envs):
        if not kv.key or "=" in kv.key:
            raise InvalidArgument(f"{where}: envs[{i}].key={shown(kv.key)} must be non-empty and contain no '='")
        result.append((kv.key, kv.value))
    return result


def _mount(m: pb.Mount, where: str) -> Mount:
    if not m.container_path:
        raise InvalidArgument(f"{where}: container_path is required")
    if not os.path.isabs(m.container_path):
        raise InvalidArgument(f"{where}: container_path={m.container_path!r} must be absolute")
    if bool(m.uidMappings) != bool(m.gidMappings):
        raise InvalidArgument(f"{where}: an id-mapped mount needs both uidMappings and gidMappings")
    if m.propagation not in PROPAGATION:
        raise InvalidArgument(f"{where}: propagation={m.propagation} is not a known MountPropagation")
    if m.recursive_read_only:
        # The CRI's rule: a recursively read-only mount is read-only, and private (nothing may appear below it
        # from the host, where it would be writable).
        if not m.readonly:
            raise InvalidArgument(f"{where}: recursive_read_only needs readonly=true")
        if m.propagation != pb.PROPAGATION_PRIVATE:
            raise InvalidArgument(f"{where}: recursive_read_only needs propagation PROPAGATION_PRIVATE, not "
                                  f"{pb.MountPropagation.Name(m.propagation)}")
    if m.HasField("image") and m.image.image:
        return _image_mount(m, where)
    if m.image_sub_path:
        raise InvalidArgument(f"{where}: image_sub_path={m.image_sub_path!r} needs an image volume (image.image)")
    if not m.host_path:
        raise InvalidArgument(f"{where}: host_path is required")
    return Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        recursive_read_only=m.recursive_read_only,
        propagation=PROPAGATION[m.propagation],  # type: ignore[arg-type]
        selinux_relabel=m.selinux_relabel,
        uid_mappings=_id_ranges(m.uidMappings, f"{where}: uidMappings"),
        gid_mappings=_id_ranges(m.gidMappings, f"{where}: gidMappings"),
    )


def _image_mount(m: pb.Mount, where: str) -> Mount:
    """An image volume (KEP-4639): always read-only, a relative sub-path that stays inside the image."""
    image = m.image.image.strip()
    if m.host_path:
        raise InvalidArgument(f"{where}: an image volume ({image}) has no host_path (got {m.host_path!r})")
    if not m.readonly:
        raise InvalidArgument(f"{where}: image volume {image} must be read-only (readonly=true): images are immutable")
    sub_path = m.image_sub_path
    if "\0" in sub_path or os.path.isabs(sub_path) or ".." in sub_path.split("/"):
        raise InvalidArgument(f"{where}: image_sub_path={sub_path!r} must be a relative path inside the image"
                              " without '..'")
    return Mount(
        container_path=m.container_path,
        host_path="",
        readonly=True,
        recursive_read_only=m.recursive_read_only,
        propagation=PROPAGATION[m.propagation],  # type: ignore[arg-type]
        image=image,
        image_sub_path=sub_path.strip("/"),
        uid_mappings=_id_ranges(m.uidMappings, f"{where}: uidMappings"),
        gid_mappings=_id_ranges(m.gidMappings, f"{where}: gidMappings"),
    )


def _id_ranges(mappings, where: str) -> list[IDRange]:
    ranges = []
    for i, m in enumerate(mappings):
        found = IDRange(container_id=m.container_id, host_id=m.host_id, length=m.length)
        problem = found.problem()
        if problem:
            raise InvalidArgument(f"{where}[{i}]: {problem}")
        ranges.append(found)
    return ranges


def _user_namespace(opts: pb.UserNamespace, where: str) -> UserNamespace | None:
    """The pod's own user namespace, or None for the node's."""
    where = f"{where}: namespace_options.userns_options"
    if opts.mode == pb.NODE:
        if opts.uids or opts.gids:
            raise InvalidArgument(f"{where}: mode NODE (the node's user namespace) takes no uid or gid mappings")
        return None
    if opts.mode in (pb.CONTAINER, pb.TARGET):
        raise InvalidArgument(f"{where}: mode {pb.NamespaceMode.Name(opts.mode)} is not supported for user "
                              "namespaces: a pod's containers share the pod's user namespace (POD) or the node's (NODE)")
    if opts.mode != pb.POD:
        raise InvalidArgument(f"{where}: mode={opts.mode} is not a known NamespaceMode")
    maps = {}
    for kind, mappings in (("uids", opts.uids), ("gids", opts.gids)):
        if len(mappings) != 1:
            raise InvalidArgument(f"{where}: {kind} has {len(mappings)} mappings; a pod's user namespace takes "
                                  "exactly one (the range the kubelet gave the pod)")
        (found,) = _id_ranges(mappings, f"{where}: {kind}")
        if found.container_id != 0:
            raise InvalidArgument(f"{where}: {kind} does not map container id 0 (it maps {found.container_id}.."
                                  f"{found.container_id + found.length - 1}): the pod would have no root")
        if found.host_id == 0:
            raise InvalidArgument(f"{where}: {kind} maps the node's id 0 into the pod, which a user namespace is "
                                  "there to prevent")
        maps[kind] = [found]
    return UserNamespace(uids=maps["uids"], gids=maps["gids"])


def _device(d: pb.Device, where: str) -> Device:
    if not d.container_path or not os.path.isabs(d.container_path):
        raise InvalidArgument(f"{where}: container_path={d.container_path!r} must be an absolute path")
    if not d.host_path or not os.path.isabs(d.host_path):
        raise InvalidArgument(f"{where}: host_path={shown(d.host_path)} must be an absolute path")
    permissions = d.permissions or "rwm"
    if set(permissions) - set("rwm"):
        raise InvalidArgument(f"{where}: permissions={d.permissions!r} may only contain r, w and m")
    return Device(container_path=d.container_path, host_path=d.host_path, permissions=permissions)


def _log_path(log_path: str, where: str) -> str:
    """The log path relative to the pod's log directory, refused when absolute or when it leaves it."""
    if not log_path:
        return ""
    clean = posixpath.normpath(log_path)
    if os.path.isabs(log_path) or clean == ".." or clean.startswith("../") or clean == ".":
        raise InvalidArgument(f"{where}: log_path={shown(log_path)} must be a file path relative to the pod's "
                              "log_directory, and stay inside it")
    return clean


def _cgroup_parent(value: str, where: str) -> str:
    """A cgroup path below the cgroup root: '..' would lead conmon's cgroup out of the cgroup filesystem."""
    if any(part in ("..", ".") for part in value.split("/")):
        raise InvalidArgument(f"{where}: linux.cgroup_parent={shown(value)} may not contain '.' or '..'")
    return value


def _signal_name(value: int, where: str) -> str:
    try:
        name = pb.Signal.Name(value)  # type: ignore[arg-type]  # any int: an unknown one raises ValueError
    except ValueError:
        raise InvalidArgument(f"{where}: stop_signal={value} is not a known Signal") from None
    if name == "RUNTIME_DEFAULT":
        return ""
    return name.replace("PLUS", "+").replace("MINUS", "-")


def _namespace_options(opts: pb.NamespaceOption, where: str) -> NamespaceOptions:
    modes = {}
    for kind in ("network", "pid", "ipc"):
        value = getattr(opts, kind)
        if value not in NAMESPACE_MODE:
            raise InvalidArgument(f"{where}: namespace_options.{kind}={value} is not a known NamespaceMode")
        modes[kind] = NAMESPACE_MODE[value]
    for kind in ("network", "ipc"):
        if modes[kind] is NamespaceMode.TARGET:
            raise InvalidArgument(f"{where}: namespace_options.{kind}=TARGET is only valid for pid")
    if modes["pid"] is NamespaceMode.TARGET and not opts.target_id:
        raise InvalidArgument(f"{where}: namespace_options.target_id is required when pid=TARGET")
    user = _user_namespace(opts.userns_options, where) if opts.HasField("userns_options") else None
    return NamespaceOptions(
        network=modes["network"], pid=modes["pid"], ipc=modes["ipc"], target_id=opts.target_id, user=user
    )


def _security_profile(msg: pb.SecurityProfile, where: str) -> SecurityProfile:
    if msg.profile_type not in _PROFILE_KIND:
        raise InvalidArgument(f"{where}: profile_type={msg.profile_type} is not a known ProfileType")
    kind = _PROFILE_KIND[msg.profile_type]
    if kind == "localhost":
        if not msg.localhost_ref or not os.path.isabs(msg.localhost_ref):
            raise InvalidArgument(
                f"{where}: localhost_ref={msg.localhost_ref!r} must be an absolute path for a Localhost profile"
            )
        return SecurityProfile(kind="localhost", localhost_ref=msg.localhost_ref)
    return SecurityProfile(kind=kind)  # type: ignore[arg-type]


def _legacy_seccomp_path(path: str, where: str) -> SecurityProfile:
    """The deprecated string form: "runtime/default", "docker/default", "unconfined", "localhost/<path>"; empty
    is unconfined (the CRI: 'Default: "", which is identical with unconfined')."""
    if path in ("runtime/default", "docker/default"):
        return SecurityProfile(kind="runtime_default")
    if path in ("", "unconfined"):
        return SecurityProfile(kind="unconfined")
    if path.startswith("localhost/"):
        # kubelet wrote "localhost/" + an absolute path, hence the double slash
        ref = path[len("localhost/"):]
        if os.path.isabs(ref):
            return SecurityProfile(kind="localhost", localhost_ref=ref)
    raise InvalidArgument(f"{where}: seccomp_profile_path={path!r} is not a valid profile reference")


def _seccomp(ctx, where: str) -> SecurityProfile:
    if ctx.HasField("seccomp"):
        return _security_profile(ctx.seccomp, f"{where}: seccomp")
    return _legacy_seccomp_path(ctx.seccomp_profile_path, where)


def _optional_id(ctx, field: str, where: str) -> int | None:
    if not ctx.HasField(field):
        return None
    value = getattr(ctx, field).value
    _require(0 <= value <= _MAX_ID, where, field, value, f"must be within [0, {_MAX_ID}]")
    return value


def _groups(values, where: str) -> list[int]:
    for i, gid in enumerate(values):
        _require(0 <= gid <= _MAX_ID, where, f"supplemental_groups[{i}]", gid, f"must be within [0, {_MAX_ID}]")
    return list(values)


def _container_security(
    ctx: pb.LinuxContainerSecurityContext, sandbox: pb.PodSandboxConfig, where: str
) -> ContainerSecurity:
    where = f"{where}: linux.security_context"
    pod_ns = _namespace_options(sandbox.linux.security_context.namespace_options, where)
    ns = _namespace_options(ctx.namespace_options, where) if ctx.HasField("namespace_options") else pod_ns
    if not ctx.namespace_options.HasField("userns_options"):
        ns.user = pod_ns.user
    elif ns.user != pod_ns.user:
        raise InvalidArgument(f"{where}: namespace_options.userns_options differ from the pod's: the containers of "
                              "a pod share its user namespace")
    if ctx.supplemental_groups_policy not in _GROUPS_POLICY:
        raise InvalidArgument(f"{where}: supplemental_groups_policy={ctx.supplemental_groups_policy} is unknown")
    return ContainerSecurity(
        capabilities_add=list(ctx.capabilities.add_capabilities),
        capabilities_drop=list(ctx.capabilities.drop_capabilities),
        add_ambient=list(ctx.capabilities.add_ambient_capabilities),
        privileged=ctx.privileged,
        namespace_options=ns,
        run_as_user=_optional_id(ctx, "run_as_user", where),
        run_as_group=_optional_id(ctx, "run_as_group", where),
        run_as_username=ctx.run_as_username,
        readonly_rootfs=ctx.readonly_rootfs,
        supplemental_groups=_groups(ctx.supplemental_groups, where),
        supplemental_groups_policy=_GROUPS_POLICY[ctx.supplemental_groups_policy],  # type: ignore[arg-type]
        no_new_privs=ctx.no_new_privs,
        masked_paths=list(ctx.masked_paths) or None,
        readonly_paths=list(ctx.readonly_paths) or None,
        seccomp=_seccomp(ctx, where),
    )


def _pod_security(ctx: pb.LinuxSandboxSecurityContext, sysctls: dict[str, str], where: str) -> PodSecurity:
    where = f"{where}: linux.security_context"
    return PodSecurity(
        namespace_options=_namespace_options(ctx.namespace_options, where),
        run_as_user=_optional_id(ctx, "run_as_user", where),
        run_as_group=_optional_id(ctx, "run_as_group", where),
        readonly_rootfs=ctx.readonly_rootfs,
        supplemental_groups=_groups(ctx.supplemental_groups, where),
        privileged=ctx.privileged,
        seccomp=_seccomp(ctx, where),
        sysctls=sysctls,
    )


def _port_mapping(p: pb.PortMapping, where: str) -> PortMapping:
    if p.protocol not in _PROTOCOL:
        raise InvalidArgument(f"{where}: protocol={p.protocol} is not a known Protocol")
    _require(0 < p.container_port <= 65535, where, "container_port", p.container_port, "must be within [1, 65535]")
    _require(0 <= p.host_port <= 65535, where, "host_port", p.host_port, "must be within [0, 65535]")
    if p.host_ip:
        try:
            ipaddress.ip_address(p.host_ip)
        except ValueError:
            raise InvalidArgument(f"{where}: host_ip={shown(p.host_ip)} is not an IP address") from None
    return PortMapping(
        protocol=_PROTOCOL[p.protocol], container_port=p.container_port, host_port=p.host_port, host_ip=p.host_ip
    )


def call_subject(request: object) -> str:
    """What a CRI request is about, for people: `cripy ctl inflight`, span attributes, the stuck-step log.
    Called only when someone looks, never on the request's path."""
    parts: list[str] = []
    metadata = getattr(getattr(request, "config", None), "metadata", None)
    name = getattr(metadata, "name", "")
    if name:
        namespace = getattr(metadata, "namespace", "")
        parts.append(name + (f" in {namespace}" if namespace else ""))
    for field, label in (("container_id", "container"), ("pod_sandbox_id", "pod")):
        value = getattr(request, field, "")
        if isinstance(value, str) and value:
            parts.append(f"{label} {value[:12]}")
    image = getattr(getattr(request, "image", None), "image", "")
    if isinstance(image, str) and image:
        parts.append(f"image {image}")
    return ", ".join(parts)
