"""Protobuf -> domain conversion of CRI container and pod sandbox configs, from real protobuf messages."""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2 as pb

from cripy.containers.model import (
    ContainerRequest,
    Device,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PortMapping,
    Resources,
    SecurityProfile,
)
from cripy.cri.convert import container_request_from_pb, pod_request_from_pb, resources_from_pb
from cripy.errors import InvalidArgument, Unimplemented
from cripy.linux.idmap import IDRange


def sandbox(**linux_kwargs) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", uid="uid-1", namespace="default", attempt=2),
        hostname="web-host",
        log_directory="/var/log/pods/default_web_uid-1",
        dns_config=pb.DNSConfig(servers=["10.0.0.10"], searches=["svc.cluster.local"], options=["ndots:5"]),
        port_mappings=[pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")],
        labels={"app": "web"},
        annotations={"note": "x"},
        linux=pb.LinuxPodSandboxConfig(**linux_kwargs),
    )


def container(**kwargs) -> pb.ContainerConfig:
    base = dict(metadata=pb.ContainerMetadata(name="app", attempt=1), image=pb.ImageSpec(image="busybox:latest"))
    base.update(kwargs)
    return pb.ContainerConfig(**base)


def test_full_container_config_round_trip():
    cfg = container(
        command=["/bin/sh"],
        args=["-c", "echo hi"],
        working_dir="/work",
        envs=[pb.KeyValue(key="A", value="1"), pb.KeyValue(key="B", value="x=y")],
        mounts=[
            pb.Mount(container_path="/data", host_path="/srv/data", readonly=True,
                     propagation=pb.PROPAGATION_HOST_TO_CONTAINER, selinux_relabel=True),
            pb.Mount(container_path="/shared", host_path="/srv/shared", propagation=pb.PROPAGATION_BIDIRECTIONAL),
        ],
        devices=[pb.Device(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rw")],
        labels={"l": "1"},
        annotations={"a": "2"},
        log_path="app/1.log",
        stdin=True,
        stdin_once=True,
        tty=True,
        stop_signal=pb.SIGUSR1,
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=1 << 28, oom_score_adj=-997),
            security_context=pb.LinuxContainerSecurityContext(
                capabilities=pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["ALL"],
                                           add_ambient_capabilities=["NET_RAW"]),
                privileged=False,
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.TARGET, ipc=pb.POD, target_id="other"),
                run_as_user=pb.Int64Value(value=1000),
                run_as_group=pb.Int64Value(value=0),
                run_as_username="ignored-when-uid",
                readonly_rootfs=True,
                supplemental_groups=[5, 6],
                supplemental_groups_policy=pb.Strict,
                no_new_privs=True,
                masked_paths=["/proc/kcore"],
                readonly_paths=["/proc/sys"],
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="/p/prof.json"),
            ),
        ),
    )
    req = container_request_from_pb(cfg, sandbox())
    assert isinstance(req, ContainerRequest)
    assert (req.name, req.attempt, req.image) == ("app", 1, "busybox:latest")
    assert (req.command, req.args, req.working_dir) == (["/bin/sh"], ["-c", "echo hi"], "/work")
    assert req.envs == [("A", "1"), ("B", "x=y")]
    assert req.mounts == [
        Mount("/data", "/srv/data", readonly=True, propagation="rslave", selinux_relabel=True),
        Mount("/shared", "/srv/shared", readonly=False, propagation="rshared"),
    ]
    assert req.devices == [Device("/dev/fuse", "/dev/fuse", "rw")]
    assert (req.labels, req.annotations) == ({"l": "1"}, {"a": "2"})
    assert req.log_path == "app/1.log"  # joined to the pod's own log_directory by the container manager
    assert (req.stdin, req.stdin_once, req.tty) == (True, True, True)
    assert req.stop_signal == "SIGUSR1"
    assert req.resources == Resources(cpu_shares=512, memory_limit_in_bytes=1 << 28, oom_score_adj=-997)
    sec = req.security
    assert (sec.capabilities_add, sec.capabilities_drop, sec.add_ambient) == (["NET_ADMIN"], ["ALL"], ["NET_RAW"])
    assert sec.namespace_options == NamespaceOptions(
        network=NamespaceMode.NODE, pid=NamespaceMode.TARGET, ipc=NamespaceMode.POD, target_id="other"
    )
    assert (sec.run_as_user, sec.run_as_group, sec.run_as_username) == (1000, 0, "ignored-when-uid")
    assert sec.readonly_rootfs and sec.no_new_privs and not sec.privileged
    assert sec.supplemental_groups == [5, 6]
    assert sec.supplemental_groups_policy == "strict"
    assert (sec.masked_paths, sec.readonly_paths) == (["/proc/kcore"], ["/proc/sys"])
    assert sec.seccomp == SecurityProfile("localhost", "/p/prof.json")


