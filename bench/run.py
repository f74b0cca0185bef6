"""Entry point: `python -m bench.run [--quick] [--iterations N] [--output docs/benchmarks.md] [--only a,b]`.

Builds the images, starts a registry, cripy and containerd on a temporary directory, runs the scenarios, prints
the table, writes the markdown, and tears everything down again, also when a scenario fails or on Ctrl-C.

The process makes itself a child subreaper: conmon and containerd-shim daemonize, and on machines whose PID 1 does
not reap orphans their exits would otherwise pile up as zombies.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench import report
from bench.images import ImageSizes, build_images, push_images
from bench.peers import (BenchNetwork, ContainerdPeer, CripyPeer, Peer, containerd_package_version,
                         ensure_containerd, remove_cgroup_tree, tool_version, unmount_under)
from bench.scale import kubelet_scale
from bench.steps import scrape, step_breakdown
from bench.scenarios import SCENARIOS, Driver, Plan, Results, image_pulls, pull_warm_images, record_idle_memory
from tests.support.registry import Registry

PR_SET_CHILD_SUBREAPER = 36
CONTAINERD_RUN_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"))  # deepest first
ALL_SCENARIOS = (*SCENARIOS, ("scale", kubelet_scale))
SCENARIO_NAMES = ("pull",) + tuple(name for name, _ in ALL_SCENARIOS) + ("steps",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few iterations, small images")
    parser.add_argument("--iterations", type=int, default=None,
                        help="iterations of the lifecycle, exec and list figures (default 30; quick 3)")
    parser.add_argument("--output", type=Path, default=None, help="markdown report to write")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIO_NAMES)}")
    parser.add_argument("--profile-cripy", type=Path, default=None,
                        help="run cripy under cProfile and write its stats to this file (slows cripy down)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="cripy's log level (default info, like containerd's)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy both daemons' logs here at the end")
    parser.add_argument("--cripy-metrics", action="store_true",
                        help="turn cripy's Prometheus metrics on and scrape them every "
                             f"{SCRAPE_INTERVAL:g}s, as a Prometheus server would (to measure what they cost)")
    parser.add_argument("--cripy-config", type=Path, default=None,
                        help="a TOML file laid over cripy's bench configuration as a drop-in, to measure a setting")
    args = parser.parse_args(argv)
    args.cripy_drop_in = args.cripy_config.read_text() if args.cripy_config else ""
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    unknown = set(filter(None, args.only.split(","))) - set(SCENARIO_NAMES)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


SCRAPE_INTERVAL = 5.0


class Scraper:
    """Scrapes cripy's metrics endpoint (a unix socket) every SCRAPE_INTERVAL seconds in a thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self.scrapes = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL):
            try:
                scrape(self._path)
                self.scrapes += 1
            except OSError:
                self.failures += 1


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(keep: set[int]) -> None:
    """Collects exited daemonized helpers that were re-parented to us; leaves our own Popen children alone."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the ExitStack tears everything down."""
    raise KeyboardInterrupt


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def versions(peers: list[Peer]) -> dict[str, str]:
    found = {peer.name: peer.version() for peer in peers}
    found["containerd"] = containerd_package_version()
    found["runc"] = tool_version(["runc", "--version"])
    found["conmon"] = tool_version(["conmon", "--version"])
    found["python"] = sys.version.split()[0]
    return found


def run(args: argparse.Namespace) -> int:
    become_subreaper()
    signal.signal(signal.SIGTERM, interrupt)
    wanted = set(filter(None, args.only.split(","))) or set(SCENARIO_NAMES)
    plan = Plan.make(args.quick, args.iterations)
    ensure_containerd()
    workdir = Path(tempfile.mkdtemp(prefix="crb-", dir="/tmp"))  # short: conmon socket paths must fit sun_path
    cgroup_parent = f"/cripybench-{secrets.token_hex(3)}"
    results = Results()
    peers: list[Peer] = []
    keep: set[int] = set()
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, True)
        cleanup.callback(reap_orphans, keep)  # last: after the peers stopped
        cleanup.callback(remove_cgroup_tree, cgroup_parent)
        cleanup.callback(unmount_under, workdir)
        if args.keep_logs:
            cleanup.callback(copy_logs, workdir, args.keep_logs)

        log(f"building images ({'quick' if args.quick else 'full'} sizes) in {workdir}")
        built = build_images(ImageSizes.for_mode(args.quick))
        registry = Registry(workdir / "registry")
        cleanup.callback(registry.stop)
        registry.start()
        images = push_images(registry, built, ImageSizes.for_mode(args.quick))
        del built
        cleanup.callback(remove_if_created_empty, [p for p in CONTAINERD_RUN_DIRS if not p.exists()])
        network = BenchNetwork.create(workdir)
        cleanup.callback(network.delete)
        peers = [CripyPeer(workdir / "cripy", network, registry.host, f"{cgroup_parent}/cripy",
                           log_level=args.log_level, profile_path=args.profile_cripy, metrics=args.cripy_metrics,
                           drop_in=args.cripy_drop_in),
                 ContainerdPeer(workdir / "containerd", network, registry.host, f"{cgroup_parent}/containerd",
                                sandbox_image=images.pause.ref)]
        for peer in peers:
            cleanup.callback(peer.stop)
            peer.start()
        keep.update(p.pid for p in peers if p.pid)
        if args.cripy_metrics:
            scraper = Scraper(peers[0].metrics_socket)
            cleanup.callback(scraper.stop)
            scraper.start()
        keep.add(registry.pid or 0)
        drivers = [Driver(peer, images, workdir / "logs") for peer in peers]
        info = report.RunInfo(command=shlex.join(["python", "-m", "bench.run", *sys.argv[1:]]), date=report.now(),
                              machine=report.machine_info(), versions=versions(peers),
                              mode="quick" if args.quick else "full")
        time.sleep(1.0)
        record_idle_memory(drivers, results, "idle (fresh start, no images)")

        steps: list[tuple[str, Callable[[], None]]] = []
        if "pull" in wanted:
            steps.append(("pull", lambda: image_pulls(drivers, plan, results)))
        steps.append(("warm images", lambda: pull_warm_images(drivers)))
        steps.append(("idle memory", lambda: record_idle_memory(drivers, results, "idle (after pulls, no pods)")))
        steps += [(name, (lambda fn=fn: fn(drivers, plan, results))) for name, fn in ALL_SCENARIOS if name in wanted]
        if "steps" in wanted:
            steps.append(("steps", lambda: run_steps(workdir, network, registry.host, cgroup_parent, images, plan,
                                                     results, args.log_level, keep)))
        for name, step in steps:
            log(f"scenario {name}")
            begin = time.monotonic()
            step()
            reap_orphans(keep)
            log(f"scenario {name} done in {time.monotonic() - begin:.1f}s")

        info.notes += [plan_note(plan), *READING_NOTES]
        if args.cripy_metrics:
            info.notes.append(f"cripy ran with its Prometheus metrics on, scraped every {SCRAPE_INTERVAL:g}s "
                              f"({scraper.scrapes} scrapes, {scraper.failures} failed).")
        if args.cripy_config:
            info.notes.append(f"cripy ran with this drop-in over its bench configuration ({args.cripy_config.name}):"
                              f" `{' '.join(args.cripy_drop_in.split())}`")
        print(report.terminal_table(results))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(report.markdown(results, info))
            log(f"wrote {args.output}")
    return 0


