"""Resource usage verbs: stats (containers) and statsp (pod sandboxes).

As crictl does, the table takes two samples `--seconds` apart and shows CPU % as the cumulative CPU time used
between them over the time between them; `--watch` repeats that until interrupted. crictl clears the screen
before every table, also into a pipe or a file, where the escape sequence is only noise: `cripy ctl` clears
it only when stdout is a terminal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from cri_api.v1 import api_pb2

from cripy.ctl import documents, output
from cripy.ctl.context import CommandError, Context, VerbAdder, add_output_flag, parse_labels, truncated

CLEAR_SCREEN = "\033[2J\033[H"
WATCH_INTERVAL_SECONDS = 0.5


def cmd_stats(ctx: Context) -> int:
    args = ctx.args
    stats_filter = api_pb2.ContainerStatsFilter(id=args.id or args.container or "", pod_sandbox_id=args.pod or "",
                                                label_selector=parse_labels(args.label))

    def row(stat: api_pb2.ContainerStats, old: api_pb2.ContainerStats) -> list[str] | None:
        cpu, memory = stat.cpu.usage_core_nano_seconds.value, stat.memory.working_set_bytes.value
        if not args.all and cpu == 0 and memory == 0:
            return None  # not running
        return [truncated(ctx, stat.attributes.id), stat.attributes.metadata.name, cpu_percent(stat.cpu, old.cpu),
                output.human_size(memory, 4), output.human_size(stat.writable_layer.used_bytes.value, 4),
                str(stat.writable_layer.inodes_used.value), output.human_size(stat.swap.swap_usage_bytes.value, 4)]

    return repeat(ctx, lambda: show_sampled(
        ctx, lambda: ctx.client.list_container_stats(stats_filter), api_pb2.ListContainerStatsResponse,
        ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES", "SWAP"], row))


def cmd_statsp(ctx: Context) -> int:
    args = ctx.args
    stats_filter = api_pb2.PodSandboxStatsFilter(id=args.id or args.pod_id or "",
                                                 label_selector=parse_labels(args.label))

    def row(stat: api_pb2.PodSandboxStats, old: api_pb2.PodSandboxStats) -> list[str] | None:
        cpu, memory = stat.linux.cpu.usage_core_nano_seconds.value, stat.linux.memory.working_set_bytes.value
        if cpu == 0 and memory == 0:
            return None  # no data: not running
        return [stat.attributes.metadata.name, truncated(ctx, stat.attributes.id),
                cpu_percent(stat.linux.cpu, old.linux.cpu), output.human_size(memory, 4)]

    return repeat(ctx, lambda: show_sampled(
        ctx, lambda: ctx.client.list_pod_sandbox_stats(stats_filter), api_pb2.ListPodSandboxStatsResponse,
        ["POD", "POD ID", "CPU %", "MEM"], row))


def show_sampled(ctx: Context, sample: Callable[[], list[Any]], response: type, headers: list[str],
                 row: Callable[[Any, Any], list[str] | None]) -> None:
    """Two samples `--seconds` apart (CPU use is a rate), one table row per object in both; JSON or YAML is the
    first sample as the CRI returned it."""
    first = sorted(sample(), key=lambda stat: stat.attributes.id)
    if ctx.args.output in ("json", "yaml"):
        ctx.write(documents.proto_text(response(stats=first), ctx.args.output))
        return
    before = {stat.attributes.id: stat for stat in first}
    time.sleep(ctx.args.seconds)
    rows = []
    for stat in sorted(sample(), key=lambda stat: stat.attributes.id):
        old = before.get(stat.attributes.id)
        line = row(stat, old) if old is not None else None  # None: appeared between the samples
        if line is not None:
            rows.append(line)
    show_table(ctx, headers, rows)


def cpu_percent(now: api_pb2.CpuUsage, before: api_pb2.CpuUsage) -> str:
    """CPU time used between two samples over the wall time between them, in percent of one core."""
    used = now.usage_core_nano_seconds.value
    if used == 0:
        return "0.00"
    elapsed = now.timestamp - before.timestamp
    if elapsed == 0:
        raise CommandError("cpu stat is not updated during sample")
    return f"{(used - before.usage_core_nano_seconds.value) / elapsed * 100:.2f}"


def show_table(ctx: Context, headers: list[str], rows: list[list[str]]) -> None:
    if ctx.stdout.isatty():
        ctx.write(CLEAR_SCREEN)
    ctx.write(output.format_table(headers, rows))
    ctx.stdout.flush()


def repeat(ctx: Context, show: Callable[[], Any]) -> int:
    """Show once, or with --watch every half second until interrupted."""
    if not ctx.args.watch:
        show()
        return 0
    try:
        while True:
            show()
            time.sleep(WATCH_INTERVAL_SECONDS)
    except KeyboardInterrupt:
        return 0


def add_sampling_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--label", action="append", metavar="KEY=VALUE", help="filter by label (repeatable)")
    sub.add_argument("-s", "--seconds", type=int, default=1, help="seconds between the two CPU samples")
    sub.add_argument("-w", "--watch", action="store_true", help="repeat until interrupted")
    sub.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    add_output_flag(sub, ("json", "yaml", "table"), "table")


def register(verb: VerbAdder) -> None:
    sub = verb("stats", cmd_stats, "show container resource usage")
    sub.add_argument("container", nargs="?", metavar="CONTAINER-ID")
    sub.add_argument("-a", "--all", action="store_true", help="all containers (default: running)")
    sub.add_argument("--id", help="filter by container id")
    sub.add_argument("-p", "--pod", help="filter by pod sandbox id")
    add_sampling_flags(sub)

    sub = verb("statsp", cmd_statsp, "show pod sandbox resource usage")
    sub.add_argument("pod_id", nargs="?", metavar="POD-ID")
    sub.add_argument("--id", help="filter by pod sandbox id")
    add_sampling_flags(sub)
