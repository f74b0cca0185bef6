"""The two runtimes under test, each started by the suite on its own root, state directory and socket: cripy
(`python -m cripy.cli`) and containerd with its CRI plugin (Debian's `containerd` 1.6). Both get the same runc,
the same CNI plugins and network config, the same registry; `Peer.runtime`/`Peer.images` are CRI stubs.

Also here: finding the processes a runtime added (its daemon, its per-pod helpers: conmon for cripy,
containerd-shim-runc-v2 for containerd, and pause processes), reading their RSS and CPU times, and tearing
everything down again (pods through CRI, daemons and leftover helpers by PID, mounts under the temp root,
the bridge link, the cgroup parent).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from cripy.linux.mount import mounts_under, umount
from cripy.network.cniprotocol import default_bridge_conflist

REPO_ROOT = Path(__file__).resolve().parents[1]
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/bin/runc")
CONMON = Path("/usr/bin/conmon")
CGROUP_ROOT = Path("/sys/fs/cgroup")
START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PAUSE_COMMANDS = ("/catatonit", "/pause")


class PeerError(Exception):
    """A runtime could not be installed, started or stopped."""


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class BenchNetwork:
    """One CNI network both runtimes use: a unique bridge, a private /16, host-local IPAM data in the temp dir."""

    conf_dir: Path
    bridge: str
    subnet: str
    ipam_dir: Path

    @classmethod
    def create(cls, workdir: Path) -> BenchNetwork:
        suffix = secrets.token_hex(3)
        network = cls(conf_dir=workdir / "cni", bridge=f"crb{suffix}",
                      subnet=f"10.{secrets.randbelow(100) + 150}.0.0/16", ipam_dir=workdir / "ipam")
        network.conf_dir.mkdir(parents=True, exist_ok=True)
        text = default_bridge_conflist(subnet=network.subnet, bridge=network.bridge, data_dir=str(network.ipam_dir),
                                       name=f"bench{suffix}")
        (network.conf_dir / "10-bench.conflist").write_text(text)
        return network

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.ipam_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    name: str
    cmdline: str
    rss_bytes: int
    pss_bytes: int
    anon_bytes: int  # resident and anonymous (heaps, stacks): what the process itself made, shared with no one
    cpu_ticks: int  # utime + stime + cutime + cstime: reaped children (runc, CNI plugins) count too


def read_proc(pid: int) -> ProcInfo | None:
    base = Path("/proc") / str(pid)
    try:
        stat = (base / "stat").read_text()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        statm = (base / "statm").read_text().split()
        rollup: dict[str, int] = {}
        try:
            for line in (base / "smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Pss", "Anonymous"):
                    rollup[key] = int(value.split()[0]) * 1024
        except OSError:
            pass
    except (OSError, IndexError):
        return None
    # comm may hold spaces and parentheses: the fields after it start after the last ")".
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ProcInfo(pid, int(fields[1]), name, cmdline, int(statm[1]) * PAGE_SIZE, rollup.get("Pss", 0),
                    rollup.get("Anonymous", 0), ticks)


def all_processes() -> list[ProcInfo]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                found.append(info)
    return found


@dataclass
class ProcessSet:
    """The processes of one runtime at one moment."""

    daemon: ProcInfo | None
    helpers: list[ProcInfo] = field(default_factory=list)  # conmon / shims
    pauses: list[ProcInfo] = field(default_factory=list)    # pod infra (pause) processes under those helpers

    @property
    def cpu_ticks(self) -> int:
        procs = ([self.daemon] if self.daemon else []) + self.helpers + self.pauses
        return sum(p.cpu_ticks for p in procs)

    def cpu_seconds(self) -> float:
        return self.cpu_ticks / CLK_TCK


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def remove_cgroup_tree(relative: str) -> None:
    """rmdir a cgroup directory tree in every v1 hierarchy (and the unified one), deepest first."""
    relative = relative.strip("/")
    if not relative or not CGROUP_ROOT.is_dir():
        return
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / relative
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def unmount_under(path: Path) -> None:
    for mount in sorted(mounts_under(path), key=lambda m: -len(m.mount_point)):
        try:
            umount(mount.mount_point, detach=True)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------- peers


class Peer:
    """A runtime under test. Subclasses write their config, start the daemon and know their helpers."""

    name = ""

    def __init__(self, workdir: Path, network: BenchNetwork, registry_host: str, cgroup_parent: str) -> None:
        self.workdir = workdir
        self.network = network
        self.registry_host = registry_host
        self.cgroup_parent = cgroup_parent
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    # -- to implement

    @property
    def socket(self) -> Path:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_helper(self, proc: ProcInfo) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def state_files(self) -> list[Path]:
        """The runtime's metadata database files (their size should not grow with churn)."""
        raise NotImplementedError

    def state_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.state_files() if p.exists())

    def daemon_resources(self) -> dict[str, float]:
        """The daemon's open fds and threads now."""
        pid = self.pid
        if pid is None:
            return {"fds": 0, "threads": 0}
        threads = next((int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("Threads:")), 0)
        return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}

    # -- lifecycle

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Peer:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=self.environment())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PeerError(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self._ready():
                return self
            time.sleep(0.05)  # start-up only: neither daemon offers a readiness notification
        raise PeerError(f"{self.name} did not become ready within {START_TIMEOUT}s:\n{self.log_tail()}")

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        try:
            status = self.runtime.Status(api_pb2.StatusRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return all(c.status for c in status.status.conditions)

    def stop(self) -> None:
        """Pods removed through CRI first; then the daemon by PID; then helpers it left, mounts, cgroups."""
        if self._process is not None and self._process.poll() is None:
            self.remove_all_pods()
        self._close_channel()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        leftovers = self.processes().helpers
        kill_pids([p.pid for p in leftovers])
        unmount_under(self.workdir)
        remove_cgroup_tree(self.cgroup_parent)

    def remove_all_pods(self) -> list[str]:
        problems = []
        try:
            pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
        except grpc.RpcError as e:
            return [f"{self.name}: ListPodSandbox: {e.code().name}: {e.details()}"]
        for pod in pods:
            for call, request in ((self.runtime.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id)),
                                  (self.runtime.RemovePodSandbox,
                                   api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))):
                try:
                    call(request, timeout=120)
                except grpc.RpcError as e:
                    problems.append(f"{self.name}: {pod.id[:12]}: {e.code().name}: {e.details()}")
        return problems

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- clients

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}", options=[
                ("grpc.max_receive_message_length", 64 << 20)])
        return self._channel

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # -- processes

    def processes(self) -> ProcessSet:
        procs = all_processes()
        daemon = next((p for p in procs if p.pid == self.pid), None)
        helpers = [p for p in procs if p.pid != self.pid and self.is_helper(p)]
        helper_pids = {p.pid for p in helpers}
        pauses = [p for p in procs if p.ppid in helper_pids and p.cmdline.startswith(PAUSE_COMMANDS)]
        return ProcessSet(daemon, helpers, pauses)


