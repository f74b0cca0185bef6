"""`cripy ctl` against an in-process fake CRI server: request building from flags and files, output shapes,
error reporting; plus the pure pieces (CRI log parsing, tables, sizes, endpoints, config files)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cri_api.v1 import api_pb2, api_pb2_grpc
from google.protobuf.message import Message

from cripy.ctl import documents, output
from cripy.ctl import main as ctl_main
from cripy.ctl.verbs import images, streams
from cripy.ctl.client import CRIClient, CRIError, normalize_endpoint
from cripy.ctl.configfile import ConfigFileError, load_container_config, load_pod_config
from cripy.ctl import crilog
from cripy.ctl.crilog import LogFileReader, parse_log_bytes, parse_record

POD_ID = "a" * 64
CONTAINER_ID = "c" * 64
IMAGE_ID = "sha256:" + "1" * 64


class FakeError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeCRI:
    """Both CRI services: records every request; answers from `handlers` (a message, or a function of the
    request returning one or raising FakeError), else with an empty response."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message]] = []
        self.handlers: dict[str, Message | Callable[[Any], Message]] = {}
        for service in ("RuntimeService", "ImageService"):
            for method in api_pb2.DESCRIPTOR.services_by_name[service].methods:
                setattr(self, method.name, self._method(method.name, getattr(api_pb2, method.output_type.name)))

    def _method(self, name: str, response_class: type[Message]) -> Callable[[Any, Any], Message]:
        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            self.calls.append((name, request))
            handler = self.handlers.get(name)
            if handler is None:
                return response_class()
            try:
                return handler(request) if callable(handler) else handler
            except FakeError as error:
                context.abort(error.code, error.details)
        return handle

    def requests(self, name: str) -> list[Any]:
        return [request for call, request in self.calls if call == name]

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]


@dataclass
class Server:
    fake: FakeCRI
    endpoint: str


@pytest.fixture
def cri() -> Iterator[Server]:
    # A short directory: unix socket paths are limited to 108 bytes, pytest's tmp_path can be longer.
    socket_dir = tempfile.mkdtemp(prefix="ctl-", dir="/tmp")
    fake = FakeCRI()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    try:
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(fake, server)
        api_pb2_grpc.add_ImageServiceServicer_to_server(fake, server)
        endpoint = f"unix://{socket_dir}/cri.sock"
        server.add_insecure_port(endpoint)
        server.start()
        yield Server(fake, endpoint)
    finally:
        server.stop(None).wait()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
def ctl(cri: Server) -> Callable[..., int]:
    def run(*args: str) -> int:
        return ctl_main.main(["-r", cri.endpoint, *args])
    return run


def image(id: str, tags: list[str], digests: list[str], size: int) -> api_pb2.Image:
    return api_pb2.Image(id=id, repo_tags=tags, repo_digests=digests, size=size)


# -- runtime info -------------------------------------------------------------------------------------------


