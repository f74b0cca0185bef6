"""The gRPC server under the daemon, measured: cripy's own (cripy/rpc, what the daemon uses; also on the daemon's
busy-polling event loop, cripy/busypoll.py), grpcio's asyncio
server, grpcio's thread-pool server with a small pool, and grpclib (pure Python HTTP/2 on asyncio), each serving the same two CRI calls
(Version, and ListPodSandbox answering 20 pods) from a process of its own, driven by a grpcio client as the
kubelet's Go client would drive them.

    python -m bench.grpc_servers [--calls N]

Reports each server's RSS at rest and after the calls, per-call latency (p50/p99) back to back and after 20 ms of
quiet, and the server's CPU per call.
grpclib is a benchmark dependency only (requirements-dev.txt). The servers load the CRI messages without the
cri_api package's __init__, which would import grpcio into every one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

SERVICE = "runtime.v1.RuntimeService"
KINDS = ("cripy-rpc", "cripy-rpc+busypoll", "grpcio-aio", "grpcio-sync", "grpclib")
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET_CALLS = 100
QUIET_SECONDS = 0.02


def load_api() -> types.ModuleType:
    """cri_api.v1.api_pb2 alone (its package __init__ imports grpcio, which would skew the other servers)."""
    for name in ("cri_api", "cri_api.v1"):
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules.setdefault(name, package)
    spec = importlib.util.find_spec("google.protobuf")
    assert spec is not None and spec.submodule_search_locations
    site = Path(list(spec.submodule_search_locations)[0]).parents[1]
    spec = importlib.util.spec_from_file_location("cri_api.v1.api_pb2", site / "cri_api" / "v1" / "api_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cri_api.v1.api_pb2"] = module
    spec.loader.exec_module(module)
    return module


def pods_response(api: types.ModuleType, count: int = 20):
    return api.ListPodSandboxResponse(items=[
        api.PodSandbox(id=f"{i:064x}", metadata=api.PodSandboxMetadata(name=f"pod-{i}", uid=f"uid-{i}",
                                                                      namespace="default"),
                       state=api.SANDBOX_READY, created_at=1_700_000_000_000_000_000 + i,
                       labels={"app": "web", "io.kubernetes.pod.name": f"pod-{i}"}, annotations={"a": "b"},
                       runtime_handler="runc")
        for i in range(count)])


# ---------------------------------------------------------------------------------------------------- servers


def answering(answer):
    """An asyncio handler that answers every call with `answer`."""
    async def method(request, context):
        return answer
    return method


def serve(kind: str, socket: str) -> None:
    api = load_api()
    version = api.VersionResponse(version="0.1.0", runtime_name="bench", runtime_version="1",
                                  runtime_api_version="v1")
    pods = pods_response(api)
    if kind == "grpclib":
        asyncio.run(_serve_grpclib(api, socket, version, pods))
    elif kind == "cripy-rpc":
        asyncio.run(_serve_cripy(api, socket, version, pods))
    elif kind == "cripy-rpc+busypoll":
        from cripy.busypoll import BusyPollingLoop
        from cripy.config import DaemonConfig

        window = DaemonConfig().busy_poll_us / 1e6  # the daemon's default
        with asyncio.Runner(loop_factory=lambda: BusyPollingLoop(window)) as runner:
            runner.run(_serve_cripy(api, socket, version, pods))
    else:
        _serve_grpcio(kind, api, socket, version, pods)


def _serve_grpcio(kind: str, api, socket: str, version, pods) -> None:
    import grpc

    def handlers(make):
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Version": grpc.unary_unary_rpc_method_handler(
                make(version), request_deserializer=api.VersionRequest.FromString,
                response_serializer=api.VersionResponse.SerializeToString),
            "ListPodSandbox": grpc.unary_unary_rpc_method_handler(
                make(pods), request_deserializer=api.ListPodSandboxRequest.FromString,
                response_serializer=api.ListPodSandboxResponse.SerializeToString)})

    if kind == "grpcio-sync":
        from concurrent.futures import ThreadPoolExecutor

        server = grpc.server(ThreadPoolExecutor(4))
        server.add_generic_rpc_handlers((handlers(lambda answer: lambda request, context: answer),),)
        server.add_insecure_port(f"unix://{socket}")
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers(answering),))
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


async def _serve_cripy(api, socket: str, version, pods) -> None:
    from cripy import busypoll
    from cripy.rpc.server import Method, Server

    server = Server({
        f"/{SERVICE}/Version": Method(answering(version), api.VersionRequest.FromString,
                                      api.VersionResponse.SerializeToString),
        f"/{SERVICE}/ListPodSandbox": Method(answering(pods), api.ListPodSandboxRequest.FromString,
                                             api.ListPodSandboxResponse.SerializeToString),
    }, max_message_bytes=16 * 1024 * 1024, on_idle=busypoll.arm)  # a no-op unless the loop busy-polls
    await server.start(Path(socket))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _serve_grpclib(api, socket: str, version, pods) -> None:
    import grpclib.const
    import grpclib.server

    class Service:
        async def version(self, stream) -> None:
            await stream.recv_message()
            await stream.send_message(version)

        async def list_pods(self, stream) -> None:
            await stream.recv_message()
            await stream.send_message(pods)

        def __mapping__(self):
            unary = grpclib.const.Cardinality.UNARY_UNARY
            return {
                f"/{SERVICE}/Version": grpclib.const.Handler(self.version, unary, api.VersionRequest,
                                                              api.VersionResponse),
                f"/{SERVICE}/ListPodSandbox": grpclib.const.Handler(self.list_pods, unary, api.ListPodSandboxRequest,
                                                                     api.ListPodSandboxResponse),
            }

    server = grpclib.server.Server([Service()])
    await server.start(path=socket)
    print("ready", flush=True)
    await server.wait_closed()


# ---------------------------------------------------------------------------------------------------- measuring


def _rss_mib(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure(kind: str, calls: int, workdir: Path) -> dict[str, float]:
    import grpc
    from cri_api.v1 import api_pb2, api_pb2_grpc

    socket = workdir / f"{kind}.sock"
    server = subprocess.Popen([sys.executable, "-m", "bench.grpc_servers", "--serve", kind, str(socket)],
                              stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        time.sleep(0.5)
        figures = {"rss_idle": _rss_mib(server.pid)}
        channel = grpc.insecure_channel(f"unix://{socket}")
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        for _ in range(200):  # warm both sides
            stub.Version(api_pb2.VersionRequest())
        cpu_before = _cpu_seconds(server.pid)
        for name, call, request in (("version", stub.Version, api_pb2.VersionRequest()),
                                    ("list", stub.ListPodSandbox, api_pb2.ListPodSandboxRequest())):
            samples = []
            for _ in range(calls):
                begin = time.perf_counter()
                call(request)
                samples.append((time.perf_counter() - begin) * 1e6)
            samples.sort()
            figures[f"{name}_p50"] = statistics.median(samples)
            figures[f"{name}_p99"] = samples[int(len(samples) * 0.99)]
        figures["cpu_per_call_us"] = (_cpu_seconds(server.pid) - cpu_before) / (2 * calls) * 1e6
        samples = []
        for _ in range(QUIET_CALLS):  # a call to a server that has been idle, as most of the kubelet's are
            time.sleep(QUIET_SECONDS)
            begin = time.perf_counter()
            stub.Version(api_pb2.VersionRequest())
            samples.append((time.perf_counter() - begin) * 1e6)
        figures["quiet_p50"] = statistics.median(samples)
        figures["rss_after"] = _rss_mib(server.pid)
        channel.close()
        return figures
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "SOCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    with tempfile.TemporaryDirectory(prefix="grpcb-") as tmp:
        print(f"| server | RSS at rest (MiB) | RSS after {2 * args.calls} calls (MiB) | Version p50 / p99 (µs) | "
              "ListPodSandbox(20) p50 / p99 (µs) | server CPU per call (µs) | Version after 20 ms quiet, p50 (µs) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind in KINDS:
            f = measure(kind, args.calls, Path(tmp))
            print(f"| {kind} | {f['rss_idle']:.1f} | {f['rss_after']:.1f} | {f['version_p50']:.0f} / "
                  f"{f['version_p99']:.0f} | {f['list_p50']:.0f} / {f['list_p99']:.0f} | {f['cpu_per_call_us']:.0f} | "
                  f"{f['quiet_p50']:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
