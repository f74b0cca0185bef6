"""cri/validate.py: the checks every request's strings pass, exec commands, cpu lists, short error values."""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2 as pb

from cripy.cri import validate
from cripy.errors import InvalidArgument


def test_a_nul_byte_anywhere_in_a_request_is_refused_naming_the_field():
    cases = {
        "config.metadata.name": pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="a\0b"))),
        "config.envs[1].value": pb.CreateContainerRequest(config=pb.ContainerConfig(
            envs=[pb.KeyValue(key="A", value="1"), pb.KeyValue(key="B", value="x\0")])),
        "config.labels['k'] (key)": pb.CreateContainerRequest(config=pb.ContainerConfig(labels={"k\0": "v"})),
        "cmd[0]": pb.ExecSyncRequest(container_id="c", cmd=["\0"]),
        "config.linux.cgroup_parent": pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(
            linux=pb.LinuxPodSandboxConfig(cgroup_parent="/a\0"))),
    }
    for field, request in cases.items():
        with pytest.raises(InvalidArgument, match="NUL") as caught:
            validate.request_strings(request, "")
        assert str(caught.value).startswith(field.split(" ")[0].split("[")[0]), str(caught.value)


def test_annotation_values_are_free_text():
    validate.request_strings(pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "x\0" * 100_000})), "")


def test_strings_are_bounded_by_what_the_field_can_be():
    with pytest.raises(InvalidArgument, match="longer than 4096 bytes"):
        validate.request_strings(pb.ContainerStatusRequest(container_id="x" * 5000), "")
    with pytest.raises(InvalidArgument, match="longer than 4096 bytes"):  # counted in bytes, not characters
        validate.request_strings(pb.ContainerStatusRequest(container_id="é" * 2049), "")
    validate.request_strings(pb.CreateContainerRequest(config=pb.ContainerConfig(args=["a" * 100_000])), "")
    with pytest.raises(InvalidArgument, match="args"):
        validate.request_strings(pb.CreateContainerRequest(config=pb.ContainerConfig(args=["a" * 200_000])), "")


def test_exec_commands_must_fit_execve():
    """The request's strings come first: a NUL or an argument over MAX_ARG_STRLEN is refused there."""
    validate.exec_command(["echo", "x" * 100_000], "exec")
    for cmd, message in (([], "empty"), ([""], "empty"), (["y" * 100_000] * 20, "together")):
        with pytest.raises(InvalidArgument, match=message) as caught:
            validate.exec_command(cmd, "exec")
        assert len(str(caught.value)) < 300
    for cmd, message in ((["a\0"], "NUL"), (["x" * (1 << 20)], "longer than")):
        with pytest.raises(InvalidArgument, match=message):
            validate.request_strings(pb.ExecSyncRequest(container_id="c", cmd=cmd), "")


def test_cpu_lists():
    assert validate.cpu_list("0-2,5", "cpus") == {0, 1, 2, 5}
    for bad in ("", "a", "1-", "-1", "3-1", "0-9000", "1,,2", "0x1"):
        with pytest.raises(InvalidArgument, match="cpus"):
            validate.cpu_list(bad, "cpus")


def test_shown_cuts_long_values():
    assert validate.shown("abc") == "'abc'"
    text = validate.shown("x" * 100_000)
    assert len(text) < 120 and "100000 long" in text


def test_checking_a_request_with_maps_does_not_load_protobufs_descriptor_messages():
    """descriptor_pb2 (what GetOptions() returns) costs the daemon 0.5 MiB that it keeps: maps are told by their
    container type instead."""
    import subprocess
    import sys

    script = ("import sys, cripy.cri\n"
              "from cri_api.v1 import api_pb2 as pb\n"
              "from cripy.cri import validate\n"
              "validate.request_strings(pb.CreateContainerRequest(config=pb.ContainerConfig(labels={'a': 'b'},"
              " annotations={'c': 'd'})), '')\n"
              "print('google.protobuf.descriptor_pb2' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
