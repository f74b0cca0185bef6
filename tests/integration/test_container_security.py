"""The security a kubelet-facing runtime gives containers, seen from inside them: users and groups (run_as_user,
run_as_username, the image's User, run_as_group, supplemental groups), read-only rootfs, capabilities (default set,
add, drop, ALL), privileged, no_new_privs, seccomp (RuntimeDefault, Unconfined) and masked /proc paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from cripy.linux.capabilities import known_capabilities, parse_cap_mask
from tests.integration.podlib import USER_IMAGE, PodEnv
from tests.integration.shapes import critest_pod_config

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


@pytest.fixture(scope="module")
def pod(pod_env: PodEnv) -> tuple[str, api_pb2.PodSandboxConfig]:
    return pod_env.run_pod("security-pod")


def run_with(env: PodEnv, pod: tuple, name: str, security: api_pb2.LinuxContainerSecurityContext,
             image: str | None = None) -> str:
    pod_id, config = pod
    kwargs = {"image": image} if image else {}
    ctr_config = env.container_config(name, SLEEP, linux=api_pb2.LinuxContainerConfig(security_context=security),
                                      **kwargs)
    ctr = env.create(pod_id, config, ctr_config)
    env.start(ctr)
    return ctr


def proc_status(env: PodEnv, ctr: str) -> dict[str, str]:
    fields = {}
    for line in env.sh(ctr, "cat /proc/self/status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def effective_caps(env: PodEnv, ctr: str) -> set[str]:
    return set(parse_cap_mask(proc_status(env, ctr)["CapEff"]))


# ---- users ---------------------------------------------------------------------------------------------------


def test_run_as_user_and_group_with_supplemental_groups(pod_env: PodEnv, pod: tuple) -> None:
    security = api_pb2.LinuxContainerSecurityContext(
        run_as_user=api_pb2.Int64Value(value=1234), run_as_group=api_pb2.Int64Value(value=4321),
        supplemental_groups=[5555, 6666])
    ctr = run_with(pod_env, pod, "uid-gid", security)
    assert pod_env.sh(ctr, "id -u").strip() == "1234"
    assert pod_env.sh(ctr, "id -g").strip() == "4321"
    assert {"4321", "5555", "6666"} <= set(pod_env.sh(ctr, "id -G").split())


def test_run_as_username_resolves_in_the_containers_passwd(pod_env: PodEnv, pod: tuple) -> None:
    ctr = run_with(pod_env, pod, "username", api_pb2.LinuxContainerSecurityContext(run_as_username="app"))
    assert pod_env.sh(ctr, "id -u").strip() == "1000"
    assert pod_env.sh(ctr, "id -g").strip() == "1000"
    assert "2000" in pod_env.sh(ctr, "id -G").split(), "the group file's supplementary group of app is missing"


def test_image_user_is_used_when_the_request_sets_none(pod_env: PodEnv, pod: tuple) -> None:
    ctr = run_with(pod_env, pod, "image-user", api_pb2.LinuxContainerSecurityContext(), image=USER_IMAGE)
    ids = pod_env.sh(ctr, "id").strip()
    assert ids.startswith("uid=1000(app) gid=1000(app)"), ids
    assert "2000(extra)" in ids, ids
    assert pod_env.sh(ctr, "pwd").strip() == "/home/app"
    # run_as_user wins over the image's User.
    root = run_with(pod_env, pod, "image-user-root",
                    api_pb2.LinuxContainerSecurityContext(run_as_user=api_pb2.Int64Value(value=0)), image=USER_IMAGE)
    assert pod_env.sh(root, "id -u").strip() == "0"


@pytest.fixture(scope="module")
def critest_pod(pod_env: PodEnv) -> tuple[str, api_pb2.PodSandboxConfig]:
    return pod_env.run_pod(critest_pod_config(pod_env, "Security-Context-SupplementalGroupsPolicy-PodSandbox-"))


# The user image's app (uid 1000, gid 1000) is a member of group extra (2000) in its /etc/group.
@pytest.mark.parametrize(("policy", "groups"), [
    (None, [1000, 2000, 1234]),  # unset is Merge
    (api_pb2.Merge, [1000, 2000, 1234]),
    (api_pb2.Strict, [1000, 1234]),  # the image's /etc/group is not consulted
])
def test_supplemental_groups_policy_inside_and_in_container_status(pod_env: PodEnv, critest_pod: tuple,
                                                                   policy: int | None, groups: list[int]) -> None:
    security = api_pb2.LinuxContainerSecurityContext(run_as_user=api_pb2.Int64Value(value=1000),
                                                     supplemental_groups=[1234])
    if policy is not None:
        security.supplemental_groups_policy = policy
    name = "container-with-SupplementalGroupsPolicy-" + ("unset" if policy is None else str(policy))
    ctr = run_with(pod_env, critest_pod, name, security, image=USER_IMAGE)
    assert pod_env.sh(ctr, "id -G").split() == [str(g) for g in sorted(groups)]  # an exec'd process
    verbose = pod_env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    first = json.loads(verbose.info["info"])["pid"]  # the container's first process, seen from the host
    assert _groups_of(first) == sorted(groups)
    user = pod_env.status(ctr).user.linux
    assert (user.uid, user.gid, list(user.supplemental_groups)) == (1000, 1000, groups)


def _groups_of(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return [int(g) for g in line.split()[1:]]
    raise AssertionError(f"/proc/{pid}/status has no Groups line")


# ---- filesystem ------------------------------------------------------------------------------------------------


def test_read_only_rootfs_refuses_writes(pod_env: PodEnv, pod: tuple) -> None:
    ctr = run_with(pod_env, pod, "ro-rootfs", api_pb2.LinuxContainerSecurityContext(readonly_rootfs=True))
    reply = pod_env.exec(ctr, ["touch", "/written"])
    assert reply.exit_code != 0
    assert b"Read-only file system" in reply.stderr, reply.stderr
    # The pod's files and /dev/shm stay writable where they should be.
    pod_env.sh(ctr, "echo ok > /dev/shm/probe")
    writable = run_with(pod_env, pod, "rw-rootfs", api_pb2.LinuxContainerSecurityContext())
    pod_env.sh(writable, "touch /written")


def test_masked_and_read_only_proc_paths(pod_env: PodEnv, pod: tuple) -> None:
    ctr = run_with(pod_env, pod, "masked", api_pb2.LinuxContainerSecurityContext())
    assert pod_env.exec(ctr, ["sh", "-c", "cat /proc/kcore | wc -c"]).stdout.strip() == b"0"
    reply = pod_env.exec(ctr, ["sh", "-c", "echo 1 > /proc/sysrq-trigger"])
    assert reply.exit_code != 0


# ---- capabilities ----------------------------------------------------------------------------------------------


def test_default_capabilities(pod_env: PodEnv, pod: tuple) -> None:
    ctr = run_with(pod_env, pod, "caps-default", api_pb2.LinuxContainerSecurityContext())
    caps = effective_caps(pod_env, ctr)
    assert {"CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"} <= caps
    assert not caps & {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE", "CAP_NET_RAW"}


def test_dropped_and_added_capabilities(pod_env: PodEnv, pod: tuple) -> None:
    security = api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["CHOWN", "KILL"]))
    ctr = run_with(pod_env, pod, "caps-changed", security)
    caps = effective_caps(pod_env, ctr)
    assert "CAP_NET_ADMIN" in caps
    assert not caps & {"CAP_CHOWN", "CAP_KILL"}
    assert "CAP_SETUID" in caps
    assert pod_env.exec(ctr, ["chown", "1:1", "/tmp"]).exit_code != 0, "chown worked without CAP_CHOWN"
    pod_env.sh(ctr, "ip link set lo mtu 1500")  # needs CAP_NET_ADMIN


def test_drop_all_add_one(pod_env: PodEnv, pod: tuple) -> None:
    security = api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(drop_capabilities=["ALL"], add_capabilities=["NET_BIND_SERVICE"]))
    ctr = run_with(pod_env, pod, "caps-all", security)
    status = proc_status(pod_env, ctr)
    assert set(parse_cap_mask(status["CapEff"])) == {"CAP_NET_BIND_SERVICE"}
    assert set(parse_cap_mask(status["CapBnd"])) == {"CAP_NET_BIND_SERVICE"}


def test_non_root_user_has_no_effective_capabilities(pod_env: PodEnv, pod: tuple) -> None:
    ctr = run_with(pod_env, pod, "caps-nonroot",
                   api_pb2.LinuxContainerSecurityContext(run_as_user=api_pb2.Int64Value(value=1000)))
    assert effective_caps(pod_env, ctr) == set()


def _node_lacks_capabilities() -> bool:
    """This node's root runs without some capabilities (e.g. CAP_SYS_RESOURCE in some sandboxes)."""
    with open("/proc/self/status") as f:
        bounding = next(line.split(":")[1].strip() for line in f if line.startswith("CapBnd:"))
    return set(parse_cap_mask(bounding)) != set(known_capabilities())


