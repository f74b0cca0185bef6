"""OCI spec generation: the CRI semantics kubelet expects, checked field by field."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cripy.containers import seccomp
from cripy.containers.model import (
    ContainerRequest,
    ContainerSecurity,
    Device,
    ImageRuntimeConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    Resources,
    SecurityProfile,
)
from cripy.containers.devices import host_devices
from cripy.containers.hostfacts import read_host_facts
from cripy.containers.spec import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    BuiltSpec,
    PodContext,
    SpecSettings,
    achievable_nofile_limit,
    build_spec,
    spec_resources,
)
from cripy.containers.users import ProcessUser
from cripy.errors import FailedPrecondition, InvalidArgument
from cripy.linux import capabilities

DEFAULT_CAPS = list(capabilities.DEFAULT_CAPABILITIES)


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    d = tmp_path / "host"
    d.mkdir()
    return d


def build(
    tmp_path: Path,
    req: ContainerRequest | None = None,
    *,
    image: ImageRuntimeConfig | None = None,
    pod: PodContext | None = None,
    settings: SpecSettings | None = None,
    user: ProcessUser | None = None,
    **kwargs,
) -> BuiltSpec:
    req = req or ContainerRequest(name="app", image="busybox", command=["sh"])
    settings = settings or SpecSettings()
    return build_spec(
        req,
        image or ImageRuntimeConfig(),
        ctr_id="c0ffee",
        rootfs=tmp_path / "rootfs",
        user=user or ProcessUser(uid=0, gid=0, home="/root"),
        pod=pod or PodContext(pod_id="pod1", hostname="web-0"),
        settings=settings,
        host=read_host_facts(req, settings.host_dev_root),
        volumes_dir=tmp_path / "volumes",
        **kwargs,
    )


def spec_of(tmp_path: Path, **kwargs) -> dict:
    return build(tmp_path, **kwargs).spec


def req_with(**kwargs) -> ContainerRequest:
    base = dict(name="app", image="busybox", command=["sh"])
    base.update(kwargs)
    return ContainerRequest(**base)


def security(**kwargs) -> ContainerSecurity:
    return ContainerSecurity(**kwargs)


# --- args, env, cwd ------------------------------------------------------------------------------------------

IMG = ImageRuntimeConfig(entrypoint=["/entry"], cmd=["--default"])


@pytest.mark.parametrize(
    ("command", "args", "image", "expected"),
    [
        (["/cmd"], ["a"], IMG, ["/cmd", "a"]),
        (["/cmd"], [], IMG, ["/cmd"]),  # command drops both entrypoint and image cmd
        ([], ["a", "b"], IMG, ["/entry", "a", "b"]),  # args replace the image cmd only
        ([], [], IMG, ["/entry", "--default"]),
        ([], [], ImageRuntimeConfig(cmd=["/bin/sh"]), ["/bin/sh"]),
        ([], ["x"], ImageRuntimeConfig(cmd=["/bin/sh"]), ["x"]),
    ],
)
def test_command_args_matrix(tmp_path, command, args, image, expected):
    req = req_with(command=command, args=args)
    assert spec_of(tmp_path, req=req, image=image)["process"]["args"] == expected


def test_no_command_anywhere_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="no command specified"):
        build(tmp_path, req=req_with(command=[]), image=ImageRuntimeConfig())


def test_env_precedence_defaults_image_request(tmp_path):
    image = ImageRuntimeConfig(env=["PATH=/img/bin", "IMG=1", "SHARED=image", "NOVALUE"])
    req = req_with(envs=[("SHARED", "request"), ("REQ", "2"), ("EMPTY", "")], tty=True)
    env = spec_of(tmp_path, req=req, image=image)["process"]["env"]
    assert env == [
        "PATH=/img/bin", "HOSTNAME=web-0", "TERM=xterm", "IMG=1", "SHARED=request", "NOVALUE", "REQ=2", "EMPTY=",
        "HOME=/root",
    ]


def test_env_defaults_without_tty_and_home_override(tmp_path):
    req = req_with(envs=[("HOME", "/custom")])
    env = spec_of(tmp_path, req=req, user=ProcessUser(1, 1, home="/home/u"))["process"]["env"]
    assert env == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=web-0",
                   "HOME=/custom"]


@pytest.mark.parametrize(
    ("requested", "image_dir", "expected"),
    [("/req", "/img", "/req"), ("", "/img", "/img"), ("", "", "/"), ("", "rel/dir", "/rel/dir")],
)
def test_working_dir_precedence(tmp_path, requested, image_dir, expected):
    spec = spec_of(tmp_path, req=req_with(working_dir=requested), image=ImageRuntimeConfig(working_dir=image_dir))
    assert spec["process"]["cwd"] == expected


def test_process_basics(tmp_path):
    user = ProcessUser(uid=1000, gid=1001, additional_gids=[5, 6], home="/home/app")
    spec = spec_of(tmp_path, req=req_with(tty=True, annotations={"a": "b"}), user=user)
    proc = spec["process"]
    assert proc["terminal"] is True
    assert proc["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [5, 6]}
    limit = achievable_nofile_limit(1048576)
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": limit, "soft": limit}]
    assert spec["ociVersion"] == "1.0.2"
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": False}
    assert spec["hostname"] == "web-0"
    assert spec["annotations"] == {"a": "b"}
    assert spec["linux"]["cgroupsPath"] == "/cripy/cripy-c0ffee"
    json.dumps(spec)  # must be serializable as config.json


def test_rlimit_within_daemon_hard_limit_is_kept(tmp_path):
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)
    built = build(tmp_path, settings=SpecSettings(rlimit_nofile=wanted))
    assert built.spec["process"]["rlimits"][0]["hard"] == wanted
    assert built.warnings == []


def test_cgroup_parent_from_pod(tmp_path):
    spec = spec_of(tmp_path, pod=PodContext(pod_id="p", cgroup_parent="/kubepods/podX/"))
    assert spec["linux"]["cgroupsPath"] == "/kubepods/podX/cripy-c0ffee"


# --- capabilities --------------------------------------------------------------------------------------------


def caps_of(tmp_path, **sec) -> dict:
    return spec_of(tmp_path, req=req_with(security=security(**sec)))["process"]["capabilities"]


def test_default_capabilities_in_bounding_effective_permitted(tmp_path):
    c = caps_of(tmp_path)
    for name in ("bounding", "effective", "permitted"):
        assert c[name] == DEFAULT_CAPS
    assert c["inheritable"] == [] and c["ambient"] == []


def test_add_and_drop_accept_any_spelling(tmp_path):
    c = caps_of(tmp_path, capabilities_add=["net_admin", "CAP_SYS_TIME"], capabilities_drop=["CHOWN", "cap_kill"])
    assert c["effective"] == [x for x in DEFAULT_CAPS if x not in ("CAP_CHOWN", "CAP_KILL")] + [
        "CAP_NET_ADMIN", "CAP_SYS_TIME"]


def test_add_all_is_every_known_capability(tmp_path):
    assert set(caps_of(tmp_path, capabilities_add=["ALL"])["bounding"]) == set(capabilities.grantable_capabilities())


def test_add_all_then_drop_one(tmp_path):
    c = caps_of(tmp_path, capabilities_add=["ALL"], capabilities_drop=["SYS_ADMIN"])
    assert set(c["bounding"]) == set(capabilities.grantable_capabilities()) - {"CAP_SYS_ADMIN"}


def test_drop_all_then_add_one(tmp_path):
    assert caps_of(tmp_path, capabilities_add=["NET_BIND_SERVICE"], capabilities_drop=["all"])["bounding"] == [
        "CAP_NET_BIND_SERVICE"]


def test_drop_all_alone_leaves_nothing(tmp_path):
    assert caps_of(tmp_path, capabilities_drop=["ALL"])["effective"] == []


def test_add_and_drop_same_capability_drops(tmp_path):
    assert "CAP_NET_ADMIN" not in caps_of(tmp_path, capabilities_add=["NET_ADMIN"],
                                          capabilities_drop=["NET_ADMIN"])["bounding"]


def test_unknown_capability_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="CAP_BOGUS|BOGUS"):
        caps_of(tmp_path, capabilities_add=["BOGUS"])


def test_ambient_capabilities_are_inheritable_and_permitted(tmp_path):
    c = caps_of(tmp_path, capabilities_drop=["ALL"], add_ambient=["NET_RAW"])
    assert c["ambient"] == c["inheritable"] == c["permitted"] == c["bounding"] == ["CAP_NET_RAW"]


def test_settings_default_capabilities_are_used(tmp_path):
    spec = spec_of(tmp_path, settings=SpecSettings(default_capabilities=["CHOWN"]))
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_CHOWN"]


# --- privileged, readonly, masked paths ------------------------------------------------------------------------


def test_privileged_gets_everything(tmp_path):
    spec = spec_of(tmp_path, req=req_with(security=security(privileged=True, capabilities_drop=["ALL"])))
    linux = spec["linux"]
    assert set(spec["process"]["capabilities"]["bounding"]) == set(capabilities.grantable_capabilities())
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert "seccomp" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "/dev/null" in {d["path"] for d in linux["devices"]}
    assert not any(d["path"].startswith(("/dev/pts/", "/dev/shm/")) for d in linux["devices"])
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "rw" in mounts["/sys"]["options"] and "rw" in mounts["/sys/fs/cgroup"]["options"]


def test_unprivileged_sysfs_and_cgroup_are_readonly(tmp_path):
    mounts = {m["destination"]: m for m in spec_of(tmp_path)["mounts"]}
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]


def test_host_devices_lists_device_nodes(tmp_path):
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    (dev / "sub").mkdir()
    (dev / "plain").write_text("")
    os.symlink("/dev/null", dev / "link")
    devices = dict(host_devices(str(dev)))
    assert devices == {}  # no device nodes without mknod; regular files and links are skipped
    real = dict(host_devices("/dev"))
    assert "/dev/null" in real and stat.S_ISCHR(real["/dev/null"].st_mode)
    assert "/dev/console" not in real


def test_readonly_rootfs(tmp_path):
    spec = spec_of(tmp_path, req=req_with(security=security(readonly_rootfs=True)),
                   pod=PodContext(pod_id="p", resolv_conf_path="/run/p/resolv.conf"))
    assert spec["root"]["readonly"] is True
    resolv = next(m for m in spec["mounts"] if m["destination"] == "/etc/resolv.conf")
    assert "ro" in resolv["options"]


def test_default_masked_and_readonly_paths(tmp_path):
    linux = spec_of(tmp_path)["linux"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]


def test_explicit_masked_paths_replace_defaults_and_empty_means_none(tmp_path):
    linux = spec_of(tmp_path, req=req_with(security=security(masked_paths=["/proc/x"], readonly_paths=[])))["linux"]
    assert linux["maskedPaths"] == ["/proc/x"]
    assert linux["readonlyPaths"] == []


def test_no_new_privs(tmp_path):
    assert spec_of(tmp_path, req=req_with(security=security(no_new_privs=True)))["process"]["noNewPrivileges"]
    assert not spec_of(tmp_path)["process"]["noNewPrivileges"]


# --- seccomp -------------------------------------------------------------------------------------------------


def all_syscalls(profile: dict) -> set[str]:
    return {n for s in profile["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" and "args" not in s for n in s["names"]}


def test_runtime_default_seccomp(tmp_path):
    profile = spec_of(tmp_path)["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"][0] in ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")
    allowed = all_syscalls(profile)
    for needed in ("execve", "read", "write", "openat", "clone", "wait4", "socket", "bind", "accept4", "poll",
                   "nanosleep", "clock_nanosleep", "ioctl", "getdents64", "exit_group", "capset", "setgroups",
                   "prctl", "fchown", "rt_sigreturn"):
        assert needed in allowed or any(needed in s["names"] for s in profile["syscalls"]), needed
    assert not {"mount", "unshare", "setns", "reboot", "init_module", "ptrace", "bpf"} & allowed
    for entry in profile["syscalls"]:
        assert not {"includes", "excludes", "comment"} & entry.keys()
    clone = [s for s in profile["syscalls"] if s["names"] == ["clone"]]
    assert clone and clone[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    clone3 = next(s for s in profile["syscalls"] if s["names"] == ["clone3"])
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38


def test_runtime_default_follows_capabilities(tmp_path):
    spec = spec_of(tmp_path, req=req_with(security=security(capabilities_add=["SYS_ADMIN", "SYS_PTRACE"])))
    profile = spec["linux"]["seccomp"]
    allowed = all_syscalls(profile)
    assert {"mount", "unshare", "setns", "clone", "clone3", "ptrace", "process_vm_readv"} <= allowed
    assert not any(s["action"] == "SCMP_ACT_ERRNO" for s in profile["syscalls"])  # no clone3 ENOSYS stub


def test_unconfined_seccomp(tmp_path):
    spec = spec_of(tmp_path, req=req_with(security=security(seccomp=SecurityProfile("unconfined"))))
    assert "seccomp" not in spec["linux"]


def test_localhost_seccomp_is_loaded_and_rendered(tmp_path, host_dir):
    path = host_dir / "profile.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_LOG",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "comment": "no dirs"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        ],
    }))
    spec = spec_of(tmp_path, req=req_with(security=security(seccomp=SecurityProfile("localhost", str(path)))))
    profile = spec["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_LOG"
    assert profile["syscalls"] == [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    assert len(profile["architectures"]) == 2


def test_localhost_oci_form_passes_through(host_dir):
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO"}]}
    assert seccomp.render_profile(oci, []) == oci


def test_missing_localhost_profile_is_invalid(tmp_path, host_dir):
    with pytest.raises(InvalidArgument, match="does not exist"):
        build(tmp_path, req=req_with(security=security(seccomp=SecurityProfile("localhost", str(host_dir / "no")))))


def test_malformed_localhost_profile_is_invalid(tmp_path, host_dir):
    (host_dir / "bad.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        seccomp.load_localhost_profile(str(host_dir / "bad.json"))
    (host_dir / "nodefault.json").write_text("{}")
    with pytest.raises(InvalidArgument, match="defaultAction"):
        seccomp.load_localhost_profile(str(host_dir / "nodefault.json"))


def test_privileged_ignores_requested_seccomp(tmp_path, host_dir):
    req = req_with(security=security(privileged=True, seccomp=SecurityProfile("localhost", str(host_dir / "x"))))
    assert "seccomp" not in spec_of(tmp_path, req=req)["linux"]


def test_render_profile_conditions():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {"names": ["b"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.10"}},
            {"names": ["c"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
            {"names": ["d"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_X"]}},
        ],
    }
    names = lambda p: [s["names"][0] for s in p["syscalls"]]  # noqa: E731
    assert names(seccomp.render_profile(profile, [], goarch="amd64", kernel_release="5.4.0")) == ["d"]
    assert names(seccomp.render_profile(profile, ["CAP_X"], goarch="arm64", kernel_release="6.1.0-13-amd64")) == [
        "a", "b", "c"]


def test_runtime_default_architectures_per_arch():
    arm = seccomp.render_profile(seccomp.default_profile(), [], goarch="arm64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert any("set_tls" in s["names"] for s in seccomp.render_profile(seccomp.default_profile(), [], goarch="arm")[
        "syscalls"])
    x86 = seccomp.render_profile(seccomp.default_profile(), [], goarch="amd64")
    assert x86["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert "arch_prctl" in all_syscalls(x86) and "arch_prctl" not in all_syscalls(arm)


# --- oom score -----------------------------------------------------------------------------------------------


def test_negative_oom_score_adj_is_clamped_with_warning(tmp_path):
    built = build(tmp_path, req=req_with(resources=Resources(oom_score_adj=-997)),
                  settings=SpecSettings(rlimit_nofile=1024))
    assert built.spec["process"]["oomScoreAdj"] == 0
    assert len(built.warnings) == 1 and "-997" in built.warnings[0]


def test_negative_oom_score_adj_allowed_by_settings(tmp_path):
    built = build(tmp_path, req=req_with(resources=Resources(oom_score_adj=-997)),
                  settings=SpecSettings(allow_negative_oom_score_adj=True, rlimit_nofile=1024))
    assert built.spec["process"]["oomScoreAdj"] == -997 and built.warnings == []


def test_positive_oom_score_adj_kept(tmp_path):
    assert spec_of(tmp_path, req=req_with(resources=Resources(oom_score_adj=1000)))["process"]["oomScoreAdj"] == 1000


# --- mounts --------------------------------------------------------------------------------------------------


def test_default_mounts_and_pod_files(tmp_path):
    pod = PodContext(pod_id="p", hostname="h", hostname_path="/run/p/hostname", hosts_path="/run/p/hosts",
                     resolv_conf_path="/run/p/resolv.conf", shm_path="/run/p/shm")
    mounts = {m["destination"]: m for m in spec_of(tmp_path, pod=pod)["mounts"]}
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/dev"]["type"] == "tmpfs"
    assert mounts["/dev/pts"]["type"] == "devpts"
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    assert mounts["/sys"]["type"] == "sysfs"
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    assert (mounts["/dev/shm"]["type"], mounts["/dev/shm"]["source"]) == ("bind", "/run/p/shm")
    for dest, src in (("/etc/hostname", "/run/p/hostname"), ("/etc/hosts", "/run/p/hosts"),
                      ("/etc/resolv.conf", "/run/p/resolv.conf")):
        assert mounts[dest]["source"] == src and "rw" in mounts[dest]["options"]


def test_without_pod_shm_a_private_tmpfs_is_used(tmp_path):
    shm = next(m for m in spec_of(tmp_path)["mounts"] if m["destination"] == "/dev/shm")
    assert shm["type"] == "tmpfs" and "mode=1777" in shm["options"]


def test_host_ipc_binds_host_shm_and_mounts_its_own_mqueue(tmp_path):
    mounts = {m["destination"]: m for m in spec_of(tmp_path, pod=PodContext(pod_id="p", host_ipc=True,
                                                                            shm_path="/run/p/shm"))["mounts"]}
    assert mounts["/dev/shm"]["source"] == "/dev/shm" and mounts["/dev/shm"]["type"] == "bind"
    assert mounts["/dev/mqueue"]["type"] == "mqueue"  # shows the queues of the (host's) IPC namespace


def test_request_mounts_options_propagation_and_order(tmp_path, host_dir):
    (host_dir / "a").mkdir()
    (host_dir / "a" / "b").mkdir()
    (host_dir / "f").write_text("x")
    os.symlink(host_dir / "a", host_dir / "link")
    req = req_with(mounts=[
        Mount("/data/deep/er", str(host_dir / "a" / "b"), propagation="rshared"),
        Mount("/data", str(host_dir / "link"), readonly=True, propagation="rslave"),
        Mount("/file", str(host_dir / "f")),
    ])
    spec = spec_of(tmp_path, req=req)
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.index("/data") < dests.index("/data/deep/er")
    assert dests.index("/dev") < dests.index("/dev/pts") < dests.index("/sys/fs/cgroup")
    depths = [len(d.strip("/").split("/")) for d in dests]
    assert depths == sorted(depths)
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/data"] == {"destination": "/data", "type": "bind", "source": str(host_dir / "a"),
                               "options": ["rbind", "ro", "rslave"]}  # host symlink resolved
    assert mounts["/data/deep/er"]["options"] == ["rbind", "rw", "rshared"]
    assert mounts["/file"]["options"] == ["rbind", "rw", "rprivate"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"


def test_rslave_only_sets_rslave_root_and_private_sets_none(tmp_path, host_dir):
    spec = spec_of(tmp_path, req=req_with(mounts=[Mount("/x", str(host_dir), propagation="rslave")]))
    assert spec["linux"]["rootfsPropagation"] == "rslave"
    assert "rootfsPropagation" not in spec_of(tmp_path, req=req_with(mounts=[Mount("/x", str(host_dir))]))["linux"]


@pytest.mark.parametrize(("mount", "options"), [
    (dict(readonly=False), ["rbind", "rw", "rprivate"]),
    (dict(readonly=True), ["rbind", "ro", "rprivate"]),
    (dict(readonly=True, recursive_read_only=True), ["rbind", "ro", "rro", "rprivate"]),
    (dict(readonly=True, propagation="rslave"), ["rbind", "ro", "rslave"]),
    (dict(readonly=True, propagation="rshared"), ["rbind", "ro", "rshared"]),
])
def test_read_only_and_recursive_read_only_mount_options(tmp_path, host_dir, mount, options):
    spec = spec_of(tmp_path, req=req_with(mounts=[Mount("/vol", str(host_dir), **mount)]))
    (vol,) = [m for m in spec["mounts"] if m["destination"] == "/vol"]
    assert vol["options"] == options
    # Only a recursive read-only mount gets runc's "rro"; a private one leaves the root's propagation alone.
    assert ("rro" in vol["options"]) == mount.get("recursive_read_only", False)


def test_request_mount_replaces_default_at_same_destination(tmp_path, host_dir):
    hosts = host_dir / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    pod = PodContext(pod_id="p", hosts_path="/run/p/hosts")
    spec = spec_of(tmp_path, req=req_with(mounts=[Mount("/etc/hosts/", str(hosts))]), pod=pod)
    etc_hosts = [m for m in spec["mounts"] if m["destination"] == "/etc/hosts"]
    assert len(etc_hosts) == 1 and etc_hosts[0]["source"] == str(hosts)


def test_missing_host_path_is_invalid(tmp_path, host_dir):
    with pytest.raises(InvalidArgument, match=r"mounts\[0\] \(/x\): host path .* does not exist"):
        build(tmp_path, req=req_with(mounts=[Mount("/x", str(host_dir / "missing"))]))


def test_duplicate_destination_is_invalid(tmp_path, host_dir):
    with pytest.raises(InvalidArgument, match="duplicates"):
        build(tmp_path, req=req_with(mounts=[Mount("/x", str(host_dir)), Mount("/x/", str(host_dir))]))


def test_image_volumes_become_anonymous_volume_dirs(tmp_path, host_dir):
    image = ImageRuntimeConfig(cmd=["sh"], volumes=["/var/lib/db", "/data", "/var/lib/db/"])
    req = req_with(command=[], mounts=[Mount("/data", str(host_dir))])
    built = build(tmp_path, req=req, image=image)
    volume_mounts = [m for m in built.spec["mounts"] if m["destination"] == "/var/lib/db"]
    assert len(volume_mounts) == 1
    assert built.volume_dirs == [Path(volume_mounts[0]["source"])]
    assert built.volume_dirs[0].parent == tmp_path / "volumes"
    assert not built.volume_dirs[0].exists()  # the caller creates it
    data = [m for m in built.spec["mounts"] if m["destination"] == "/data"]
    assert len(data) == 1 and data[0]["source"] == str(host_dir)  # the request mount covers that volume


# --- namespaces ----------------------------------------------------------------------------------------------

POD_PATHS = {"network": "/run/p/ns/net", "ipc": "/run/p/ns/ipc", "uts": "/run/p/ns/uts", "pid": "/run/p/ns/pid"}


def namespaces(spec: dict) -> dict[str, str | None]:
    return {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}


def test_pod_namespaces_are_joined_and_pid_is_private(tmp_path):
    spec = spec_of(tmp_path, pod=PodContext(pod_id="p", hostname="h", namespace_paths=POD_PATHS))
    assert namespaces(spec) == {"pid": None, "network": "/run/p/ns/net", "ipc": "/run/p/ns/ipc",
                                "uts": "/run/p/ns/uts", "mount": None}
    assert "cgroup" not in namespaces(spec) and "user" not in namespaces(spec)


def test_net_alias_is_accepted(tmp_path):
    spec = spec_of(tmp_path, pod=PodContext(pod_id="p", namespace_paths={"net": "/n"}))
    assert namespaces(spec)["network"] == "/n"


def test_no_paths_means_new_namespaces(tmp_path):
    assert namespaces(spec_of(tmp_path)) == {"pid": None, "network": None, "ipc": None, "uts": None, "mount": None}


def test_pid_pod_joins_pod_pid_namespace(tmp_path):
    req = req_with(security=security(namespace_options=NamespaceOptions(pid=NamespaceMode.POD)))
    spec = spec_of(tmp_path, req=req, pod=PodContext(pod_id="p", namespace_paths=POD_PATHS))
    assert namespaces(spec)["pid"] == "/run/p/ns/pid"


def test_pid_pod_without_pod_pid_namespace_fails(tmp_path):
    req = req_with(security=security(namespace_options=NamespaceOptions(pid=NamespaceMode.POD)))
    with pytest.raises(FailedPrecondition, match="no shared PID namespace"):
        build(tmp_path, req=req)


def test_pid_target(tmp_path):
    req = req_with(security=security(namespace_options=NamespaceOptions(pid=NamespaceMode.TARGET, target_id="t")))
    assert namespaces(spec_of(tmp_path, req=req, target_pid_ns="/proc/42/ns/pid"))["pid"] == "/proc/42/ns/pid"
    with pytest.raises(FailedPrecondition, match="'t'"):
        build(tmp_path, req=req)


def test_host_namespaces_are_omitted(tmp_path):
    req = req_with(security=security(namespace_options=NamespaceOptions(
        network=NamespaceMode.NODE, pid=NamespaceMode.NODE, ipc=NamespaceMode.NODE)))
    pod = PodContext(pod_id="p", hostname="node", namespace_paths=POD_PATHS, host_network=True, host_ipc=True,
                     host_pid=True)
    spec = spec_of(tmp_path, req=req, pod=pod)
    assert namespaces(spec) == {"mount": None}
    assert "hostname" not in spec  # runc refuses a hostname without a UTS namespace


def test_host_pid_from_pod_wins(tmp_path):
    spec = spec_of(tmp_path, pod=PodContext(pod_id="p", host_pid=True))
    assert "pid" not in namespaces(spec)


# --- devices -------------------------------------------------------------------------------------------------


def test_device_mapping_uses_host_node(tmp_path):
    st = os.stat("/dev/null")
    spec = spec_of(tmp_path, req=req_with(devices=[Device("/dev/mynull", "/dev/null", "rw")]))
    assert spec["linux"]["devices"] == [{
        "path": "/dev/mynull", "type": "c", "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
    }]
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_directory_is_expanded(tmp_path, host_dir):
    (host_dir / "snd").mkdir()
    os.mknod(host_dir / "snd" / "pcm", stat.S_IFCHR | 0o660, os.makedev(116, 7))
    os.chmod(host_dir / "snd" / "pcm", 0o660)  # not subject to the umask
    os.mknod(host_dir / "disk", stat.S_IFBLK | 0o600, os.makedev(8, 1))
    (host_dir / "notadevice").write_text("")
    spec = spec_of(tmp_path, req=req_with(devices=[Device("/dev/x", str(host_dir), "r")]),
                   settings=SpecSettings(host_dev_root=str(host_dir)))
    devices = {d["path"]: (d["type"], d["major"], d["minor"], d["fileMode"]) for d in spec["linux"]["devices"]}
    assert devices == {"/dev/x/disk": ("b", 8, 1, 0o600), "/dev/x/snd/pcm": ("c", 116, 7, 0o660)}
    rules = spec["linux"]["resources"]["devices"][1:]
    assert sorted((r["type"], r["major"], r["minor"], r["access"]) for r in rules) == [
        ("b", 8, 1, "r"), ("c", 116, 7, "r")]


def test_directory_without_devices_is_invalid(tmp_path, host_dir):
    os.symlink("/dev/null", host_dir / "null")  # links inside a device directory are not followed
    with pytest.raises(InvalidArgument, match="contains no devices"):
        build(tmp_path, req=req_with(devices=[Device("/dev/x", str(host_dir))]),
              settings=SpecSettings(host_dev_root=str(host_dir)))


def test_a_device_directory_outside_the_dev_root_is_refused_unwalked(tmp_path, host_dir):
    """host_path "/" made cripy walk the whole host; only directories under /dev (the dev root) are walked."""
    for outside in ("/", "/proc", str(host_dir)):
        with pytest.raises(InvalidArgument, match="outside /dev"):
            build(tmp_path, req=req_with(devices=[Device("/dev/x", outside)]))


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_host_devices_walks_subdirectories_but_skips_pseudo_fs(tmp_path):
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    (dev / "input").mkdir()
    os.mknod(dev / "pts" / "0", stat.S_IFCHR | 0o620, os.makedev(136, 0))
    os.mknod(dev / "input" / "event0", stat.S_IFCHR | 0o660, os.makedev(13, 64))
    os.mknod(dev / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    os.mknod(dev / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    assert [path for path, _st in host_devices(str(dev))] == ["/dev/input/event0", "/dev/loop0"]


def test_device_errors(tmp_path, host_dir):
    (host_dir / "file").write_text("")
    with pytest.raises(InvalidArgument, match="does not exist"):
        build(tmp_path, req=req_with(devices=[Device("/dev/x", str(host_dir / "nope"))]))
    with pytest.raises(InvalidArgument, match="neither a device"):
        build(tmp_path, req=req_with(devices=[Device("/dev/x", str(host_dir / "file"))]))


# --- resources, sysctls --------------------------------------------------------------------------------------


def test_spec_resources_full_mapping():
    res = Resources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 28,
                    cpuset_cpus="0-1", cpuset_mems="0", hugepage_limits={"2MB": 1 << 21}, oom_score_adj=5,
                    memory_swap_limit_in_bytes=1 << 29, unified={"memory.high": "1G"}, pids_limit=100)
    assert spec_resources(res) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 1 << 28, "swap": 1 << 29},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}],
        "pids": {"limit": 100},
        "unified": {"memory.high": "1G"},
    }


def test_spec_resources_empty_and_unlimited():
    assert spec_resources(Resources()) == {}
    assert spec_resources(Resources(cpu_quota=-1, memory_swap_limit_in_bytes=-1)) == {
        "cpu": {"quota": -1}, "memory": {"swap": -1}}


def test_resources_in_spec_with_default_pids_limit(tmp_path):
    req = req_with(resources=Resources(cpu_shares=2, memory_limit_in_bytes=1 << 20))
    res = spec_of(tmp_path, req=req, settings=SpecSettings(pids_limit=1024))["linux"]["resources"]
    assert res["cpu"] == {"shares": 2} and res["memory"] == {"limit": 1 << 20}
    assert res["pids"] == {"limit": 1024}
    req = req_with(resources=Resources(pids_limit=10))
    assert spec_of(tmp_path, req=req, settings=SpecSettings(pids_limit=1024))["linux"]["resources"]["pids"] == {
        "limit": 10}
    assert "pids" not in spec_of(tmp_path)["linux"]["resources"]


def test_sysctls_pass_through_except_host_namespaces(tmp_path):
    sysctls = {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1",
               "fs.mqueue.msg_max": "20"}
    assert spec_of(tmp_path, pod=PodContext(pod_id="p", sysctls=sysctls))["linux"]["sysctl"] == sysctls
    assert spec_of(tmp_path, pod=PodContext(pod_id="p", sysctls=sysctls, host_network=True))["linux"]["sysctl"] == {
        "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20"}
    assert spec_of(tmp_path, pod=PodContext(pod_id="p", sysctls=sysctls, host_ipc=True))["linux"]["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "0"}