def test_minimal_container_config_defaults():
    req = container_request_from_pb(container(), pb.PodSandboxConfig())
    sec = req.security
    assert req.command == [] and req.envs == [] and req.mounts == [] and req.log_path == ""
    assert sec.run_as_user is None and sec.run_as_group is None  # unset wrappers stay None, not 0
    assert sec.masked_paths is None and sec.readonly_paths is None  # runtime defaults apply
    assert sec.seccomp == SecurityProfile("unconfined")  # the CRI: no profile is unconfined
    assert sec.supplemental_groups_policy == "merge"
    assert req.stop_signal == ""


def test_run_as_user_zero_is_distinguished_from_unset():
    cfg = container(linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0))))
    assert container_request_from_pb(cfg, sandbox()).security.run_as_user == 0


def test_container_inherits_pod_namespace_options_when_unset():
    pod = sandbox(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.NODE)))
    ns = container_request_from_pb(container(), pod).security.namespace_options
    assert (ns.network, ns.pid, ns.ipc) == (NamespaceMode.NODE, NamespaceMode.CONTAINER, NamespaceMode.NODE)


@pytest.mark.parametrize("log_path", ["/abs/x.log", "../x.log", "a/../../x.log", "..", ".", "a/.."])
def test_a_log_path_that_is_absolute_or_leaves_the_log_directory_is_refused(log_path):
    with pytest.raises(InvalidArgument, match="log_path"):
        container_request_from_pb(container(log_path=log_path), sandbox())


def test_a_log_path_is_kept_relative_and_clean():
    assert container_request_from_pb(container(log_path="app//./1.log"), sandbox()).log_path == "app/1.log"


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        ("", SecurityProfile("unconfined")),
        ("runtime/default", SecurityProfile("runtime_default")),
        ("docker/default", SecurityProfile("runtime_default")),
        ("unconfined", SecurityProfile("unconfined")),
        ("localhost//etc/seccomp/x.json", SecurityProfile("localhost", "/etc/seccomp/x.json")),
    ],
)
def test_legacy_seccomp_profile_path(legacy, expected):
    cfg = container(linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(seccomp_profile_path=legacy)))
    assert container_request_from_pb(cfg, sandbox()).security.seccomp == expected