def test_privileged_container(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("privileged-pod", linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(privileged=True)))
    ctr = run_with(pod_env, (pod_id, config), "privileged", api_pb2.LinuxContainerSecurityContext(privileged=True))
    status = proc_status(pod_env, ctr)
    caps = set(parse_cap_mask(status["CapEff"]))
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"} <= caps
    assert status["Seccomp"] == "0"
    # Host devices are visible and /sys is writable (privileged containers get it read-write).
    assert pod_env.exec(ctr, ["test", "-e", "/dev/null"]).exit_code == 0
    mounts = [line.split() for line in pod_env.sh(ctr, "cat /proc/mounts").splitlines()]
    sys_options = next(fields[3] for fields in mounts if fields[1] == "/sys")
    assert sys_options.split(",")[0] == "rw", sys_options


# ---- no_new_privs and seccomp -------------------------------------------------------------------------------------


def test_no_new_privs(pod_env: PodEnv, pod: tuple) -> None:
    with_nnp = run_with(pod_env, pod, "nnp", api_pb2.LinuxContainerSecurityContext(no_new_privs=True))
    assert proc_status(pod_env, with_nnp)["NoNewPrivs"] == "1"
    without = run_with(pod_env, pod, "no-nnp", api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)))
    assert proc_status(pod_env, without)["NoNewPrivs"] == "0"


def test_seccomp_runtime_default_and_unconfined(pod_env: PodEnv, pod: tuple) -> None:
    default = run_with(pod_env, pod, "seccomp-default", api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)))
    assert proc_status(pod_env, default)["Seccomp"] == "2"
    # The profile refuses what it must: unshare of a user namespace without CAP_SYS_ADMIN... and mount.
    assert pod_env.exec(default, ["unshare", "-U", "true"]).exit_code != 0
    unconfined = run_with(pod_env, pod, "seccomp-unconfined", api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)))
    assert proc_status(pod_env, unconfined)["Seccomp"] == "0"
    unset = run_with(pod_env, pod, "seccomp-unset", api_pb2.LinuxContainerSecurityContext())
    assert proc_status(pod_env, unset)["Seccomp"] == "0", "an unset profile means Unconfined, as the CRI says"
