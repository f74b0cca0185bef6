"""What CreateContainer reads ahead from paths a request names (hostfacts.py), and what build_spec takes from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cripy.containers.hostfacts import HostFacts, read_host_facts
from cripy.containers.model import ContainerRequest, ContainerSecurity, Device, Mount, SecurityProfile
from cripy.errors import InvalidArgument


def request(**kwargs) -> ContainerRequest:
    return ContainerRequest(name="a", image="b", **kwargs)


def test_mount_sources_are_the_host_paths_with_symlinks_resolved(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    facts = read_host_facts(request(mounts=[
        Mount("/data", str(tmp_path / "link")), Mount("/etc/f", str(tmp_path / "file"), readonly=True),
        Mount("/v", "", readonly=True, image="example.com/data:1", image_sub_path="etc"),
    ]))
    # An image volume is left to the image store: its source is its mount, made later.
    assert facts.mount_sources == (str(tmp_path / "data"), str(tmp_path / "file"), "")
    assert read_host_facts(request()).mount_sources == ()


@pytest.mark.parametrize("host_path", ["data", ""])
def test_a_relative_host_path_is_refused(host_path: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"mounts\[0\] \(/data\): host path '{host_path}' is not absolute"):
        read_host_facts(request(mounts=[Mount("/data", host_path)]))


def test_a_missing_host_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for missing in (tmp_path / "missing", tmp_path / "dangling"):
        with pytest.raises(InvalidArgument, match=rf"mounts\[1\] \(/m\): host path {missing} does not exist"):
            read_host_facts(request(mounts=[Mount("/data", str(tmp_path)), Mount("/m", str(missing))]))


def test_devices_are_read_for_the_request() -> None:
    facts = read_host_facts(request(devices=[Device("/dev/mynull", "/dev/null", "rw")]))
    assert [d["path"] for d in facts.devices] == ["/dev/mynull"]
    assert facts.device_rules[0] == {"allow": False, "access": "rwm"}
    assert facts.device_rules[1]["access"] == "rw"
    with pytest.raises(InvalidArgument, match="does not exist"):
        read_host_facts(request(devices=[Device("/dev/x", "/dev/no-such-device")]))


def test_the_localhost_seccomp_profile_is_read_only_when_it_applies(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    asked = SecurityProfile("localhost", str(path))
    assert read_host_facts(request(security=ContainerSecurity(seccomp=asked))).seccomp_localhost == {
        "defaultAction": "SCMP_ACT_LOG"}
    missing = SecurityProfile("localhost", str(tmp_path / "no"))
    with pytest.raises(InvalidArgument, match="does not exist"):
        read_host_facts(request(security=ContainerSecurity(seccomp=missing)))
    # A privileged container runs unconfined: its profile is neither read nor required.
    assert read_host_facts(request(security=ContainerSecurity(privileged=True, seccomp=missing))).seccomp_localhost is None
    assert read_host_facts(request()).seccomp_localhost is None


def test_with_sources_replaces_only_the_mounts_named() -> None:
    facts = HostFacts(mount_sources=("/a", "", "/c"))
    assert facts.with_sources({1: "/run/volume"}).mount_sources == ("/a", "/run/volume", "/c")
    assert facts.mount_sources == ("/a", "", "/c")
