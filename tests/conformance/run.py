"""`make conformance`: the CRI validation suite (critest) against a cripy of this checkout, compared with
tests/conformance/expected.tsv and with what containerd and CRI-O give on this kind of machine.

It starts the conformance kit's registry on a free 127.0.0.1 port, and cripy on a temporary root with its own
registries.conf (registry.k8s.io, gcr.io and k8s.gcr.io mirrored to that registry), CNI bridge network and cgroup
parent; runs critest sequentially with a JSON report; tears everything down (pods through CRI, the daemon, the
registry, the bridge, the cgroup parent, the directory); then prints the comparison and exits non-zero when any
spec did worse than expected. critest runs twice: the validation specs, then the benchmark specs (-benchmark, with
the small counts of benchmarking.yaml), which the validation run skips.

The kit's location: CRI_CONFORMANCE_KIT (default ../shared/conformance beside the repository); CRITEST and CRICTL
override its binaries. critest's port-mapping specs bind host ports 12000-12003, so runs on one machine take turns
on a lock file.

    python -m tests.conformance.run [--focus REGEX] [--skip REGEX] [--keep] [--write-expected]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from cripy.linux import mount
from cripy.network.cni import default_bridge_conflist
from tests.conformance import compare
from tests.conformance.kit import Kit

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = Path(__file__).with_name("expected.tsv")
BENCHMARKING_PARAMS = Path(__file__).with_name("benchmarking.yaml")
HOST_PORTS_LOCK = Path("/tmp/critest-hostports.lock")
MIRRORED = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")
CRITEST_TIMEOUT = 1200  # seconds; a whole run takes one to two minutes here
OUTPUT_DIR = REPO_ROOT / ".conformance"  # the last run's report and daemon log, for a look after a failure


# ---------------------------------------------------------------------------------------------------- set-up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registries_conf(port: int) -> str:
    mirror = f"127.0.0.1:{port}"
    parts = [f'[[registry]]\nlocation = "{mirror}"\ninsecure = true\n']
    for name in MIRRORED:
        parts.append(f'[[registry]]\nprefix = "{name}"\nlocation = "{name}"\n'
                     f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n')
    return "\n".join(parts)


def cripy_toml(work: Path, cni_dir: Path, cgroup_parent: str) -> str:
    return f"""
[cripy]
root = "{work}/root"
runroot = "{work}/run"
listen = "{work}/cripy.sock"
log_level = "info"

[images]
registries_conf = "{work}/registries.conf"
registries_conf_d = "{work}/registries.conf.d"
signature_policy = "{work}/policy.json"
auth_file = ""

[network]
conf_dir = "{cni_dir}"
plugin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]

