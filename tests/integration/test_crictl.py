"""The conformance kit's crictl against a real cripy daemon, for every verb the README lists, and `cripy ctl`
against crictl: for each verb and flags they share, both must print the same.

crictl is the ecosystem's CRI client: an operator's first tool against a runtime. These tests drive it as an
operator does (config files in crictl's own format, a pod made the way the kubelet makes one: a long name with
capitals, no hostname, the kubelet's labels) and check what it prints against what the runtime holds.

The parity tests compare the two clients' output after normalising only what changes between two calls:
relative times ("3 seconds ago"), the readings of live counters (CPU, memory, timestamps of stats), crictl's
clear-screen escape before a stats table (cripy ctl writes it only to a terminal), and the whitespace of
protobuf JSON (Go's protojson varies it from build to build on purpose; the documents are compared in order,
key by key). `exec -s` is left out on purpose: cripy ctl keeps the command's stdout, stderr and exit code apart
where crictl merges them (cripy/ctl/verbs/streams.py).

Skipped when the kit's crictl is absent (CRI_CONFORMANCE_KIT or CRICTL, as for `make conformance`).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conformance.kit import Kit
from tests.integration.daemon import REPO_ROOT
from tests.integration.conftest_leaks import session_cgroup_parent
from tests.integration.podlib import BUSYBOX, PodEnv, short_tempdir
from tests.integration.test_images_common import insecure_conf, unique
from tests.support.images import busybox_image
from tests.support.registry import Registry

KIT = Kit.configured()
if not KIT.crictl.exists():
    pytest.skip(f"the conformance kit's crictl is not at {KIT.crictl} (set CRI_CONFORMANCE_KIT to the kit's "
                "directory or CRICTL to the binary)", allow_module_level=True)

# The kubelet's labels on a pod and its containers: crictl shows the pod name and namespace from them.
POD_NAME = "Parity-Pod-With-A-Rather-Long-Name-From-A-Deployment-7c9f8d6b5-x2kq9"
NAMESPACE = "crictl-parity"


@dataclass
class Run:
    returncode: int
    out: str
    err: str


class Clients:
    """crictl and `cripy ctl`, both pointed at one daemon."""

    def __init__(self, env: PodEnv) -> None:
        self.env = env
        self.endpoint = f"unix://{env.daemon.socket}"
        # crictl reads its endpoints and deadline from its config file, as an operator's /etc/crictl.yaml.
        self.config = env.workdir / "crictl.yaml"
        self.config.write_text(f"runtime-endpoint: {self.endpoint}\nimage-endpoint: {self.endpoint}\n"
                               "timeout: 60\n")

    def crictl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> Run:
        result = subprocess.run([str(KIT.crictl), "--config", str(self.config), *args], input=stdin,
                                capture_output=True, text=True, timeout=timeout, cwd=self.env.workdir)
        return Run(result.returncode, result.stdout, result.stderr)

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> Run:
        result = subprocess.run([sys.executable, "-m", "cripy.cli", "ctl", "-r", self.endpoint, "-t", "60", *args],
                                input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
        return Run(result.returncode, result.stdout, result.stderr)

    def ok(self, *args: str, **kwargs: Any) -> str:
        """crictl's stdout; the test fails with crictl's stderr when it fails."""
        run = self.crictl(*args, **kwargs)
        assert run.returncode == 0, f"crictl {' '.join(args)} exited {run.returncode}:\n{run.err}"
        return run.out


@pytest.fixture(scope="module")
def env(pod_image_dir: Path, plain_registry: Registry) -> Iterator[PodEnv]:
    env = PodEnv(short_tempdir("cc"), pod_image_dir, cgroup_parent=session_cgroup_parent(),
                 registries_conf=insecure_conf(plain_registry.host))
    yield env
    env.close()


@pytest.fixture(scope="module")
def clients(env: PodEnv) -> Clients:
    return Clients(env)


def write_json(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def pod_config_file(env: PodEnv, name: str, **extra: Any) -> str:
    """A pod config in crictl's file format (protobuf field names), shaped like the kubelet's: no hostname."""
    config = {"metadata": {"name": name, "namespace": NAMESPACE, "uid": os.urandom(8).hex(), "attempt": 0},
              "labels": {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": NAMESPACE, "app": "parity"},
              "annotations": {"kubernetes.io/config.source": "api"},
              "log_directory": str(env.workdir / "logs" / name), "linux": {"cgroup_parent": ""}, **extra}
    return write_json(env.workdir / f"{name}.pod.json", config)


def container_config_file(env: PodEnv, pod_name: str, name: str, command: list[str], **extra: Any) -> str:
    config = {"metadata": {"name": name}, "image": {"image": BUSYBOX}, "command": command,
              "log_path": f"{name}.log",
              "labels": {"io.kubernetes.pod.name": pod_name, "io.kubernetes.pod.namespace": NAMESPACE,
                         "io.kubernetes.container.name": name},
              **extra}
    return write_json(env.workdir / f"{pod_name}.{name}.json", config)


def run_pod(clients: Clients, name: str, **extra: Any) -> tuple[str, str]:
    """`crictl runp`: the pod id and its config file."""
    pod_file = pod_config_file(clients.env, name, **extra)
    pod_id = clients.ok("runp", pod_file).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", pod_id), pod_id
    return pod_id, pod_file


def run_container(clients: Clients, pod_id: str, pod_file: str, pod_name: str, name: str, command: list[str],
                  **extra: Any) -> str:
    """`crictl create` then `crictl start`: the container id (which both print)."""
    container_file = container_config_file(clients.env, pod_name, name, command, **extra)
    container_id = clients.ok("create", pod_id, container_file, pod_file).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id), container_id
    assert clients.ok("start", container_id) == container_id + "\n"
    return container_id


def remove_pod(clients: Clients, pod_id: str) -> None:
    assert clients.ok("stopp", pod_id) == f"Stopped sandbox {pod_id}\n"
    assert clients.ok("rmp", pod_id) == f"Removed sandbox {pod_id}\n"


# ---- every README verb through crictl -----------------------------------------------------------------------


def test_version_info_and_runtime_config(clients: Clients) -> None:
    version = clients.ok("version")
    assert "RuntimeName:  cripy\n" in version and "RuntimeApiVersion:  v1\n" in version
    info = json.loads(clients.ok("info"))
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}
    assert info["config"]["cripy"]["listen"] == str(clients.env.daemon.socket)  # the runtime's verbose info
    assert "config" not in json.loads(clients.ok("info", "-q"))
    assert clients.ok("runtime-config") == "cgroup driver:   CGROUPFS\n"


def test_pull_images_inspecti_imagefsinfo_rmi(clients: Clients, plain_registry: Registry) -> None:
    built = busybox_image(config={"Cmd": ["sh"], "User": "1234"})
    ref = plain_registry.push_image(unique("crictl/busybox"), "v1", built)
    repo = ref.rsplit(":", 1)[0]
    out = clients.ok("pull", ref)
    image_id = out.removeprefix("Image is up to date for ").strip()
    assert image_id.startswith("sha256:") and out.startswith("Image is up to date for ")

    table = clients.ok("images").splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    row = next(line.split() for line in table if line.startswith(repo + " "))
    assert row[:3] == [repo, "v1", image_id.removeprefix("sha256:")[:13]]
    assert image_id in clients.ok("images", "-q").split()
    details = clients.ok("images", "-v")
    assert f"ID: {image_id}\nRepoTags: {ref}\nRepoDigests: {repo}@{built.manifest_digest}\n" in details
    assert "Uid: value:1234\n" in details

    inspected = json.loads(clients.ok("inspecti", ref))
    assert inspected["status"]["id"] == image_id
    assert inspected["status"]["repoDigests"] == [f"{repo}@{built.manifest_digest}"]
    assert inspected["status"]["uid"] == {"value": "1234"}
    assert inspected["info"]  # the runtime's verbose info, beside the status

    filesystems = json.loads(clients.ok("imagefsinfo"))["status"]["imageFilesystems"]
    assert Path(filesystems[0]["fsId"]["mountpoint"]).is_relative_to(clients.env.daemon.root)
    assert int(filesystems[0]["usedBytes"]["value"]) > 0

    assert clients.ok("rmi", ref) == f"Deleted: {ref}\n"
    assert image_id not in clients.ok("images", "-q").split()
    gone = clients.crictl("inspecti", ref)
    assert gone.returncode != 0 and "no such image" in gone.err


def test_pod_lifecycle(clients: Clients) -> None:
    name = "Crictl-Lifecycle-Pod-" + os.urandom(3).hex()
    pod_id, _ = run_pod(clients, name)
    listed = clients.ok("pods", "--name", name).splitlines()
    assert listed[0].split() == ["POD", "ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
    assert listed[1].split()[0] == pod_id[:13] and name in listed[1].split() and "Ready" in listed[1].split()
    assert clients.ok("pods", "-q", "--name", name) == pod_id + "\n"
    status = json.loads(clients.ok("inspectp", pod_id))
    assert status["status"]["state"] == "SANDBOX_READY"
    assert status["status"]["metadata"]["name"] == name
    assert status["status"]["network"]["ip"].startswith(clients.env.network.prefix + ".")
    assert status["info"]["hostname"] == socket.gethostname()  # no hostname asked: the node's, as the kubelet gets
    assert clients.ok("stopp", pod_id) == f"Stopped sandbox {pod_id}\n"
    assert json.loads(clients.ok("inspectp", pod_id))["status"]["state"] == "SANDBOX_NOTREADY"
    assert clients.ok("rmp", pod_id) == f"Removed sandbox {pod_id}\n"
    assert clients.ok("pods", "-q", "--name", name) == ""
    assert clients.env.list_pods(id=pod_id) == []


def test_container_lifecycle(clients: Clients) -> None:
    pod_name = "Crictl-Containers-" + os.urandom(3).hex()
    pod_id, pod_file = run_pod(clients, pod_name)
    ctr = run_container(clients, pod_id, pod_file, pod_name, "worker",
                        ["sh", "-c", "echo started; echo warning >&2; exec sleep 3600"])
    clients.env.wait_for("the container's first log line",
                         lambda: "started" in clients.crictl("logs", ctr).out)

    rows = [line.split() for line in clients.ok("ps", "-a", "--pod", pod_id).splitlines()]
    assert rows[0][-2:] == ["POD", "NAMESPACE"]
    assert rows[1][0] == ctr[:13] and "Running" in rows[1] and rows[1][-2:] == [pod_name, NAMESPACE]
    status = json.loads(clients.ok("inspect", ctr))
    assert status["status"]["state"] == "CONTAINER_RUNNING" and status["status"]["exitCode"] == 0
    assert status["info"]["pid"] > 0  # the runtime's verbose info
    logs = clients.crictl("logs", ctr)
    assert (logs.returncode, logs.out, logs.err) == (0, "started\n", "warning\n")

    assert clients.ok("exec", "-s", ctr, "sh", "-c", "echo $((6*7))").startswith("42\n")
    failed = clients.crictl("exec", "-s", ctr, "sh", "-c", "exit 3")
    assert failed.returncode != 0 and "exited with 3" in failed.err

    stats = clients.ok("stats", "--id", ctr).splitlines()
    assert stats[0].removeprefix("\x1b[2J\x1b[H").split() == ["CONTAINER", "NAME", "CPU", "%", "MEM", "DISK",
                                                               "INODES", "SWAP"]
    assert stats[1].split()[:2] == [ctr[:13], "worker"]

    assert clients.ok("update", "--memory", str(96 * 1024 * 1024), "--cpu-quota", "50000", ctr) == ctr + "\n"
    resources = json.loads(clients.ok("inspect", ctr))["status"]["resources"]["linux"]
    assert (resources["memoryLimitInBytes"], resources["cpuQuota"]) == (str(96 * 1024 * 1024), "50000")
    assert int(clients.env.sh(ctr, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")) == 96 * 1024 * 1024

    assert clients.ok("stop", "-t", "1", ctr) == ctr + "\n"
    assert json.loads(clients.ok("inspect", ctr))["status"]["state"] == "CONTAINER_EXITED"
    assert clients.ok("rm", ctr) == ctr + "\n"
    assert clients.crictl("inspect", ctr).returncode != 0
    remove_pod(clients, pod_id)


# The terminal's size reaches the command shortly after it starts (as with every runtime: the client sends it once
# the session is up): the script waits for it rather than racing it.
SIZE_THEN_ECHO = ('while :; do size=$(stty size 2>/dev/null) && [ -n "$size" ] && [ "$size" != "0 0" ] && break; '
                  'sleep 0.05; done; echo $size; read line; echo got:$line; exit 4')


def test_exec_it_on_a_terminal(clients: Clients) -> None:
    pod_name = "Crictl-Terminal-" + os.urandom(3).hex()
    pod_id, pod_file = run_pod(clients, pod_name)
    ctr = run_container(clients, pod_id, pod_file, pod_name, "shell", ["sleep", "3600"])
    pid, fd = pty.fork()
    if pid == 0:  # the child: crictl with the pty as its controlling terminal
        os.execv(str(KIT.crictl), [str(KIT.crictl), "--config", str(clients.config), "exec", "-it", ctr,
                                   "sh", "-c", SIZE_THEN_ECHO])
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 97, 0, 0))
        output = read_pty_until(fd, b"31 97")
        os.write(fd, b"typed\r")
        output += read_pty_until(fd, b"got:typed")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"31 97" in output and b"got:typed" in output, output
    assert os.waitstatus_to_exitcode(status) != 0  # crictl reports the command's exit 4 as its own failure
    remove_pod(clients, pod_id)


def read_pty_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    """Bytes from the pty until `marker` shows (the timeout only stops a hang)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_attach(clients: Clients) -> None:
    pod_name = "Crictl-Attach-" + os.urandom(3).hex()
    pod_id, pod_file = run_pod(clients, pod_name)
    ctr = run_container(clients, pod_id, pod_file, pod_name, "reader",
                        ["sh", "-c", "read line; echo got:$line; sleep 3600"], stdin=True)
    attached = subprocess.Popen([str(KIT.crictl), "--config", str(clients.config), "attach", "-i", ctr],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert attached.stdin is not None and attached.stdout is not None
        attached.stdin.write(b"through-attach\n")
        attached.stdin.flush()
        assert attached.stdout.readline() == b"got:through-attach\n"
    finally:
        attached.kill()
        attached.communicate(timeout=30)
    assert clients.ok("logs", ctr) == "got:through-attach\n"
    remove_pod(clients, pod_id)


def test_port_forward(clients: Clients) -> None:
    pod_name = "Crictl-Forward-" + os.urandom(3).hex()
    pod_id, pod_file = run_pod(clients, pod_name)
    ctr = run_container(clients, pod_id, pod_file, pod_name, "web", [
        "sh", "-c", "mkdir -p /www; echo hello-through-crictl > /www/index.html; exec httpd -f -p 8080 -h /www"])
    clients.env.wait_for("httpd", lambda: clients.env.exec(
        ctr, ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"]).exit_code == 0)
    for client in (clients.crictl, clients.ctl):
        forward = forward_process(clients, client is clients.crictl, pod_id)
        try:
            assert forward.stdout is not None
            first = forward.stdout.readline().decode()
            match = re.fullmatch(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080\n", first)
            assert match, first
            port = int(match.group(1))
            assert forward.stdout.readline().decode() == f"Forwarding from [::1]:{port} -> 8080\n"
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                response = b""
                while chunk := conn.recv(65536):
                    response += chunk
            assert response.endswith(b"\r\n\r\nhello-through-crictl\n"), response
            assert forward.stdout.readline().decode() == f"Handling connection for {port}\n"
        finally:
            forward.terminate()
            forward.communicate(timeout=30)
    remove_pod(clients, pod_id)


def forward_process(clients: Clients, crictl: bool, pod_id: str) -> subprocess.Popen[bytes]:
    argv = ([str(KIT.crictl), "--config", str(clients.config)] if crictl else
            [sys.executable, "-m", "cripy.cli", "ctl", "-r", clients.endpoint])
    return subprocess.Popen([*argv, "port-forward", pod_id, "0:8080"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ---- cripy ctl prints what crictl prints --------------------------------------------------------------------


@dataclass
class Scene:
    """What the parity tests list and inspect: a pod with a running and an exited container, and an image."""

    pod: str
    running: str
    exited: str
    image: str


@pytest.fixture(scope="module")
def scene(clients: Clients) -> Iterator[Scene]:
    pod_id, pod_file = run_pod(clients, POD_NAME)
    running = run_container(clients, pod_id, pod_file, POD_NAME, "server",
                            ["sh", "-c", "echo one; echo two >&2; echo three; exec sleep 3600"])
    exited = run_container(clients, pod_id, pod_file, POD_NAME, "job", ["sh", "-c", "echo done"])
    clients.env.wait_state(exited)
    clients.env.wait_for("the server's logs", lambda: "three" in clients.crictl("logs", running).out)
    yield Scene(pod=pod_id, running=running, exited=exited, image=BUSYBOX)
    remove_pod(clients, pod_id)


TEXT_VERBS = [
    "version", "runtime-config",
    "images", "images -q", "images -v", "images --digests", "images --no-trunc", "images --pinned",
    "images {image}", "images -f dangling=false", "inspecti -o table {image}",
    "pods", "pods -q", "pods -v", "pods --no-trunc", "pods --name Parity", "pods --namespace crictl",
    "pods --label app=parity", "pods --state ready", "pods -l", "pods --id {pod}", "inspectp -o table {pod}",
    "ps", "ps -a", "ps -q", "ps -aq", "ps -v", "ps -a --no-trunc", "ps --name serv", "ps -a --state exited",
    "ps -a --label io.kubernetes.container.name=job", "ps -l", "ps -n 2", "ps --pod {pod} -a", "ps -a -r",
    "ps -a --image {image}", "ps --namespace crictl -a", "inspect -o table {running}", "inspect -o table {exited}",
    "logs {running}", "logs --tail 1 {running}", "logs -t {exited}",
    "stats", "stats -a", "stats {running}", "statsp", "statsp {pod}",
]
DOCUMENT_VERBS = [
    "info", "info -o yaml", "info -q",
    "inspecti {image}", "inspecti -o yaml {image}", "inspecti -q {image}", "imagefsinfo", "imagefsinfo -o yaml",
    "inspectp {pod}", "inspectp -o yaml {pod}", "inspectp -q {pod}", "inspectp --name Parity",
    "inspect {running}", "inspect -o yaml {running}", "inspect {exited}", "inspect --name job -a",
    "inspect {running} {exited}",
    "images -o yaml", "pods -o yaml", "ps -a -o yaml", "stats -o yaml", "statsp -o yaml",
]
PROTO_JSON_VERBS = ["images -o json", "pods -o json", "ps -a -o json", "stats -o json", "statsp -o json"]


def argv(template: str, scene: Scene) -> list[str]:
    return [word.format(**vars(scene)) for word in template.split()]


RELATIVE_TIME = re.compile(r"(Less than a second|About a minute|About an hour|\d+ (seconds?|minutes|hours|days|"
                           r"weeks|months|years)) ago")
CLEAR_SCREEN = "\x1b[2J\x1b[H"


def normalised(text: str, template: str) -> str:
    # A relative time also sets the width of its column: the padding after it and after its header goes too.
    text = re.sub(RELATIVE_TIME.pattern + " *", "<ago> ", text).replace(CLEAR_SCREEN, "")
    text = re.sub("CREATED +", "CREATED ", text)
    if template.startswith("stats"):
        # The readings of live counters: keep each row's id and name (the first two columns), not the figures.
        lines = text.splitlines()
        text = "\n".join([lines[0]] + [" ".join(line.split()[:2]) for line in lines[1:]]) + "\n"
    return text


def live_values_removed(data: Any) -> Any:
    """A document without the readings that change from call to call (stats counters, their timestamps)."""
    if isinstance(data, dict):
        return {key: (None if key in ("timestamp", "value") and not isinstance(value, (dict, list)) else
                      live_values_removed(value)) for key, value in data.items()}
    if isinstance(data, list):
        return [live_values_removed(item) for item in data]
    return data


def both(clients: Clients, template: str, scene: Scene) -> tuple[Run, Run]:
    args = argv(template, scene)
    return clients.crictl(*args), clients.ctl(*args)


@pytest.mark.parametrize("template", TEXT_VERBS)
def test_ctl_prints_what_crictl_prints(clients: Clients, scene: Scene, template: str) -> None:
    crictl, ctl = both(clients, template, scene)
    assert crictl.returncode == 0, crictl.err
    assert (ctl.returncode, normalised(ctl.out, template)) == (0, normalised(crictl.out, template)), ctl.err


@pytest.mark.parametrize("template", DOCUMENT_VERBS)
def test_ctl_prints_crictl_documents(clients: Clients, scene: Scene, template: str) -> None:
    crictl, ctl = both(clients, template, scene)
    assert crictl.returncode == 0, crictl.err
    assert ctl.returncode == 0, ctl.err
    if template.startswith(("imagefsinfo", "stats")):
        # Live readings differ; the text around them must not.
        load = yaml.safe_load if "yaml" in template else json.loads
        assert live_values_removed(load(ctl.out)) == live_values_removed(load(crictl.out))
        masked = re.compile(r'("?(timestamp|value)"?: )"?\d+"?')
        assert masked.sub(r"\1N", ctl.out) == masked.sub(r"\1N", crictl.out)
    else:
        assert ctl.out == crictl.out


@pytest.mark.parametrize("template", PROTO_JSON_VERBS)
def test_ctl_protobuf_json_matches_crictl(clients: Clients, scene: Scene, template: str) -> None:
    crictl, ctl = both(clients, template, scene)
    assert crictl.returncode == 0 and ctl.returncode == 0, crictl.err + ctl.err
    # Key order matters, whitespace does not (protojson randomises it per build).
    ordered = lambda text: json.loads(text, object_pairs_hook=list)  # noqa: E731
    if template.startswith("stats"):
        assert live_values_removed(json.loads(ctl.out)) == live_values_removed(json.loads(crictl.out))
        assert list_keys(ordered(ctl.out)) == list_keys(ordered(crictl.out))
    else:
        assert ordered(ctl.out) == ordered(crictl.out)


def list_keys(data: Any) -> Any:
    """The key structure of an order-preserving JSON parse (lists of pairs), values dropped."""
    if isinstance(data, list) and all(isinstance(item, tuple) for item in data):
        return [(key, list_keys(value)) for key, value in data]
    if isinstance(data, list):
        return [list_keys(item) for item in data]
    return None


def test_ctl_and_crictl_fail_alike_on_a_missing_object(clients: Clients, scene: Scene) -> None:
    for args in (["inspect", "0" * 64], ["inspectp", "0" * 64], ["inspecti", "no/such:image"], ["logs", "0" * 64]):
        crictl, ctl = clients.crictl(*args), clients.ctl(*args)
        assert crictl.returncode == ctl.returncode == 1, (args, crictl, ctl)
        assert crictl.out == ctl.out == "", args


def test_ctl_drives_a_container_like_crictl(clients: Clients) -> None:
    """The mutating verbs print the same: runp, create, start, update, stop, rm, stopp, rmp, with their -f/-a."""
    outputs: dict[str, list[str]] = {}
    for name, client in (("crictl", clients.crictl), ("ctl", clients.ctl)):
        pod_name = f"Mutating-{name}-" + os.urandom(3).hex()
        pod_file = pod_config_file(clients.env, pod_name)
        pod_id = client("runp", pod_file).out.strip()
        container_file = container_config_file(clients.env, pod_name, "c", ["sleep", "3600"])
        ctr = client("create", pod_id, container_file, pod_file).out.strip()
        steps = [client("start", ctr), client("update", "--cpu-share", "512", ctr), client("rm", ctr),
                 client("stop", "-t", "1", ctr), client("rm", ctr), client("rmp", pod_id), client("rmp", "-f", pod_id)]
        outputs[name] = [f"{step.returncode} {step.out}".replace(ctr, "CTR").replace(pod_id, "POD") for step in steps]
    assert outputs["ctl"] == outputs["crictl"]
    assert outputs["crictl"] == ["0 CTR\n", "0 CTR\n", "1 ", "0 CTR\n", "0 CTR\n", "1 ",
                                 "0 Stopped sandbox POD\nRemoved sandbox POD\n"]


def test_ctl_events_stream_what_crictl_streams(clients: Clients) -> None:
    """`events` on both clients while a container starts: the same events, in protobuf JSON."""
    watchers = {
        "crictl": subprocess.Popen([str(KIT.crictl), "--config", str(clients.config), "events"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "ctl": subprocess.Popen([sys.executable, "-m", "cripy.cli", "ctl", "-r", clients.endpoint, "events"],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    }
    time.sleep(1.5)  # both subscribed before the events happen
    pod_name = "Events-" + os.urandom(3).hex()
    pod_id, pod_file = run_pod(clients, pod_name)
    run_container(clients, pod_id, pod_file, pod_name, "c", ["sleep", "3600"])
    remove_pod(clients, pod_id)
    time.sleep(1.0)
    texts = {}
    for name, process in watchers.items():
        process.terminate()
        texts[name], _ = process.communicate(timeout=30)
    events = {name: [(event["containerEventType"], event["podSandboxStatus"]["id"])
                     for event in json_stream(text.decode())] for name, text in texts.items()}
    assert events["crictl"], texts["crictl"]
    assert events["ctl"] == events["crictl"]
    assert ("CONTAINER_STARTED_EVENT", pod_id) in events["crictl"]


def json_stream(text: str) -> Iterator[Any]:
    decoder, index = json.JSONDecoder(), 0
    while index < len(text.rstrip()):
        while text[index].isspace():
            index += 1
        value, index = decoder.raw_decode(text, index)
        yield value


def test_the_readme_lists_only_verbs_tested_here() -> None:
    """Every verb of the README's `cripy ctl` lines has a crictl test above."""
    listed = set()
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if line.startswith("cripy ctl "):
            for usage in line.removeprefix("cripy ctl ").split("#")[0].split(" | "):
                words = [word for word in usage.split() if not word.startswith("-") and not word.startswith("unix:")]
                listed.add(words[0])
    tested = {"version", "info", "pull", "images", "inspecti", "rmi", "imagefsinfo", "runp", "pods", "inspectp",
              "stopp", "rmp", "create", "start", "ps", "inspect", "logs", "exec", "stats", "update", "attach",
              "port-forward", "runtime-config", "events", "statsp"}
    assert listed and listed <= tested, listed - tested