class CripyPeer(Peer):
    name = "cripy"

    def __init__(self, workdir: Path, network: BenchNetwork, registry_host: str, cgroup_parent: str,
                 log_level: str = "info", profile_path: Path | None = None, metrics: bool = False,
                 drop_in: str = "") -> None:
        super().__init__(workdir, network, registry_host, cgroup_parent)
        self.profile_path = profile_path
        self.root = workdir / "root"
        self.runroot = workdir / "run"
        self.config_path = workdir / "cripy.toml"
        self.log_level = log_level
        # With metrics on, the daemon serves them here and the bench scrapes them as Prometheus would.
        self.metrics_socket = workdir / "metrics.sock" if metrics else None
        self._write_config()
        if drop_in:  # settings a run measures, over the defaults above
            (self.workdir / "cripy.d").mkdir(exist_ok=True)
            (self.workdir / "cripy.d" / "50-bench.toml").write_text(drop_in)

    @property
    def socket(self) -> Path:
        return self.workdir / "cripy.sock"

    def _write_config(self) -> None:
        (self.workdir / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{self.registry_host}"\ninsecure = true\n')
        (self.workdir / "registries.conf.d").mkdir(exist_ok=True)
        (self.workdir / "certs.d").mkdir(exist_ok=True)
        (self.workdir / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        self.config_path.write_text(f"""
[cripy]
root = "{self.root}"
runroot = "{self.runroot}"
listen = "{self.socket}"
log_level = "{self.log_level}"

[images]
registries_conf = "{self.workdir / 'registries.conf'}"
registries_conf_d = "{self.workdir / 'registries.conf.d'}"
signature_policy = "{self.workdir / 'policy.json'}"
auth_file = "{self.workdir / 'no-auth.json'}"
certs_dir = "{self.workdir / 'certs.d'}"

[runtime]
conmon = "{CONMON}"
cgroup_parent = "{self.cgroup_parent}"
[runtime.handlers.runc]
runtime_path = "{RUNC}"

[network]
conf_dir = "{self.network.conf_dir}"
plugin_dirs = ["{CNI_BIN_DIR}"]
""" + (f'\n[metrics]\naddress = "unix://{self.metrics_socket}"\n' if self.metrics_socket else ""))

    def command(self) -> list[str]:
        # cProfile writes its file when the daemon returns from main (cripy exits cleanly on SIGTERM).
        profiler = ["-m", "cProfile", "-o", str(self.profile_path)] if self.profile_path else []
        return [sys.executable, *profiler, "-m", "cripy.cli", "--config", str(self.config_path),
                "--config-dir", str(self.workdir / "cripy.d")]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONUNBUFFERED="1", REGISTRY_AUTH_FILE=str(self.workdir / "no-auth.json"))

    def is_helper(self, proc: ProcInfo) -> bool:
        return proc.name == "conmon" and str(self.runroot) in proc.cmdline

    def state_files(self) -> list[Path]:
        return [self.root / "cripy.db", self.root / "cripy.db-wal"]

    def version(self) -> str:
        reply = self.runtime.Version(api_pb2.VersionRequest(), timeout=10)
        return reply.runtime_version


class ContainerdPeer(Peer):
    name = "containerd"

    def __init__(self, workdir: Path, network: BenchNetwork, registry_host: str, cgroup_parent: str,
                 sandbox_image: str) -> None:
        super().__init__(workdir, network, registry_host, cgroup_parent)
        self.root = workdir / "root"
        self.state = workdir / "state"
        self.config_path = workdir / "config.toml"
        self.sandbox_image = sandbox_image
        self._write_config()

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def _write_config(self) -> None:
        hosts_dir = self.workdir / "certs.d" / self.registry_host
        hosts_dir.mkdir(parents=True, exist_ok=True)
        # hosts.toml (config_path) is how 1.6 configures a registry; `http://` makes it plain HTTP.
        (hosts_dir / "hosts.toml").write_text(
            f'server = "http://{self.registry_host}"\n\n'
            f'[host."http://{self.registry_host}"]\n  capabilities = ["pull", "resolve"]\n')
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        self.config_path.write_text(f"""
version = 2
root = "{self.root}"
state = "{self.state}"
oom_score = 0

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[{cri}]
  sandbox_image = "{self.sandbox_image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self.network.conf_dir}"
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{RUNC}"
  Root = "{self.state / 'runc'}"

[{cri}.registry]
  config_path = "{self.workdir / 'certs.d'}"
""")

    def command(self) -> list[str]:
        return ["containerd", "--config", str(self.config_path)]

    def is_helper(self, proc: ProcInfo) -> bool:
        return proc.name.startswith("containerd-shim") and f"-address {self.socket} " in proc.cmdline + " "

    def state_files(self) -> list[Path]:
        return [self.root / "io.containerd.metadata.v1.bolt" / "meta.db"]

    def version(self) -> str:
        reply = self.runtime.Version(api_pb2.VersionRequest(), timeout=10)
        return reply.runtime_version


# ---------------------------------------------------------------------------------------------------- install


def ensure_containerd() -> None:
    """Installs Debian's containerd when missing (install-deps.sh has it; this covers `python -m bench.run` alone)."""
    if shutil.which("containerd") and shutil.which("containerd-shim-runc-v2"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "containerd"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise PeerError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")


def tool_version(command: list[str]) -> str:
    """The first line of a tool's version output, without the program name noise."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    match = re.search(r"\d+\.\d+[\w.~+-]*", first)
    return match.group(0) if match else first


def containerd_package_version() -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containerd"], capture_output=True, text=True)
    return result.stdout.strip() or tool_version(["containerd", "--version"])