def test_version_prints_crictl_lines(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["Version"] = api_pb2.VersionResponse(
        version="0.1.0", runtime_name="cripy", runtime_version="0.1.0", runtime_api_version="v1")
    assert ctl("version") == 0
    assert capsys.readouterr().out == (
        "Version:  0.1.0\nRuntimeName:  cripy\nRuntimeVersion:  0.1.0\nRuntimeApiVersion:  v1\n")
    assert cri.fake.requests("Version")[0].version == "v1"


def test_info_merges_status_and_parsed_info(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["Status"] = api_pb2.StatusResponse(
        status=api_pb2.RuntimeStatus(conditions=[api_pb2.RuntimeCondition(type="RuntimeReady", status=True)]),
        info={"config": json.dumps({"root": "/var/lib/cripy"}), "note": "plain text"})
    assert ctl("info") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"]["conditions"][0] == {"type": "RuntimeReady", "status": True, "reason": "",
                                               "message": ""}
    assert data["config"] == {"root": "/var/lib/cripy"}
    assert data["note"] == "plain text"
    assert cri.fake.requests("Status")[0].verbose


# -- images -------------------------------------------------------------------------------------------------


@pytest.fixture
def two_images(cri: Server) -> None:
    cri.fake.handlers["ListImages"] = api_pb2.ListImagesResponse(images=[
        image("sha256:" + "b" * 64, ["localhost:5000/busybox:1.36", "localhost:5000/busybox:latest"],
              ["localhost:5000/busybox@sha256:" + "d" * 64], 1_462_016),
        image("sha256:" + "a" * 64, [], ["localhost:5000/pause@sha256:" + "e" * 64], 700),
    ])


def test_images_table(two_images, ctl, capsys) -> None:
    assert ctl("images") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    rows = [line.split() for line in lines[1:]]
    # crictl's order: by first tag when both images have one, else by first repo digest; an image without tags
    # shows its digest repository.
    assert rows == [
        ["localhost:5000/busybox", "1.36", "b" * 13, "1.46MB"],
        ["localhost:5000/busybox", "latest", "b" * 13, "1.46MB"],
        ["localhost:5000/pause", "<none>", "a" * 13, "700B"],
    ]
    # Columns line up like crictl's tabwriter (at least 20 wide, 3 spaces of padding).
    assert lines[0].index("TAG") == lines[1].index("1.36") == len("localhost:5000/busybox") + 3


def test_images_quiet_digests_and_filter(cri: Server, two_images, ctl, capsys) -> None:
    assert ctl("images", "-q") == 0
    assert capsys.readouterr().out.split() == ["sha256:" + "b" * 64, "sha256:" + "a" * 64]
    assert ctl("images", "--digests", "--no-trunc", "busybox") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["IMAGE", "TAG", "DIGEST"]
    assert "sha256:" + "d" * 64 in lines[1]
    assert cri.fake.requests("ListImages")[-1].filter.image.image == "busybox"
    assert not cri.fake.requests("ListImages")[0].HasField("filter")


def test_images_json_and_yaml(two_images, ctl, capsys) -> None:
    assert ctl("images", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"][0]["repoTags"] == ["localhost:5000/busybox:1.36", "localhost:5000/busybox:latest"]
    assert data["images"][1]["size"] == "700"  # uint64 in protobuf JSON, like crictl
    assert ctl("images", "-o", "yaml") == 0
    assert yaml.safe_load(capsys.readouterr().out) == data


def test_pull_with_creds_builds_auth_config(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["PullImage"] = api_pb2.PullImageResponse(image_ref=IMAGE_ID)
    assert ctl("pull", "--creds", "alice:s3:cret", "localhost:5000/busybox:1.36") == 0
    assert capsys.readouterr().out == f"Image is up to date for {IMAGE_ID}\n"
    request = cri.fake.requests("PullImage")[0]
    assert request.image.image == "localhost:5000/busybox:1.36"
    assert request.auth == api_pb2.AuthConfig(username="alice", password="s3:cret")
    assert not request.HasField("sandbox_config")


def test_pull_with_auth_and_pod_config(cri: Server, ctl, tmp_path: Path) -> None:
    pod_config = tmp_path / "pod.yaml"
    pod_config.write_text("metadata:\n  name: web\n  namespace: default\n  uid: u1\n")
    assert ctl("pull", "--auth", "YWxpY2U6cHc=", "--pod-config", str(pod_config),
               "-a", "k=v", "busybox") == 0
    request = cri.fake.requests("PullImage")[0]
    assert request.auth == api_pb2.AuthConfig(auth="YWxpY2U6cHc=")
    assert request.sandbox_config.metadata.name == "web"
    assert dict(request.image.annotations) == {"k": "v"}


def test_pull_rejects_creds_with_auth(cri: Server, ctl, capsys) -> None:
    assert ctl("pull", "--creds", "a:b", "--auth", "x", "busybox") == 1
    assert "mutually exclusive" in capsys.readouterr().err
    assert cri.fake.requests("PullImage") == []


def test_rmi_removes_by_the_given_name_and_reports_tags(cri: Server, ctl, capsys) -> None:
    known = image(IMAGE_ID, ["docker.io/library/busybox:latest"], [], 10)

    def image_status(request: api_pb2.ImageStatusRequest) -> api_pb2.ImageStatusResponse:
        if request.image.image in ("busybox", IMAGE_ID):
            return api_pb2.ImageStatusResponse(image=known)
        return api_pb2.ImageStatusResponse()

    cri.fake.handlers["ImageStatus"] = image_status
    assert ctl("rmi", "busybox", "missing") == 1
    captured = capsys.readouterr()
    assert captured.out == "Deleted: docker.io/library/busybox:latest\n"
    assert "no such image missing" in captured.err
    # As crictl: the runtime gets the name as given (a tag removes that name, an id the whole image).
    assert [request.image.image for request in cri.fake.requests("RemoveImage")] == ["busybox"]


def test_rmi_prune_keeps_used_and_pinned(cri: Server, ctl, capsys) -> None:
    used = image("sha256:used", ["used:1"], [], 1)
    pinned = api_pb2.Image(id="sha256:pinned", repo_tags=["pause:3"], pinned=True)
    unused = image("sha256:unused", ["unused:1"], [], 1)
    cri.fake.handlers["ListImages"] = api_pb2.ListImagesResponse(images=[used, pinned, unused])
    cri.fake.handlers["ListContainers"] = api_pb2.ListContainersResponse(containers=[
        api_pb2.Container(id="x", image=api_pb2.ImageSpec(image="used:1"), image_ref="sha256:used")])
    # Images in use are found by the id the runtime resolves each container's image to.
    cri.fake.handlers["ImageStatus"] = lambda request: api_pb2.ImageStatusResponse(
        image={"sha256:unused": unused, "used:1": used}.get(request.image.image))
    assert ctl("rmi", "--prune") == 0
    assert [request.image.image for request in cri.fake.requests("RemoveImage")] == ["sha256:unused"]
    assert capsys.readouterr().out == "Deleted: unused:1\n"


def test_inspecti_outputs_status_and_info(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["ImageStatus"] = api_pb2.ImageStatusResponse(
        image=image(IMAGE_ID, ["busybox:latest"], [], 5), info={"info": json.dumps({"chainId": "x"})})
    assert ctl("inspecti", "busybox") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"]["id"] == IMAGE_ID
    assert data["info"] == {"chainId": "x"}  # the verbose info's keys beside "status", as crictl prints them
    assert cri.fake.requests("ImageStatus")[0].verbose


def test_imagefsinfo(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["ImageFsInfo"] = api_pb2.ImageFsInfoResponse(image_filesystems=[api_pb2.FilesystemUsage(
        fs_id=api_pb2.FilesystemIdentifier(mountpoint="/var/lib/cripy"), used_bytes={"value": 42})])
    assert ctl("imagefsinfo", "-o", "yaml") == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["status"]["imageFilesystems"][0]["fsId"]["mountpoint"] == "/var/lib/cripy"
    assert data["status"]["imageFilesystems"][0]["usedBytes"] == {"value": "42"}


# -- pods ---------------------------------------------------------------------------------------------------

CRICTL_POD_YAML = """\
metadata:
  name: nginx-sandbox
  namespace: default
  attempt: 1
  uid: hdishd83djaidwnduwk28bcsb
log_directory: /tmp
hostname: web
dns_config:
  servers: [10.0.0.10]
port_mappings:
  - protocol: 0
    container_port: 80
    host_port: 8080
labels:
  app: web
linux:
  cgroup_parent: /kubepods
  security_context:
    namespace_options:
      network: 2
"""

CRICTL_CONTAINER_JSON = {
    "metadata": {"name": "busybox"},
    "image": {"image": "busybox"},
    "command": ["top"],
    "args": ["-b"],
    "envs": [{"key": "A", "value": "1"}],
    "working_dir": "/",
    "log_path": "busybox.0.log",
    "linux": {"resources": {"memory_limit_in_bytes": 67108864}},
}


def test_runp_reads_crictl_yaml(cri: Server, ctl, capsys, tmp_path: Path) -> None:
    cri.fake.handlers["RunPodSandbox"] = api_pb2.RunPodSandboxResponse(pod_sandbox_id=POD_ID)
    pod_config = tmp_path / "pod.yaml"
    pod_config.write_text(CRICTL_POD_YAML)
    assert ctl("runp", "--runtime", "runc", str(pod_config)) == 0
    assert capsys.readouterr().out == POD_ID + "\n"
    request = cri.fake.requests("RunPodSandbox")[0]
    assert request.runtime_handler == "runc"
    config = request.config
    assert (config.metadata.name, config.metadata.namespace, config.metadata.attempt) == \
        ("nginx-sandbox", "default", 1)
    assert config.log_directory == "/tmp"
    assert config.port_mappings[0].host_port == 8080
    assert config.linux.security_context.namespace_options.network == api_pb2.NODE
    assert dict(config.labels) == {"app": "web"}


def test_pods_filters_and_table(cri: Server, ctl, capsys) -> None:
    now_ns = time.time_ns()
    cri.fake.handlers["ListPodSandbox"] = api_pb2.ListPodSandboxResponse(items=[
        api_pb2.PodSandbox(id="1" * 64, metadata=api_pb2.PodSandboxMetadata(name="old", namespace="kube-system"),
                           state=api_pb2.SANDBOX_NOTREADY, created_at=now_ns - 7200 * 10**9),
        api_pb2.PodSandbox(id="2" * 64, metadata=api_pb2.PodSandboxMetadata(name="new", namespace="default"),
                           state=api_pb2.SANDBOX_NOTREADY, created_at=now_ns, runtime_handler="crun"),
    ])
    assert ctl("pods", "--state", "NotReady", "--label", "app=web", "--id", "12") == 0
    request = cri.fake.requests("ListPodSandbox")[0]
    assert request.filter.state.state == api_pb2.SANDBOX_NOTREADY
    assert dict(request.filter.label_selector) == {"app": "web"}
    assert request.filter.id == "12"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["POD", "ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
    assert lines[1].split()[0] == "2" * 13 and lines[1].split()[-1] == "crun"  # newest first
    assert "2 hours ago" in lines[2] and lines[2].split()[-1] == "(default)"
    assert ctl("pods", "-q", "--namespace", "^kube-") == 0
    assert capsys.readouterr().out == "1" * 64 + "\n"
    assert ctl("pods", "-q", "--latest") == 0
    assert capsys.readouterr().out == "2" * 64 + "\n"


def test_inspectp_stopp_rmp(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["PodSandboxStatus"] = api_pb2.PodSandboxStatusResponse(
        status=api_pb2.PodSandboxStatus(id=POD_ID, state=api_pb2.SANDBOX_READY), info={"info": '{"pid": 42}'})
    assert ctl("inspectp", POD_ID) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"]["state"] == "SANDBOX_READY" and data["info"]["pid"] == 42
    assert data["status"]["createdAt"] == "1970-01-01T00:00:00Z" and data["status"]["network"] is None
    assert ctl("stopp", POD_ID) == 0
    assert capsys.readouterr().out == f"Stopped sandbox {POD_ID}\n"
    # A ready pod is removed only with -f, which stops it first (as crictl).
    assert ctl("rmp", POD_ID) == 1
    assert "is running, please stop it first" in capsys.readouterr().err
    assert ctl("rmp", "-f", POD_ID) == 0
    assert capsys.readouterr().out == f"Stopped sandbox {POD_ID}\nRemoved sandbox {POD_ID}\n"
    assert cri.fake.names()[-3:] == ["PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox"]


# -- containers ---------------------------------------------------------------------------------------------


def test_create_with_json_container_config(cri: Server, ctl, capsys, tmp_path: Path) -> None:
    cri.fake.handlers["CreateContainer"] = api_pb2.CreateContainerResponse(container_id=CONTAINER_ID)
    container_config = tmp_path / "container.json"
    container_config.write_text(json.dumps(CRICTL_CONTAINER_JSON))
    pod_config = tmp_path / "pod.yaml"
    pod_config.write_text(CRICTL_POD_YAML)
    assert ctl("create", POD_ID, str(container_config), str(pod_config)) == 0
    assert capsys.readouterr().out == CONTAINER_ID + "\n"
    request = cri.fake.requests("CreateContainer")[0]
    assert request.pod_sandbox_id == POD_ID
    assert request.config.metadata.name == "busybox"
    assert list(request.config.command) == ["top"] and list(request.config.args) == ["-b"]
    assert request.config.envs[0].key == "A"
    assert request.config.linux.resources.memory_limit_in_bytes == 64 * 1024 * 1024
    assert request.sandbox_config.metadata.uid == "hdishd83djaidwnduwk28bcsb"
    assert cri.fake.requests("PullImage") == []  # no pull unless asked


def test_create_with_pull_pulls_missing_image(cri: Server, ctl, tmp_path: Path) -> None:
    container_config = tmp_path / "container.json"
    container_config.write_text(json.dumps(CRICTL_CONTAINER_JSON))
    pod_config = tmp_path / "pod.yaml"
    pod_config.write_text(CRICTL_POD_YAML)
    assert ctl("create", "--with-pull", "--creds", "u:p", POD_ID, str(container_config), str(pod_config)) == 0
    pull = cri.fake.requests("PullImage")[0]
    assert pull.image.image == "busybox" and pull.auth.username == "u"
    assert cri.fake.names()[-1] == "CreateContainer"


def test_start_stop_rm(cri: Server, ctl, capsys, tmp_path: Path) -> None:
    log = tmp_path / "c2.log"
    for path in (log, tmp_path / "c2.log.1", tmp_path / "c3.log"):
        path.write_text("x")
    states = {"c2": api_pb2.CONTAINER_RUNNING, "c3": api_pb2.CONTAINER_EXITED}
    cri.fake.handlers["ContainerStatus"] = lambda request: api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(id=request.container_id, state=states[request.container_id],
                                       log_path=str(tmp_path / f"{request.container_id}.log")))
    assert ctl("start", "c1", "c2") == 0
    assert ctl("stop", "-t", "5", "c1") == 0
    assert capsys.readouterr().out == "c1\nc2\nc1\n"
    # A running container is removed only with -f, which stops it first; its log files go too (as crictl).
    assert ctl("rm", "c2") == 1
    assert "is running, please stop it first" in capsys.readouterr().err
    assert ctl("rm", "-f", "c2") == 0
    assert ctl("rm", "--keep-logs", "c3") == 0
    assert capsys.readouterr().out == "c2\nc2\nc3\n"
    assert [request.container_id for request in cri.fake.requests("StartContainer")] == ["c1", "c2"]
    assert [(r.container_id, r.timeout) for r in cri.fake.requests("StopContainer")] == [("c1", 5), ("c2", 0)]
    assert [r.container_id for r in cri.fake.requests("RemoveContainer")] == ["c2", "c3"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c3.log"]


def containers_fixture() -> api_pb2.ListContainersResponse:
    return api_pb2.ListContainersResponse(containers=[
        api_pb2.Container(id=CONTAINER_ID, pod_sandbox_id=POD_ID, state=api_pb2.CONTAINER_EXITED,
                          metadata=api_pb2.ContainerMetadata(name="web", attempt=2),
                          image=api_pb2.ImageSpec(image="docker.io/library/nginx:latest"),
                          image_ref=IMAGE_ID, created_at=time.time_ns(),
                          labels={"io.kubernetes.pod.name": "web-pod", "io.kubernetes.pod.namespace": "prod"}),
        api_pb2.Container(id="d" * 64, pod_sandbox_id=POD_ID, state=api_pb2.CONTAINER_RUNNING,
                          metadata=api_pb2.ContainerMetadata(name="sidecar"),
                          image=api_pb2.ImageSpec(image="sha256:" + "f" * 64), created_at=1),
    ])


def test_ps_filters_map_into_container_filter(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["ListContainers"] = containers_fixture()
    assert ctl("ps", "--state", "Exited", "--label", "app=web", "--label", "tier=1", "--pod", POD_ID,
               "--id", "cc") == 0
    request = cri.fake.requests("ListContainers")[0]
    assert request.filter.state.state == api_pb2.CONTAINER_EXITED
    assert dict(request.filter.label_selector) == {"app": "web", "tier": "1"}
    assert request.filter.pod_sandbox_id == POD_ID and request.filter.id == "cc"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD", "ID", "POD",
                                "NAMESPACE"]
    assert lines[1].split() == ["c" * 13, "docker.io/library/nginx:latest", "Less", "than", "a", "second",
                                "ago", "Exited", "web", "2", "a" * 13, "web-pod", "prod"]
    assert lines[2].split()[:2] == ["d" * 13, "f" * 13]
    assert lines[2].split()[-1] == "unknown"


def test_ps_defaults_to_running_and_client_side_filters(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["ListContainers"] = containers_fixture()
    nginx = api_pb2.Image(id=IMAGE_ID, repo_tags=["docker.io/library/nginx:latest"])
    cri.fake.handlers["ImageStatus"] = lambda request: api_pb2.ImageStatusResponse(
        image=nginx if request.image.image in ("nginx", "docker.io/library/nginx:latest") else None)
    assert ctl("ps", "-q") == 0
    assert cri.fake.requests("ListContainers")[0].filter.state.state == api_pb2.CONTAINER_RUNNING
    capsys.readouterr()
    assert ctl("ps", "-a", "-q", "--name", "^w") == 0
    assert not cri.fake.requests("ListContainers")[1].filter.HasField("state")
    assert capsys.readouterr().out == CONTAINER_ID + "\n"
    # --image compares the ids the runtime resolves the names to.
    assert ctl("ps", "-a", "-q", "--image", "nginx") == 0
    assert capsys.readouterr().out == CONTAINER_ID + "\n"
    assert ctl("ps", "-a", "-q", "--image", "nosuchimage") == 0
    assert capsys.readouterr().out == ""
    assert ctl("ps", "-a", "-q", "--namespace", "prod", "--last", "5") == 0
    assert capsys.readouterr().out == CONTAINER_ID + "\n"
    assert ctl("ps", "-a", "-o", "json") == 0
    assert [c["metadata"]["name"] for c in json.loads(capsys.readouterr().out)["containers"]] == \
        ["web", "sidecar"]


def test_ps_rejects_bad_state_and_label(cri: Server, ctl, capsys) -> None:
    assert ctl("ps", "--state", "sleeping") == 1
    assert "--state should be one of created, running, exited or unknown" in capsys.readouterr().err
    assert ctl("ps", "--label", "novalue") == 1
    assert "expected key=value" in capsys.readouterr().err
    assert cri.fake.requests("ListContainers") == []


def test_inspect_container(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["ContainerStatus"] = api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(id=CONTAINER_ID, state=api_pb2.CONTAINER_EXITED, exit_code=0),
        info={"info": '{"pid": 7, "runtimeSpec": {"ociVersion": "1.0.2"}}'})
    assert ctl("inspect", "-o", "yaml", CONTAINER_ID) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["status"]["state"] == "CONTAINER_EXITED"
    assert data["status"]["exitCode"] == 0  # zero values are printed, as crictl does
    assert data["info"]["runtimeSpec"]["ociVersion"] == "1.0.2"
    # Timestamps are readable; one that has not happened is Go's zero time, as crictl prints it.
    assert data["status"]["createdAt"] == "1970-01-01T00:00:00Z"
    assert data["status"]["startedAt"] == "1970-01-01T00:00:00Z"
    assert data["status"]["user"] is None


def test_exec_sync_propagates_exit_code_and_streams(cri: Server, ctl, capfd) -> None:
    cri.fake.handlers["ExecSync"] = api_pb2.ExecSyncResponse(stdout=b"out\n", stderr=b"err\n", exit_code=3)
    assert ctl("exec", "-s", "--timeout", "5", CONTAINER_ID, "sh", "-c", "echo hi; exit 3") == 3
    captured = capfd.readouterr()
    assert captured.out == "out\n" and captured.err == "err\n"
    request = cri.fake.requests("ExecSync")[0]
    assert list(request.cmd) == ["sh", "-c", "echo hi; exit 3"]
    assert request.timeout == 5 and request.container_id == CONTAINER_ID


def test_exec_without_sync_uses_exec_sync_and_interactive_uses_exec(cri: Server, ctl, capsys) -> None:
    assert ctl("exec", CONTAINER_ID, "--", "ls", "-l") == 0
    assert list(cri.fake.requests("ExecSync")[0].cmd) == ["ls", "-l"]
    # -it goes through the Exec call and its streaming URL (the fake hands out none that answers).
    assert ctl("exec", "-it", CONTAINER_ID, "sh") == 1
    exec_request = cri.fake.requests("Exec")[0]
    assert list(exec_request.cmd) == ["sh"] and exec_request.tty and exec_request.stdin
    assert len(cri.fake.requests("ExecSync")) == 1


def test_exec_interactive_hook(cri: Server, ctl, monkeypatch) -> None:
    seen: list[api_pb2.ExecRequest] = []

    def fake_stream(client: CRIClient, request: api_pb2.ExecRequest) -> int:
        seen.append(request)
        return 7

    monkeypatch.setattr(streams, "interactive_exec", fake_stream)
    assert ctl("exec", "-i", "-t", CONTAINER_ID, "sh") == 7
    assert seen[0].tty and seen[0].stdin and seen[0].stdout and not seen[0].stderr
    assert list(seen[0].cmd) == ["sh"]


def test_update_builds_linux_resources(cri: Server, ctl, capsys) -> None:
    assert ctl("update", "--cpu-shares", "512", "--cpu-quota", "50000", "--cpu-period", "100000",
               "--cpuset-cpus", "0-1", "--memory", "256m", CONTAINER_ID) == 0
    request = cri.fake.requests("UpdateContainerResources")[0]
    assert request.linux == api_pb2.LinuxContainerResources(
        cpu_shares=512, cpu_quota=50000, cpu_period=100000, cpuset_cpus="0-1",
        memory_limit_in_bytes=256 * 1024 * 1024)
    assert capsys.readouterr().out == CONTAINER_ID + "\n"


def sampled(build: Callable[[int], Message]) -> Callable[[Any], Message]:
    """A stats handler answering call after call with the samples `build(n)` makes (n = 0, 1, ...)."""
    calls = iter(range(1 << 30))
    return lambda request: build(next(calls))


def test_stats_and_statsp_tables(cri: Server, ctl, capsys) -> None:
    def containers(n: int) -> api_pb2.ListContainerStatsResponse:
        # 0.25 s of CPU per second of wall time: 25 %; a stopped container reports neither CPU nor memory.
        return api_pb2.ListContainerStatsResponse(stats=[
            api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(id="e" * 64)),
            api_pb2.ContainerStats(
                attributes=api_pb2.ContainerAttributes(id=CONTAINER_ID,
                                                       metadata=api_pb2.ContainerMetadata(name="web")),
                cpu=api_pb2.CpuUsage(timestamp=n * 10**9, usage_core_nano_seconds={"value": 10**9 + n * 25 * 10**7}),
                memory=api_pb2.MemoryUsage(working_set_bytes={"value": 2_500_000}),
                writable_layer=api_pb2.FilesystemUsage(used_bytes={"value": 4096}, inodes_used={"value": 12}),
                swap=api_pb2.SwapUsage(swap_usage_bytes={"value": 0})),
        ])

    cri.fake.handlers["ListContainerStats"] = sampled(containers)
    assert ctl("stats", "-s", "0", "--pod", POD_ID, "--label", "a=b") == 0
    # Two samples; not on a terminal, so no clear-screen escape before the table.
    assert capsys.readouterr().out == output.format_table(
        ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES", "SWAP"],
        [["c" * 13, "web", "25.00", "2.5MB", "4.096kB", "12", "0B"]])
    stats_filter = cri.fake.requests("ListContainerStats")[0].filter
    assert stats_filter.pod_sandbox_id == POD_ID and dict(stats_filter.label_selector) == {"a": "b"}
    assert len(cri.fake.requests("ListContainerStats")) == 2
    assert ctl("stats", "-s", "0", "-a") == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["e" * 13, "0.00", "0B", "0B", "0", "0B"]

    def pods(n: int) -> api_pb2.ListPodSandboxStatsResponse:
        return api_pb2.ListPodSandboxStatsResponse(stats=[api_pb2.PodSandboxStats(
            attributes=api_pb2.PodSandboxAttributes(id=POD_ID, metadata=api_pb2.PodSandboxMetadata(name="web-pod")),
            linux=api_pb2.LinuxPodSandboxStats(cpu=api_pb2.CpuUsage(
                timestamp=n * 10**9, usage_core_nano_seconds={"value": 1 + n * 10**9})))])

    cri.fake.handlers["ListPodSandboxStats"] = sampled(pods)
    assert ctl("statsp", "-s", "0", POD_ID) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["web-pod", "a" * 13, "100.00", "0B"]
    assert cri.fake.requests("ListPodSandboxStats")[0].filter.id == POD_ID
    # A runtime whose CPU reading did not move between the samples cannot give a percentage.
    cri.fake.handlers["ListPodSandboxStats"] = pods(1)
    assert ctl("statsp", "-s", "0") == 1
    assert "cpu stat is not updated during sample" in capsys.readouterr().err


# -- logs ---------------------------------------------------------------------------------------------------

LOG_TEXT = (
    b"2024-01-01T00:00:00.000000001Z stdout F first line\n"
    b"2024-01-01T00:00:01.000000000Z stdout P part one, \n"
    b"2024-01-01T00:00:01.500000000Z stderr F an error\n"
    b"2024-01-01T00:00:02.000000000Z stdout P part two, \n"
    b"2024-01-01T00:00:03.000000000Z stdout F and the end\n"
    b"2024-01-01T00:00:04.000000000Z stdout F \n"
)


def serve_log(cri: Server, log_path: Path, states: list[int] | None = None) -> None:
    """ContainerStatus answers with `log_path` and, call after call, the given states (the last repeats)."""
    remaining = list(states or [api_pb2.CONTAINER_EXITED])

    def status(request: api_pb2.ContainerStatusRequest) -> api_pb2.ContainerStatusResponse:
        state = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return api_pb2.ContainerStatusResponse(status=api_pb2.ContainerStatus(
            id=CONTAINER_ID, state=state, log_path=str(log_path)))

    cri.fake.handlers["ContainerStatus"] = status


def test_logs_joins_partial_lines_and_splits_streams(cri: Server, ctl, capfd, tmp_path: Path) -> None:
    log_path = tmp_path / "0.log"
    log_path.write_bytes(LOG_TEXT)
    serve_log(cri, log_path)
    assert ctl("logs", CONTAINER_ID) == 0
    captured = capfd.readouterr()
    assert captured.out == "first line\npart one, part two, and the end\n\n"
    assert captured.err == "an error\n"


def test_logs_tail_and_timestamps(cri: Server, ctl, capfd, tmp_path: Path) -> None:
    log_path = tmp_path / "0.log"
    log_path.write_bytes(LOG_TEXT)
    serve_log(cri, log_path)
    assert ctl("logs", "--tail", "2", "-t", CONTAINER_ID) == 0
    # The joined line carries the timestamp of its first chunk.
    assert capfd.readouterr().out == ("2024-01-01T00:00:01.000000000Z part one, part two, and the end\n"
                                      "2024-01-01T00:00:04.000000000Z \n")
    assert ctl("logs", "--tail", "0", CONTAINER_ID) == 0
    assert capfd.readouterr().out == ""


def test_logs_follow_reads_until_container_exits(cri: Server, ctl, capfd, tmp_path: Path,
                                                  monkeypatch) -> None:
    monkeypatch.setattr(streams, "LOG_FOLLOW_POLL_SECONDS", 0.01)
    log_path = tmp_path / "0.log"
    log_path.write_bytes(b"2024-01-01T00:00:00Z stdout F before\n")
    calls = 0

    def status(request: api_pb2.ContainerStatusRequest) -> api_pb2.ContainerStatusResponse:
        nonlocal calls
        calls += 1
        state = api_pb2.CONTAINER_RUNNING
        if calls == 3:
            # The container writes its last words (one line rotated away, one in the new file) and exits.
            with log_path.open("ab") as log:
                log.write(b"2024-01-01T00:00:01Z stdout P after, \n")
            log_path.rename(tmp_path / "0.log.1")
            log_path.write_bytes(b"2024-01-01T00:00:02Z stdout F rotated\n"
                                 b"2024-01-01T00:00:03Z stderr F no newline")
            state = api_pb2.CONTAINER_EXITED
        return api_pb2.ContainerStatusResponse(status=api_pb2.ContainerStatus(
            id=CONTAINER_ID, state=state, log_path=str(log_path)))

    cri.fake.handlers["ContainerStatus"] = status
    assert ctl("logs", "-f", CONTAINER_ID) == 0
    captured = capfd.readouterr()
    assert captured.out == "before\nafter, rotated\n"
    assert captured.err == "no newline\n"
    assert calls == 3


def test_logs_without_log_path_fails(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["ContainerStatus"] = api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(id=CONTAINER_ID))
    assert ctl("logs", CONTAINER_ID) == 1
    assert "has no log path" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------------------------------------


def test_grpc_error_exits_1_with_code_and_details(cri: Server, ctl, capsys) -> None:
    def not_found(request: api_pb2.StopContainerRequest) -> api_pb2.StopContainerResponse:
        raise FakeError(grpc.StatusCode.NOT_FOUND, f"container {request.container_id!r} not found")

    cri.fake.handlers["StopContainer"] = not_found
    assert ctl("stop", "nope", "other") == 1
    err_lines = capsys.readouterr().err.splitlines()
    assert err_lines == [
        "E StopContainer failed: rpc error: code = NotFound desc = container 'nope' not found",
        "E StopContainer failed: rpc error: code = NotFound desc = container 'other' not found",
    ]


def test_connection_failure_names_endpoint(tmp_path: Path, capsys) -> None:
    endpoint = f"unix://{tmp_path}/absent.sock"
    assert ctl_main.main(["-r", endpoint, "version"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("E Version failed: rpc error: code = Unavailable")
    assert f"(cannot connect to the runtime at {endpoint}: No such file or directory)" in err


def test_unavailable_from_a_reachable_runtime_is_not_a_connection_failure(cri: Server, ctl, capsys) -> None:
    def registry_down(request: api_pb2.PullImageRequest) -> api_pb2.PullImageResponse:
        raise FakeError(grpc.StatusCode.UNAVAILABLE, "registry 127.0.0.1:1 unavailable")

    cri.fake.handlers["PullImage"] = registry_down
    assert ctl("pull", "127.0.0.1:1/x") == 1
    assert capsys.readouterr().err == (
        "E PullImage failed: rpc error: code = Unavailable desc = registry 127.0.0.1:1 unavailable\n")


def test_deadline_is_applied(cri: Server, capsys) -> None:
    released = []

    def slow(request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
        while not released:
            time.sleep(0.01)
        return api_pb2.VersionResponse()

    cri.fake.handlers["Version"] = slow
    try:
        assert ctl_main.main(["-r", cri.endpoint, "-t", "0.2", "version"]) == 1
    finally:
        released.append(True)
    assert "code = DeadlineExceeded" in capsys.readouterr().err


def test_bad_config_file_reports_path(cri: Server, ctl, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "pod.json"
    bad.write_text('{"metadata": {"name": 3}}')
    assert ctl("runp", str(bad)) == 1
    assert f"invalid PodSandboxConfig in {bad}" in capsys.readouterr().err
    assert ctl("runp", str(tmp_path / "missing.yaml")) == 1
    assert "cannot read config file" in capsys.readouterr().err
    assert cri.fake.requests("RunPodSandbox") == []


def test_verb_timeouts_do_not_replace_the_call_deadline() -> None:
    parser = ctl_main.build_parser()
    args = parser.parse_args(["-t", "7", "exec", "-s", "--timeout", "3", "ID", "ls", "-t"])
    assert (args.timeout, args.exec_timeout, list(args.words)) == (7, 3, ["ID", "ls", "-t"])
    args = parser.parse_args(["stop", "-t", "4", "ID"])
    assert (args.timeout, args.stop_timeout) == (ctl_main.DEFAULT_TIMEOUT, 4)


def test_usage_errors_return_2(capsys) -> None:
    assert ctl_main.main(["nosuchverb"]) == 2
    assert ctl_main.main(["--help"]) == 0


# -- pure pieces --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "target"), [
    ("unix:///run/cripy/cripy.sock", "unix:///run/cripy/cripy.sock"),
    ("/run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock"),
    ("unix:/run/x.sock", "unix:///run/x.sock"),
    ("tcp://127.0.0.1:1234", "127.0.0.1:1234"),
])
def test_normalize_endpoint(endpoint: str, target: str) -> None:
    assert normalize_endpoint(endpoint) == target


def test_normalize_endpoint_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported CRI endpoint"):
        normalize_endpoint("npipe:////./pipe/x")


def test_cri_error_code_names() -> None:
    error = CRIError("PullImage", grpc.StatusCode.DEADLINE_EXCEEDED, "slow", "unix:///x")
    assert str(error) == "PullImage failed: rpc error: code = DeadlineExceeded desc = slow"


@pytest.mark.parametrize(("size", "text"), [
    (0, "0B"), (999, "999B"), (1000, "1kB"), (1_462_016, "1.46MB"), (5_000_000_000, "5GB"), (123_456, "123kB")])
def test_human_size(size: int, text: str) -> None:
    assert output.human_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "Less than a second"), (1, "1 second"), (45, "45 seconds"), (61, "About a minute"),
    (600, "10 minutes"), (3700, "About an hour"), (5 * 3600, "5 hours"), (3 * 86400, "3 days"),
    (21 * 86400, "3 weeks"), (120 * 86400, "4 months"), (800 * 86400, "2 years")])
def test_human_duration(seconds: float, text: str) -> None:
    assert output.human_duration(seconds) == text


def test_repo_tag_pairs_split_like_crictl() -> None:
    assert images.repo_tag_pairs(["localhost:5000/busybox:1.36"], "x") == [("localhost:5000/busybox", "1.36")]
    assert images.repo_tag_pairs([], "localhost:5000/busybox") == [("localhost:5000/busybox", "<none>")]
    assert images.repo_tag_pairs(["<none>:<none>"], "repo") == [("repo", "<none>")]
    assert images.repo_tag_pairs(["notag"], "repo") == [("errorRepoTag", "errorRepoTag")]


def test_parse_record_tags_and_empty_message() -> None:
    assert parse_record(b"2024-01-01T00:00:00Z stderr P:x chunk with  spaces ").content == \
        b"chunk with  spaces "
    record = parse_record(b"2024-01-01T00:00:00Z stdout F")
    assert record is not None and record.content == b"" and not record.partial
    assert parse_record(b"not a cri line") is None


def test_parse_log_bytes_keeps_garbage_and_unfinished_partials() -> None:
    lines = parse_log_bytes(b"garbage\n2024-01-01T00:00:00Z stdout P dangling")
    assert [(line.stream, line.content, line.complete) for line in lines] == [
        ("stdout", b"garbage", True), ("stdout", b"dangling", False)]


def test_log_reader_handles_truncation_and_late_file(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with LogFileReader(str(path)) as reader:
        assert reader.read_lines() == []  # not created yet
        path.write_bytes(b"2024-01-01T00:00:00Z stdout F one\n2024-01-01T00:00:00Z stdout F tw")
        assert [line.content for line in reader.read_lines()] == [b"one"]
        with path.open("ab") as log:
            log.write(b"o\n")
        assert [line.content for line in reader.read_lines()] == [b"two"]
        path.write_bytes(b"2024-01-01T00:00:00Z stdout F x\n")  # truncated and rewritten in place
        assert [line.content for line in reader.read_lines()] == [b"x"]


def test_config_file_unknown_fields_warn(tmp_path: Path) -> None:
    path = tmp_path / "container.yaml"
    path.write_text("metadata: {name: a}\nimage: {image: busybox}\nfuture_field: 1\n")
    warnings: list[str] = []
    config = load_container_config(path, warnings.append)
    assert config.metadata.name == "a" and config.image.image == "busybox"
    assert len(warnings) == 1 and "future_field" in warnings[0]


def test_config_file_camel_case_and_non_mapping(tmp_path: Path) -> None:
    path = tmp_path / "pod.json"
    path.write_text('{"metadata": {"name": "p"}, "logDirectory": "/var/log/pods/p"}')
    assert load_pod_config(path).log_directory == "/var/log/pods/p"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigFileError, match="mapping"):
        load_pod_config(path)


def test_debug_logs_requests_and_responses(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["Version"] = api_pb2.VersionResponse(runtime_name="fake")
    assert ctl_main.main(["-r", cri.endpoint, "-D", "version"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("D Version request: ") and '"version": "v1"' in err[0]
    assert err[1].startswith("D Version response: ") and '"runtimeName": "fake"' in err[1]


# -- crictl's document shapes -------------------------------------------------------------------------------


def test_log_timestamps_show_like_the_kubelet() -> None:
    assert crilog.display_timestamp("2026-12-06T04:23:05.023343025+00:00") == "2026-12-06T04:23:05.023343025Z"
    assert crilog.display_timestamp("2024-01-01T00:00:01.5Z") == "2024-01-01T00:00:01.500000000Z"
    assert crilog.display_timestamp("2024-01-01T02:00:00+02:00") == "2024-01-01T02:00:00.000000000+02:00"
    assert crilog.display_timestamp("garbage") == "garbage"


def test_proto_document_in_declaration_order_with_newer_api_fields() -> None:
    container = api_pb2.Container(id="c", image=api_pb2.ImageSpec(image="busybox"), labels={"b": "2", "a": "1"},
                                  created_at=5)
    data = documents.proto_document(container)
    assert list(data) == [field.json_name for field in api_pb2.Container.DESCRIPTOR.fields
                          if field.json_name != "metadata"]  # an unset message is left out, as protojson does
    assert list(data["labels"]) == ["a", "b"] and data["createdAt"] == "5"
    # crictl's newer CRI API has ImageSpec.image_ref; it prints it, empty, last.
    assert list(data["image"])[-1] == "imageRef" and data["image"]["imageRef"] == ""


def test_proto_document_writes_whole_doubles_without_a_fraction() -> None:
    data = documents.proto_document(api_pb2.PsiData(Avg10=0.0, Avg60=1.5))
    assert json.dumps(data) == json.dumps({"Total": "0", "Avg10": 0, "Avg60": 1.5, "Avg300": 0})
    assert documents.go_yaml(data) == 'Avg10: 0\nAvg60: 1.5\nAvg300: 0\nTotal: "0"\n'


def test_status_documents_like_go_encoding_json() -> None:
    status = documents.status_fields(api_pb2.PodSandboxStatus(id="p", created_at=1_500_000_000),
                                     {"createdAt": documents.rfc3339_nano(1_500_000_000)})
    document = documents.status_document(status, {"info": '{"pid": 7.0, "note": "<a&b>"}', "plain": '"quoted"'})
    text = documents.status_documents_text([document], "json")
    # Keys sorted at every level, unset messages null, whole floats as integers, HTML characters escaped.
    assert text.startswith('{\n  "info": {\n    "note": "\\u003ca\\u0026b\\u003e",\n    "pid": 7\n  },\n'
                           '  "plain": "quoted",\n  "status": {\n    "annotations": {},\n'
                           '    "createdAt": "1970-01-01T00:00:01.5Z",\n')
    assert '"network": null' in text and text.endswith("}\n")
    two = json.loads(documents.status_documents_text([document, document], "json"))
    assert isinstance(two, list) and len(two) == 2


def test_go_yaml_quotes_and_orders_like_go_yaml_v2() -> None:
    text = documents.go_yaml({"b": "", "a_1": "1983140", "aB": "yes", "a10": "x", "a9": "multi\nline",
                              "none": None, "y": 1, "t": "2026-01-01T00:00:00Z", "plain": "a: b", "list": []})
    # Non-letters before letters, digit runs by value; strings that read as another type double-quoted (keys too:
    # go-yaml reads a plain y as true).
    assert text == ('a_1: "1983140"\na9: |-\n  multi\n  line\na10: x\naB: "yes"\nb: ""\nlist: []\nnone: null\n'
                    "plain: 'a: b'\nt: \"2026-01-01T00:00:00Z\"\n\"y\": 1\n")


def test_go_time_formats() -> None:
    assert documents.rfc3339_nano(0) == "1970-01-01T00:00:00Z"
    assert documents.rfc3339_nano(1_796_530_106_916_670_139) == "2026-12-06T04:08:26.916670139Z"
    assert documents.go_map_text({"b": "2", "a": "{}"}) == "map[a:{} b:2]"


def test_runtime_config_and_events(cri: Server, ctl, capsys) -> None:
    cri.fake.handlers["RuntimeConfig"] = api_pb2.RuntimeConfigResponse(
        linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=api_pb2.SYSTEMD))
    assert ctl("runtime-config") == 0
    assert capsys.readouterr().out == "cgroup driver:   SYSTEMD\n"
    events = [api_pb2.ContainerEventResponse(container_id=CONTAINER_ID, created_at=7,
                                             container_event_type=api_pb2.CONTAINER_STARTED_EVENT)]
    cri.fake.handlers["GetContainerEvents"] = lambda request: iter(events)  # a stream: the events, then its end
    assert ctl("events") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["containerId"] == CONTAINER_ID and printed["containerEventType"] == "CONTAINER_STARTED_EVENT"
    assert printed["createdAt"] == "7" and printed["containersStatuses"] == []


def test_verbose_lists(cri: Server, two_images, ctl, capsys) -> None:
    assert ctl("images", "-v") == 0
    assert capsys.readouterr().out.startswith(
        "ID: sha256:" + "b" * 64 + "\nRepoTags: localhost:5000/busybox:1.36\nRepoTags: localhost:5000/busybox:latest\n"
        "RepoDigests: localhost:5000/busybox@sha256:" + "d" * 64 + "\nSize: 1462016\n\n")
    cri.fake.handlers["ListPodSandbox"] = api_pb2.ListPodSandboxResponse(items=[api_pb2.PodSandbox(
        id=POD_ID, metadata=api_pb2.PodSandboxMetadata(name="web", uid="u1", namespace="prod", attempt=2),
        state=api_pb2.SANDBOX_READY, created_at=0, labels={"app": "web"})])
    assert ctl("pods", "-v") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ID: {POD_ID}\nName: web\nUID: u1\nNamespace: prod\nAttempt: 2\nStatus: Ready\nCreated: ")
    assert out.endswith("Labels:\n\tapp -> web\nRuntime: (default)\n\n")