[runtime]
cgroup_parent = "{cgroup_parent}"
"""


def unused_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.240/12 that no route on the node already covers."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_network(word, strict=False) for line in routes.splitlines()
             for word in line.split()[:1] if "/" in word]
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{240 + secrets.randbelow(16)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise SystemExit("conformance: found no free /24 under 10.240.0.0/12 for the test network")


class Environment:
    """The registry, the daemon and the network of one run; `close` removes all of it, also after a failure."""

    def __init__(self, kit: Kit, keep: bool) -> None:
        self.kit = kit
        self.keep = keep
        self.tag = secrets.token_hex(3)
        # Short: conmon's attach socket, <runroot>/attach/<64-hex id>/attach, must fit a unix socket address.
        self.work = Path(tempfile.mkdtemp(prefix="ccf", dir="/tmp"))
        self.work.chmod(0o711)  # the root of a pod in a user namespace, nobody here, walks through it to its rootfs
        self.bridge = f"cripyconf{self.tag[:5]}"
        self.cgroup_parent = f"/cripy-conformance-{self.tag}"
        self.registry_dir = self.work / "registry"
        self.socket = self.work / "cripy.sock"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.registry_started = False

    def start(self) -> None:
        port = free_port()
        step(f"registry: the kit's images on 127.0.0.1:{port}")
        self.registry_started = True
        run([str(self.kit.images_sh), "up", str(port), str(self.registry_dir)], timeout=600)
        (self.work / "registries.conf").write_text(registries_conf(port))
        (self.work / "registries.conf.d").mkdir()
        (self.work / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        cni_dir = self.work / "cni"
        cni_dir.mkdir()
        subnet = unused_subnet()
        (cni_dir / "10-conformance.conflist").write_text(default_bridge_conflist(
            subnet=str(subnet), bridge=self.bridge, data_dir=str(self.work / "ipam"), name=f"cripy-conf-{self.tag}"))
        config = self.work / "cripy.toml"
        config.write_text(cripy_toml(self.work, cni_dir, self.cgroup_parent))
        step(f"cripy: root {self.work}/root, network {subnet} on {self.bridge}")
        with (self.work / "cripy.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "cripy.cli", "--config", str(config), "--config-dir", str(self.work / "cripy.d")],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise SystemExit(f"conformance: cripy exited with {self.daemon.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                with contextlib.suppress(grpc.RpcError), self.channel() as channel:
                    api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=2)
                    return
            time.sleep(0.1)
        raise SystemExit(f"conformance: cripy did not answer within {timeout}s:\n{self.log_tail()}")

    @contextlib.contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        channel = grpc.insecure_channel(f"unix://{self.socket}")
        try:
            yield channel
        finally:
            channel.close()

    def log_tail(self, lines: int = 40) -> str:
        path = self.work / "cripy.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    # -- teardown

    def close(self) -> list[str]:
        """Remove what the run made; the problems met."""
        problems: list[str] = []
        if self.daemon is not None and self.daemon.poll() is None:
            problems += self._remove_pods()
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                problems.append("cripy did not stop within 30s of SIGTERM: killed")
                self.daemon.kill()
                self.daemon.wait()
        if self.registry_started:
            run([str(self.kit.images_sh), "down", str(self.registry_dir)], check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        _remove_cgroup_tree(self.cgroup_parent)
        mounted = [m.mount_point for m in mount.mounts_under(self.work)]
        if mounted:
            problems.append("still mounted, directory kept: " + ", ".join(mounted))
        elif not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return problems

    def _remove_pods(self) -> list[str]:
        problems = []
        with self.channel() as channel:
            runtime = api_pb2_grpc.RuntimeServiceStub(channel)
            try:
                pods = runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
            except grpc.RpcError as e:
                return [f"ListPodSandbox at teardown: {e.code().name}: {e.details()}"]
            for pod in pods:
                step(f"teardown: removing a pod critest left: {pod.metadata.name} ({pod.id[:12]})")
                try:
                    runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
                    runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
                except grpc.RpcError as e:
                    problems.append(f"removing pod {pod.id[:12]} failed: {e.code().name}: {e.details()}")
        return problems


def _remove_cgroup_tree(parent: str) -> None:
    root = Path("/sys/fs/cgroup")
    for hierarchy in root.iterdir() if root.is_dir() else ():
        top = hierarchy / parent.strip("/")
        if top.is_dir():
            for directory, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


# ---------------------------------------------------------------------------------------------------- running


def step(message: str) -> None:
    print(f"conformance: {message}", flush=True)


def run(argv: list[str], *, timeout: float = 120, check: bool = True) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(f"conformance: {' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def host_ports_lock() -> Iterator[None]:
    with HOST_PORTS_LOCK.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            step(f"waiting for another critest run to finish (lock {HOST_PORTS_LOCK})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run_critest(env: Environment, focus: str, skip: str, *, benchmark: bool = False) -> Path:
    name = "benchmark" if benchmark else "critest"
    workdir = env.work / name
    workdir.mkdir()
    report = env.work / f"{name}-report.json"
    argv = [str(env.kit.critest), f"--runtime-endpoint=unix://{env.socket}", f"--image-endpoint=unix://{env.socket}",
            "--ginkgo.no-color", f"--ginkgo.json-report={report}"]
    if benchmark:
        argv += ["-benchmark", f"-benchmarking-params-file={BENCHMARKING_PARAMS}",
                 f"-benchmarking-output-dir={env.work / 'benchmark-output'}"]
    if focus:
        argv.append(f"--ginkgo.focus={focus}")
    if skip:
        argv.append(f"--ginkgo.skip={skip}")
    step("critest: " + " ".join(argv[1:]))
    started = time.monotonic()
    with (env.work / f"{name}.log").open("wb") as log:
        result = subprocess.run(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, timeout=CRITEST_TIMEOUT)
    step(f"critest{' -benchmark' if benchmark else ''} exited with {result.returncode} after "
         f"{time.monotonic() - started:.0f}s")
    if not report.exists():
        raise SystemExit(f"conformance: critest wrote no report; its output:\n{(env.work / f'{name}.log').read_text()}")
    return report


def keep_output(env: Environment) -> None:
    OUTPUT_DIR.mkdir(exist_ok=True)
    for name in ("critest-report.json", "critest.log", "benchmark-report.json", "benchmark.log", "cripy.log",
                 "cripy.toml", "registries.conf"):
        source = env.work / name
        if source.exists():
            shutil.copyfile(source, OUTPUT_DIR / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--focus", default="", help="only specs matching this regular expression")
    parser.add_argument("--skip", default="", help="leave out specs matching this regular expression")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--write-expected", action="store_true",
                        help="rewrite expected.tsv from this run (keeps the reasons given for non-passed specs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("conformance: critest needs root (namespaces, mounts, cgroups)")
    kit = Kit.locate()
    expected = compare.read_expected(EXPECTED)
    filtered = bool(args.focus or args.skip)

    with host_ports_lock():
        env = Environment(kit, args.keep)
        problems: list[str] = []
        try:
            env.start()
            # The validation specs, then the benchmark specs (critest runs those only with -benchmark): one table.
            outcomes = compare.read_report(run_critest(env, args.focus, args.skip), filtered=True)
            benchmarks = compare.read_report(run_critest(env, args.focus, args.skip, benchmark=True), filtered=True)
            outcomes = compare.merge(outcomes, benchmarks)
        finally:
            keep_output(env)
            problems = env.close()
    for problem in problems:
        step(f"teardown: {problem}")

    if args.write_expected:
        reasons = {s: e.reason for s, e in expected.items()}
        EXPECTED.write_text(compare.expected_tsv(outcomes, reasons))
        unexplained = [s for s, o in outcomes.items() if o.state != "passed" and not reasons.get(s)]
        step(f"wrote {EXPECTED}" + (f"; give a reason to each of {len(unexplained)} new non-passed spec(s)"
                                    if unexplained else ""))
        expected = {s: compare.Expectation(s, o.state, reasons.get(s, "")) for s, o in outcomes.items()}
    result = compare.compare(expected, outcomes, complete=not filtered)
    print(compare.render(result, outcomes, compare.read_anchors(kit.anchors)), flush=True)
    step(f"report and logs of this run: {OUTPUT_DIR}/")
    return 0 if result.ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
