"""Readings from /proc for the stats and metrics calls: interface counters inside a network namespace, the open
files of processes, a process's soft limits. Parsers of the kernel's text formats are pure functions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cripy.linux.namespaces import in_netns


@dataclass(frozen=True)
class InterfaceCounters:
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


@dataclass(frozen=True)
class OpenFiles:
    descriptors: int
    sockets: int


def parse_net_dev(text: str) -> dict[str, InterfaceCounters]:
    """/proc/net/dev -> interface: its counters; the loopback is left out (as the kubelet and cAdvisor do)."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 12:
            continue
        rx = [int(v) for v in fields[0:4]]  # bytes packets errs drop
        tx = [int(v) for v in fields[8:12]]
        counters[name.strip()] = InterfaceCounters(rx[0], rx[1], rx[2], rx[3], tx[0], tx[1], tx[2], tx[3])
    return counters


def read_net_dev_through(pid: int, netns: Path) -> dict[str, InterfaceCounters] | None:
    """The counters of the network namespace `netns` as seen through a process in it (/proc/<pid>/net/dev, no
    setns); None when `pid` is not (or no longer) in that namespace."""
    try:
        pinned = os.stat(netns)
        seen = os.stat(f"/proc/{pid}/ns/net")
        if (seen.st_dev, seen.st_ino) != (pinned.st_dev, pinned.st_ino):
            return None
        with open(f"/proc/{pid}/net/dev") as f:
            text = f.read()
        if (os.stat(f"/proc/{pid}/ns/net").st_ino) != pinned.st_ino:
            return None  # the pid went away and was reused while being read
    except OSError:
        return None
    return parse_net_dev(text)


def read_net_dev(netns: Path) -> dict[str, InterfaceCounters]:
    """The interface counters inside the network namespace. Enters it: run only in threads reserved for that."""
    with in_netns(netns):
        # /proc/self/net follows the reading thread's network namespace.
        with open("/proc/thread-self/net/dev") as f:
            return parse_net_dev(f.read())


def parse_soft_limits(text: str) -> dict[str, int | None]:
    """/proc/<pid>/limits -> "max_open_files": soft limit (None: unlimited). Names as cAdvisor's ulimit label."""
    limits: dict[str, int | None] = {}
    for line in text.splitlines()[1:]:
        # The kernel pads the name (which has spaces) to 25 columns: "Max open files            1024   4096   files".
        name, values = line[:26].strip(), line[26:].split()
        if not name or not values:
            continue
        soft = values[0]
        limits[name.lower().replace(" ", "_")] = None if soft == "unlimited" else int(soft)
    return limits


def read_soft_limits(pid: int) -> dict[str, int | None]:
    with open(f"/proc/{pid}/limits") as f:
        return parse_soft_limits(f.read())


def count_open_files(pids: list[int]) -> OpenFiles:
    """Open descriptors of the processes, and how many of them are sockets; processes that exit meanwhile are
    skipped."""
    descriptors = sockets = 0
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        descriptors += len(names)
        for name in names:
            try:
                if os.readlink(f"{directory}/{name}").startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
    return OpenFiles(descriptors=descriptors, sockets=sockets)