def test_seccomp_field_wins_over_legacy_path():
    cfg = container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined), seccomp_profile_path="runtime/default")))
    assert container_request_from_pb(cfg, sandbox()).security.seccomp.kind == "unconfined"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (pb.ContainerConfig(image=pb.ImageSpec(image="x")), "metadata.name is required"),
        (pb.ContainerConfig(metadata=pb.ContainerMetadata(name="a")), "image.image is required"),
        (container(mounts=[pb.Mount(host_path="/x")]), r"mounts\[0\]: container_path is required"),
        (container(mounts=[pb.Mount(container_path="rel", host_path="/x")]), "must be absolute"),
        (container(mounts=[pb.Mount(container_path="/a", host_path="/x"),
                           pb.Mount(container_path="/b", host_path="/y", propagation=7)]),
         r"mounts\[1\]: propagation=7"),
        (container(mounts=[pb.Mount(container_path="/a")]), r"mounts\[0\]: host_path is required"),
        (container(devices=[pb.Device(container_path="/dev/x", host_path="/dev/null", permissions="rwx")]),
         r"devices\[0\]: permissions='rwx'"),
        (container(devices=[pb.Device(container_path="dev/x", host_path="/dev/null")]), r"devices\[0\]"),
        (container(envs=[pb.KeyValue(key="", value="v")]), r"envs\[0\]\.key"),
        (container(linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(cpu_period=-1))),
         "cpu_period=-1"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=-5)))), "run_as_user=-5"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.TARGET)))), "target_id is required"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.TARGET, target_id="x")))), "network=TARGET"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(ipc=9)))), "namespace_options.ipc=9"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost)))), "localhost_ref"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(profile_type=5)))), "profile_type=5"),
        (container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            seccomp_profile_path="localhost/relative.json"))), "seccomp_profile_path"),
        (container(stop_signal=999), "stop_signal=999"),
    ],
)
def test_invalid_container_configs_name_the_field(cfg, message):
    with pytest.raises(InvalidArgument, match=message):
        container_request_from_pb(cfg, sandbox())


@pytest.mark.parametrize(
    "cfg",
    [
        container(CDI_devices=[pb.CDIDevice(name="vendor.com/gpu=0")]),
    ],
)
def test_unsupported_features_are_unimplemented(cfg):
    with pytest.raises(Unimplemented):
        container_request_from_pb(cfg, sandbox())


def test_recursive_read_only_mount_is_read_only_and_private():
    cfg = container(mounts=[pb.Mount(container_path="/a", host_path="/x", readonly=True, recursive_read_only=True,
                                     selinux_relabel=True)])
    (mount,) = container_request_from_pb(cfg, sandbox()).mounts
    assert mount == Mount("/a", "/x", readonly=True, recursive_read_only=True, propagation="private",
                          selinux_relabel=True)


@pytest.mark.parametrize(("mount", "message"), [
    (dict(readonly=False), r"mounts\[0\]: recursive_read_only needs readonly=true"),
    (dict(readonly=True, propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
     r"mounts\[0\]: recursive_read_only needs propagation PROPAGATION_PRIVATE, not PROPAGATION_HOST_TO_CONTAINER"),
    (dict(readonly=True, propagation=pb.PROPAGATION_BIDIRECTIONAL),
     "not PROPAGATION_BIDIRECTIONAL"),
])
def test_recursive_read_only_mount_rules_of_the_cri(mount, message):
    cfg = container(mounts=[pb.Mount(container_path="/a", host_path="/x", recursive_read_only=True, **mount)])
    with pytest.raises(InvalidArgument, match=message):
        container_request_from_pb(cfg, sandbox())


def test_host_userns_option_is_accepted():
    cfg = container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE)))))
    container_request_from_pb(cfg, sandbox())


def test_resources_from_pb_maps_every_field():
    res = resources_from_pb(pb.LinuxContainerResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=256, memory_limit_in_bytes=1 << 30, oom_score_adj=1000,
        cpuset_cpus="0-1", cpuset_mems="0", memory_swap_limit_in_bytes=2 << 30,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=4 << 20), pb.HugepageLimit(page_size="1GB", limit=0)],
        unified={"memory.high": "100M"},
    ))
    assert res == Resources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=256, memory_limit_in_bytes=1 << 30, cpuset_cpus="0-1",
        cpuset_mems="0", hugepage_limits={"2MB": 4 << 20, "1GB": 0}, oom_score_adj=1000,
        memory_swap_limit_in_bytes=2 << 30, unified={"memory.high": "100M"},
    )