def run_steps(workdir: Path, network: BenchNetwork, registry_host: str, cgroup_parent: str, images, plan: Plan,
              results: Results, log_level: str, keep: set[int]) -> None:
    """The step breakdown, on a cripy of its own with its metrics on (the compared cripy runs as configured)."""
    peer = CripyPeer(workdir / "cs", network, registry_host, f"{cgroup_parent}/cripy-steps",  # short: sun_path
                     log_level=log_level, metrics=True)
    try:
        peer.start()
        keep.add(peer.pid or 0)
        driver = Driver(peer, images, workdir / "logs")
        driver.pull(images.busybox)
        assert peer.metrics_socket is not None  # started with metrics=True
        step_breakdown(driver, peer.metrics_socket, plan, results)
    finally:
        peer.stop()


READING_NOTES = (
    "Where the time and memory go, for every figure above 1.0: docs/benchmarks-analysis.md (by hand, from a "
    "run of this suite and the measurements it names).",
    "What cripy's Prometheus metrics cost: docs/benchmarks-metrics.md (this suite run with `--cripy-metrics` and "
    "without, and `python -m bench.overhead`, the instrumentation's cost per call in-process).",
    "Both runtimes split the work alike: CreateContainer prepares the rootfs and the spec, StartContainer runs "
    "`runc create` + `runc start` (under conmon for cripy, under a shim for containerd); both release the runc "
    "container when it exits and clean the rest of a removed container up in the background (containerd: its "
    "snapshot GC; cripy: its effect journal). \"pod ready\" is the sum kubelet waits for.",
    "Pods and containers are configured as kubelet configures an ordinary pod: a PID namespace per container, "
    "network and IPC per pod, seccomp Unconfined (what kubelet sends when the pod names no profile and the "
    "SeccompDefault feature is off), and kubelet's default masked and read-only /proc paths, so that neither "
    "runtime's default for an absent field decides (containerd masks nothing it is not sent).",
    "The 20k-file pulls are bound by the disk's metadata writes and vary several-fold between iterations on both "
    "runtimes (see min and max); with 3 iterations their medians are not stable.",
)


def plan_note(plan: Plan) -> str:
    return (f"iterations: lifecycle {plan.lifecycle_iterations}, ExecSync {plan.exec_iterations}, list "
            f"{plan.list_iterations}, pulls {plan.pull_iterations}, concurrent rounds {plan.concurrent_rounds} x "
            f"{plan.concurrent_pods} pods; memory with {plan.memory_pods} pods; scale: {plan.scale_pods} pods, "
            f"{plan.scale_parallel} at a time, polled {plan.poll_seconds:.0f} s, {plan.churn_rounds} churn rounds; "
            "CPU window "
            f"{plan.cpu_window_seconds:.0f} s. Memory: RSS from /proc/<pid>/statm, PSS from smaps_rollup; helpers "
            "are the conmon processes whose command line names cripy's run root, and the containerd-shim "
            "processes whose -address is this containerd's socket; pause processes are their children running "
            "/catatonit or /pause. CPU = utime+stime+cutime+cstime of daemon, helpers and pause processes.")


def remove_if_created_empty(paths: list[Path]) -> None:
    """containerd puts its shims' sockets in /run/containerd/s whatever its state dir; the caller passes the
    directories that did not exist before the run, and those that are empty again are removed."""
    for path in paths:
        try:
            path.rmdir()
        except OSError:
            pass


def copy_logs(workdir: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("cripy/cripy.log", "containerd/containerd.log"):
        source = workdir / name
        if source.exists():
            shutil.copy(source, target / source.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: must run as root (it starts container runtimes)", file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        log("interrupted; everything was torn down")
        return 130
    except Exception:
        traceback.print_exc()
        log("failed; everything was torn down")
        return 1


if __name__ == "__main__":
    sys.exit(main())
