"""Helpers for the pod and container integration tests: a private CNI bridge network, a cripy daemon wired to it
with the test images imported, CRI config builders, and waiting for container states.

A `PodEnv` owns one daemon on a short /tmp directory (conmon's attach socket path must fit sun_path), one bridge
network and the images. `PodEnv.close()` stops and removes every pod through CRI before stopping the daemon, then
deletes the bridge link and the IPAM data, so a test that fails half-way leaves nothing behind.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2

from cripy.linux import mount
from cripy.network.cniprotocol import default_bridge_conflist
from tests.integration.daemon import REPO_ROOT, SESSION_TAG, SHORT_BASE, SHORT_PREFIX, CripyDaemon, short_tempdir
from tests.support.images import BuiltImage, busybox_image, user_image, write_oci_layout

CNI_PLUGIN_DIR = Path("/usr/lib/cni")
BUSYBOX = "localhost/cripytest/busybox:latest"
USER_IMAGE = "localhost/cripytest/user:latest"
STOPSIGNAL_IMAGE = "localhost/cripytest/stopsignal:latest"
# Test CNI networks and their bridges (a bridge name has at most 15 characters: prefix 10 + 4).
NETWORK_PREFIX = f"cripyt{SESSION_TAG}"


def test_images() -> dict[str, BuiltImage]:
    return {
        BUSYBOX: busybox_image(),
        USER_IMAGE: user_image(),
        STOPSIGNAL_IMAGE: busybox_image(config={"StopSignal": "SIGUSR1", "Cmd": ["sh"]}),
    }


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class BridgeNetwork:
    """A test CNI network: its own bridge, a random private /24 and IPAM data in the test directory."""

    name: str
    bridge: str
    prefix: str  # "10.X.Y"
    data_dir: Path

    @classmethod
    def random(cls, workdir: Path) -> BridgeNetwork:
        suffix = secrets.token_hex(2)
        prefix = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        return cls(name=f"{NETWORK_PREFIX}{suffix}", bridge=f"{NETWORK_PREFIX}{suffix}", prefix=prefix,
                   data_dir=workdir / "ipam")

    @property
    def subnet(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    def write_conflist(self, conf_dir: Path) -> None:
        text = default_bridge_conflist(subnet=self.subnet, bridge=self.bridge, data_dir=str(self.data_dir),
                                       name=self.name)
        (conf_dir / "10-cripytest.conflist").write_text(text)

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- environment


class PodEnv:
    """A started daemon with a bridge network and the test images; build CRI configs and drive pods with it."""

    def __init__(self, workdir: Path, image_dir: Path, *, cgroup_parent: str, extra_toml: str = "",
                 registries_conf: str = "", plugin_dirs: tuple[Path, ...] = (CNI_PLUGIN_DIR,),
                 env: dict[str, str] | None = None, dropin: str = "") -> None:
        self.workdir = workdir
        self.network = BridgeNetwork.random(workdir)
        self.cgroup_parent = cgroup_parent
        toml = f'\n[runtime]\ncgroup_parent = "{cgroup_parent}"\n{extra_toml}'
        dirs = ", ".join(f'"{d}"' for d in plugin_dirs)
        self.daemon = CripyDaemon(workdir, extra_toml=f'plugin_dirs = [{dirs}]\n{toml}',
                                  registries_conf=registries_conf)
        self.daemon.env.update(env or {})
        if dropin:  # a drop-in can set keys of tables the main file already has ([cripy])
            (workdir / "cripy.d").mkdir(exist_ok=True)
            (workdir / "cripy.d" / "50-test.toml").write_text(dropin)
        self.network.write_conflist(self.daemon.cni_dir)  # before the daemon starts: it must see a network
        try:
            self.daemon.start()
            for name in test_images():
                import_image(self.daemon, image_dir / _dir_name(name), name)
        except BaseException:
            self.close()
            raise

    @property
    def rt(self) -> Any:
        return self.daemon.runtime

    # -- pods

    def pod_config(self, name: str, *, pid: int = api_pb2.CONTAINER, network: int = api_pb2.POD,
                   ipc: int = api_pb2.POD, **kwargs: Any) -> api_pb2.PodSandboxConfig:
        """A pod config with a unique uid, as kubelet sends it (namespace modes always set: kubelet asks for a PID
        namespace per container unless the pod shares one); kwargs set PodSandboxConfig fields."""
        linux = api_pb2.LinuxPodSandboxConfig()
        if "linux" in kwargs:
            linux.CopyFrom(kwargs.pop("linux"))
        linux.security_context.namespace_options.CopyFrom(api_pb2.NamespaceOption(network=network, pid=pid, ipc=ipc))
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=secrets.token_hex(8), namespace="cripytest"),
            hostname=kwargs.pop("hostname", ""),  # critest names none; a pod then gets the node's
            log_directory=str(self.workdir / "logs" / name),
            linux=linux,
            **kwargs,
        )

    def run_pod(self, config: api_pb2.PodSandboxConfig | str, **kwargs: Any) -> tuple[str, api_pb2.PodSandboxConfig]:
        if isinstance(config, str):
            config = self.pod_config(config, **kwargs)
        pod_id = self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        return pod_id, config

    def pod_status(self, pod_id: str, verbose: bool = False) -> api_pb2.PodSandboxStatusResponse:
        return self.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose),
                                        timeout=10)

    def stop_pod(self, pod_id: str) -> None:
        self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def remove_pod(self, pod_id: str) -> None:
        self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def list_pods(self, **filter_fields: Any) -> list[api_pb2.PodSandbox]:
        request = api_pb2.ListPodSandboxRequest()
        if filter_fields:
            request.filter.CopyFrom(api_pb2.PodSandboxFilter(**filter_fields))
        return list(self.rt.ListPodSandbox(request, timeout=10).items)

    # -- containers

    def container_config(self, name: str, command: list[str] | None = None, *, image: str = BUSYBOX,
                         **kwargs: Any) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image),
            command=command or [],
            log_path=f"{name}.log",
            **kwargs,
        )

    def create(self, pod_id: str, pod_config: api_pb2.PodSandboxConfig, config: api_pb2.ContainerConfig,
               timeout: float = 60) -> str:
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)
        return self.rt.CreateContainer(request, timeout=timeout).container_id

    def start(self, ctr_id: str) -> None:
        self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=ctr_id), timeout=60)

    def run(self, pod_id: str, pod_config: api_pb2.PodSandboxConfig, name: str, command: list[str] | None = None,
            **kwargs: Any) -> str:
        """Create and start a container."""
        ctr_id = self.create(pod_id, pod_config, self.container_config(name, command, **kwargs))
        self.start(ctr_id)
        return ctr_id

    def status(self, ctr_id: str, verbose: bool = False) -> api_pb2.ContainerStatus:
        return self.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr_id, verbose=verbose),
                                       timeout=10).status

    def stop(self, ctr_id: str, timeout: int = 0) -> None:
        self.rt.StopContainer(api_pb2.StopContainerRequest(container_id=ctr_id, timeout=timeout), timeout=timeout + 60)

    def remove(self, ctr_id: str) -> None:
        self.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=ctr_id), timeout=60)

    def list_containers(self, **filter_fields: Any) -> list[api_pb2.Container]:
        request = api_pb2.ListContainersRequest()
        if filter_fields:
            request.filter.CopyFrom(api_pb2.ContainerFilter(**filter_fields))
        return list(self.rt.ListContainers(request, timeout=10).containers)

    def exec(self, ctr_id: str, cmd: list[str], timeout: int = 20) -> api_pb2.ExecSyncResponse:
        return self.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=ctr_id, cmd=cmd, timeout=timeout),
                                timeout=timeout + 30)

    def sh(self, ctr_id: str, script: str, timeout: int = 20) -> str:
        """Run a shell script in the container; its stdout, or AssertionError with both streams on failure."""
        reply = self.exec(ctr_id, ["sh", "-c", script], timeout)
        assert reply.exit_code == 0, f"`{script}` exited {reply.exit_code}: {reply.stdout!r} {reply.stderr!r}"
        return reply.stdout.decode()

    def wait_state(self, ctr_id: str, state: int = api_pb2.CONTAINER_EXITED, timeout: float = 30) -> api_pb2.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(ctr_id)
            if status.state == state:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"container {ctr_id} did not reach state {state} within {timeout}s: {status}")
            time.sleep(0.05)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not true within {timeout}s")
            time.sleep(0.05)

    # -- teardown

    def remove_all_pods(self) -> list[str]:
        """Stop and remove every pod through CRI; the problems met, for the caller to report."""
        problems = []
        try:
            pods = self.list_pods()
        except grpc.RpcError as e:
            return [f"ListPodSandbox failed: {e.code().name}: {e.details()}"]
        for pod in pods:
            for call in (self.stop_pod, self.remove_pod):
                try:
                    call(pod.id)
                except grpc.RpcError as e:
                    problems.append(f"{call.__name__}({pod.id[:12]}): {e.code().name}: {e.details()}")
        return problems

    def close(self) -> None:
        """Remove every pod through CRI (starting the daemon again if a test left it stopped or killed), stop the
        daemon, delete the bridge; the directory goes only when nothing is mounted under it any more."""
        problems: list[str] = []
        try:
            if self.daemon.pid is None and (self.daemon.root / "cripy.db").exists():
                try:
                    self.daemon.start()
                except RuntimeError as e:
                    problems.append(f"the daemon did not start again for the teardown: {e}")
            if self.daemon.pid is not None:
                problems += self.remove_all_pods()
        finally:
            self.daemon.stop()
            if (self.daemon.root / "cripy.db").exists():
                # The suite's end check: whatever the tests did, nothing of this daemon is left on the node.
                audit = run_audit(self.daemon)
                if audit.returncode != 0:
                    problems.append(f"cripy audit after the tests found:\n{audit.stdout}{audit.stderr}")
            self.network.delete()
            if not mounts_under(self.workdir):
                shutil.rmtree(self.workdir, ignore_errors=True)
        assert not problems, "tearing the pods down failed:\n" + "\n".join(problems)


def run_audit(daemon: CripyDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`cripy audit` on the daemon's configuration (root, run root, network, runtimes)."""
    return subprocess.run(
        [sys.executable, "-m", "cripy.cli", "--config", str(daemon.config_path), "--config-dir",
         str(daemon.workdir / "cripy.d"), "audit", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def mounts_under(path: Path) -> list[str]:
    """The mount points at or below path (cripy's mountinfo parser: it unescapes octal-escaped paths)."""
    return [m.mount_point for m in mount.mounts_under(path)]


def _dir_name(image_name: str) -> str:
    return image_name.replace("/", "_").replace(":", "_")


def write_test_images(directory: Path) -> Path:
    for name, image in test_images().items():
        write_oci_layout(directory / _dir_name(name), image)
    return directory


def import_image(daemon: CripyDaemon, layout: Path, name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cripy.cli", "image", "import", str(layout), "--name", name, "-r", str(daemon.socket)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"image import of {name} failed: {result.stderr}{result.stdout}"


# ---------------------------------------------------------------------------------------------------- misc


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads at (nearly) the same moment; their results, or the exceptions they raised."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except Exception as e:  # returned for the test to inspect
            results[index] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


@dataclass
class LogLine:
    time: str
    stream: str
    tag: str
    text: str


def read_cri_log(path: Path) -> list[LogLine]:
    """Parse a CRI-format log: `<RFC3339Nano time> <stdout|stderr> <P|F> <text>` per line."""
    lines = []
    for raw in path.read_text().splitlines():
        time_text, stream, tag, text = (raw.split(" ", 3) + [""])[:4]
        lines.append(LogLine(time_text, stream, tag, text))
    return lines


def log_messages(lines: list[LogLine], stream: str | None = None) -> list[str]:
    """Reassemble full messages from partial (P) pieces, per stream."""
    out: list[str] = []
    pending: dict[str, str] = {}
    for line in lines:
        if stream is not None and line.stream != stream:
            continue
        pending[line.stream] = pending.get(line.stream, "") + line.text
        if line.tag == "F":
            out.append(pending.pop(line.stream))
    return out + [text for text in pending.values() if text]