def test_resources_accept_unlimited_markers():
    res = resources_from_pb(pb.LinuxContainerResources(cpu_quota=-1, memory_swap_limit_in_bytes=-1))
    assert (res.cpu_quota, res.memory_swap_limit_in_bytes) == (-1, -1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cpu_quota": -2}, "cpu_quota"),
        ({"cpu_shares": -1}, "cpu_shares"),
        ({"memory_limit_in_bytes": -1}, "memory_limit_in_bytes"),
        ({"memory_swap_limit_in_bytes": -2}, "memory_swap_limit_in_bytes"),
        ({"oom_score_adj": 1001}, "oom_score_adj"),
        ({"oom_score_adj": -1001}, "oom_score_adj"),
        ({"hugepage_limits": [pb.HugepageLimit(page_size="2M", limit=1)]}, r"hugepage_limits\[0\].page_size"),
    ],
)
def test_invalid_resources(kwargs, field):
    with pytest.raises(InvalidArgument, match=field):
        resources_from_pb(pb.LinuxContainerResources(**kwargs))


def test_pod_request_from_pb():
    cfg = sandbox(
        cgroup_parent="/kubepods/besteffort/poduid-1",
        sysctls={"net.ipv4.ip_forward": "1"},
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.NODE),
            run_as_user=pb.Int64Value(value=65535),
            readonly_rootfs=True,
            supplemental_groups=[1],
            privileged=True,
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined),
        ),
        overhead=pb.LinuxContainerResources(cpu_shares=2),
    )
    pod = pod_request_from_pb(cfg, "runc")
    assert (pod.name, pod.uid, pod.namespace, pod.attempt) == ("web", "uid-1", "default", 2)
    assert (pod.hostname, pod.log_directory, pod.runtime_handler) == (
        "web-host", "/var/log/pods/default_web_uid-1", "runc")
    assert (pod.dns.servers, pod.dns.searches, pod.dns.options) == (
        ["10.0.0.10"], ["svc.cluster.local"], ["ndots:5"])
    assert pod.port_mappings == [PortMapping("udp", 53, 5353, "127.0.0.1")]
    assert (pod.labels, pod.annotations) == ({"app": "web"}, {"note": "x"})
    assert pod.cgroup_parent == "/kubepods/besteffort/poduid-1"
    sec = pod.security
    assert sec.namespace_options == NamespaceOptions(NamespaceMode.POD, NamespaceMode.CONTAINER, NamespaceMode.NODE)
    assert (sec.run_as_user, sec.run_as_group) == (65535, None)
    assert sec.readonly_rootfs and sec.privileged and sec.supplemental_groups == [1]
    assert sec.seccomp.kind == "unconfined"
    assert sec.sysctls == {"net.ipv4.ip_forward": "1"}
    assert pod.overhead == Resources(cpu_shares=2)
    assert pod.resources is None


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (pb.PodSandboxConfig(), "metadata.name is required"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", namespace="n")), "metadata.uid"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", uid="u")), "metadata.namespace"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", uid="u", namespace="n"),
                             port_mappings=[pb.PortMapping(container_port=0)]), r"port_mappings\[0\]: container_port"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", uid="u", namespace="n"),
                             port_mappings=[pb.PortMapping(container_port=80, host_port=70000)]), "host_port"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", uid="u", namespace="n"),
                             port_mappings=[pb.PortMapping(protocol=4, container_port=80)]), "protocol=4"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", uid="u", namespace="n"),
                             linux=pb.LinuxPodSandboxConfig(resources=pb.LinuxContainerResources(cpu_shares=-3))),
         "linux.resources: cpu_shares=-3"),
    ],
)
def test_invalid_pod_configs(cfg, message):
    with pytest.raises(InvalidArgument, match=message):
        pod_request_from_pb(cfg, "")


@pytest.mark.parametrize(("fields", "named"), [
    (dict(cpu_period=999), "cpu_period"),
    (dict(cpu_period=1_000_001), "cpu_period"),
    (dict(cpu_quota=999), "cpu_quota"),
    (dict(cpu_quota=-2), "cpu_quota"),
    (dict(cpu_quota=2**44), "cpu_quota"),
    (dict(cpu_shares=1), "cpu_shares"),
    (dict(cpu_shares=262_145), "cpu_shares"),
    (dict(memory_limit_in_bytes=12 * 1024 * 1024 - 1), "memory_limit_in_bytes"),
    (dict(memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=(64 << 20) - 1), "memory_swap_limit_in_bytes"),
    (dict(cpuset_cpus="abc"), "cpuset_cpus"),
    (dict(cpuset_cpus="3-1"), "cpuset_cpus"),
    (dict(cpuset_cpus="0-8192"), "cpuset_cpus"),
    (dict(cpuset_cpus="0," * 3000), "cpuset_cpus"),
    (dict(cpuset_mems="0-"), "cpuset_mems"),
    (dict(unified={"../x": "1"}), "unified"),
    (dict(unified={"memory.high": "1\n2"}), "unified"),
])
def test_resource_values_the_kernel_or_runc_refuse_are_invalid(fields, named):
    with pytest.raises(InvalidArgument, match=named) as caught:
        resources_from_pb(pb.LinuxContainerResources(**fields))
    assert len(str(caught.value)) < 400


def test_resource_values_at_their_limits_are_taken():
    res = resources_from_pb(pb.LinuxContainerResources(
        cpu_period=1000, cpu_quota=1000, cpu_shares=2, memory_limit_in_bytes=12 * 1024 * 1024,
        memory_swap_limit_in_bytes=12 * 1024 * 1024, cpuset_cpus="0-1,3", cpuset_mems="0"))
    assert (res.cpu_period, res.cpu_quota, res.cpu_shares) == (1000, 1000, 2)
    res = resources_from_pb(pb.LinuxContainerResources(cpu_period=1_000_000, cpu_quota=-1, cpu_shares=262_144))
    assert (res.cpu_period, res.cpu_quota, res.cpu_shares) == (1_000_000, -1, 262_144)


@pytest.mark.parametrize("log_directory", ["relative/logs", "./logs"])
def test_a_relative_log_directory_is_refused(log_directory):
    config = sandbox()
    config.log_directory = log_directory
    with pytest.raises(InvalidArgument, match="log_directory"):
        pod_request_from_pb(config, "")


@pytest.mark.parametrize("parent", ["/../../../../tmp/x", "/kubepods/../x", "/a/./b"])
def test_a_cgroup_parent_that_climbs_out_is_refused(parent):
    with pytest.raises(InvalidArgument, match="cgroup_parent"):
        pod_request_from_pb(sandbox(cgroup_parent=parent), "")


def test_a_host_ip_must_be_an_address():
    config = sandbox()
    config.port_mappings[0].host_ip = "not-an-ip"
    with pytest.raises(InvalidArgument, match="host_ip"):
        pod_request_from_pb(config, "")


def test_image_volume_mount_is_read_only_with_a_relative_sub_path():
    cfg = container(mounts=[pb.Mount(container_path="/mnt/image-volume", readonly=True,
                                     image=pb.ImageSpec(image="registry.k8s.io/e2e/busybox:1.29-2",
                                                        user_specified_image="busybox:1.29-2"),
                                     image_sub_path="etc/")])
    (mount,) = container_request_from_pb(cfg, sandbox()).mounts
    assert mount == Mount(container_path="/mnt/image-volume", host_path="", readonly=True,
                          image="registry.k8s.io/e2e/busybox:1.29-2", image_sub_path="etc")


@pytest.mark.parametrize(
    "mount, message",
    [
        (pb.Mount(container_path="/v", image=pb.ImageSpec(image="img")), "must be read-only"),
        (pb.Mount(container_path="/v", readonly=True, host_path="/srv", image=pb.ImageSpec(image="img")),
         "has no host_path"),
        (pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="img"), image_sub_path="/etc"),
         "must be a relative path"),
        (pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="img"), image_sub_path="a/../../b"),
         "without '..'"),
        (pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="img"), image_sub_path="a\0b"),
         "relative path"),
        (pb.Mount(container_path="/v", host_path="/srv", image_sub_path="etc"), "needs an image volume"),
    ],
)
def test_invalid_image_volumes_are_refused(mount, message):
    with pytest.raises(InvalidArgument, match=message):
        container_request_from_pb(container(mounts=[mount]), sandbox())
# ---- user namespaces ----------------------------------------------------------------------------------------


def _userns(mode=pb.POD, uids=None, gids=None):
    one = [pb.IDMapping(container_id=0, host_id=65536, length=65536)]
    return pb.UserNamespace(mode=mode, uids=one if uids is None else uids, gids=one if gids is None else gids)


def _userns_pod(userns):
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"),
                               linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                                   namespace_options=pb.NamespaceOption(userns_options=userns))))


def test_pod_user_namespace_is_read_with_its_one_mapping():
    request = pod_request_from_pb(_userns_pod(_userns()), "")
    user = request.security.namespace_options.user
    assert user.uids == [IDRange(0, 65536, 65536)] and user.gids == [IDRange(0, 65536, 65536)]
    assert pod_request_from_pb(_userns_pod(pb.UserNamespace(mode=pb.NODE)), "").security.namespace_options.user is None


@pytest.mark.parametrize(
    "userns, message",
    [
        (_userns(uids=[pb.IDMapping(container_id=0, host_id=65536, length=65536)] * 2), "uids has 2 mappings"),
        (_userns(gids=[]), "gids has 0 mappings"),
        (_userns(uids=[pb.IDMapping(container_id=1, host_id=65536, length=65536)]), "does not map container id 0"),
        (_userns(uids=[pb.IDMapping(container_id=0, host_id=0, length=65536)]), "node's id 0"),
        (_userns(uids=[pb.IDMapping(container_id=0, host_id=65536, length=0)]), "length 0 must be positive"),
        (_userns(uids=[pb.IDMapping(container_id=0, host_id=2**32 - 10, length=65536)]), "leaves the id space"),
        (pb.UserNamespace(mode=pb.CONTAINER), "mode CONTAINER is not supported"),
        (pb.UserNamespace(mode=pb.TARGET), "mode TARGET is not supported"),
        (pb.UserNamespace(mode=pb.NODE, uids=[pb.IDMapping(container_id=0, host_id=1, length=1)]), "takes no uid"),
        (pb.UserNamespace(mode=7), "mode=7"),
    ],
)
def test_bad_user_namespaces_are_invalid(userns, message):
    with pytest.raises(InvalidArgument, match=message):
        pod_request_from_pb(_userns_pod(userns), "")


def test_containers_share_their_pods_user_namespace():
    pod = _userns_pod(_userns())
    inherited = container_request_from_pb(container(), pod).security.namespace_options.user
    assert inherited == pod_request_from_pb(pod, "").security.namespace_options.user
    own_options = container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))))
    assert container_request_from_pb(own_options, pod).security.namespace_options.user == inherited
    other = container(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE)))))
    with pytest.raises(InvalidArgument, match="differ from the pod's"):
        container_request_from_pb(other, pod)


def test_id_mapped_mounts_carry_their_mappings():
    idmapped = pb.Mount(container_path="/v", host_path="/x",
                        uidMappings=[pb.IDMapping(container_id=0, host_id=65536, length=10)],
                        gidMappings=[pb.IDMapping(container_id=0, host_id=65536, length=10)])
    (mount,) = container_request_from_pb(container(mounts=[idmapped]), sandbox()).mounts
    assert mount.idmapped and mount.uid_mappings == [IDRange(0, 65536, 10)]
    half = pb.Mount(container_path="/v", host_path="/x", uidMappings=[pb.IDMapping(container_id=0, host_id=1,
                                                                                   length=1)])
    with pytest.raises(InvalidArgument, match="both uidMappings and gidMappings"):
        container_request_from_pb(container(mounts=[half]), sandbox())
