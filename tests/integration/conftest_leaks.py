"""The suite's leak check: a session-scoped autouse fixture that notes, before the first test, the mounts, pinned
network namespaces, cgroup directories and conmon/runc/catatonit/container processes, and fails the session's
teardown with a list of whatever the tests left behind.

Only what the tests can own is compared (paths under the test directories, the session's cgroup parent, cripy's
default cgroup parent), so that other users of the machine do not make the check fail.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cripy.linux.mount import read_mountinfo
from tests.integration.podlib import NETWORK_PREFIX, SESSION_TAG

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_CGROUP_PARENT = "cripy"
# Every daemon of the pod/container tests puts its containers under this cgroup parent (see podlib.PodEnv).
SESSION_CGROUP_PARENT = f"cripyt-{SESSION_TAG}"
MONITOR_NAMES = ("conmon", "runc", "catatonit")


@dataclass(frozen=True)
class Snapshot:
    mounts: frozenset[str]
    netns_pins: frozenset[str]
    cgroups: frozenset[str]
    processes: frozenset[str]
    nat_chains: frozenset[str]


def _test_roots(basetemp: Path) -> tuple[str, ...]:
    from tests.integration.podlib import SHORT_BASE, SHORT_PREFIX

    return (f"{basetemp}/", f"{SHORT_BASE}/{SHORT_PREFIX}")


def _owned(path: str, roots: tuple[str, ...]) -> bool:
    return any(path.startswith(root) for root in roots)


def _cgroup_dirs() -> set[str]:
    found: set[str] = set()
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        for parent in (DEFAULT_CGROUP_PARENT, SESSION_CGROUP_PARENT):
            top = hierarchy / parent
            if not top.is_dir():
                continue
            for directory, dirnames, _ in os.walk(top):
                found.update(str(Path(directory) / name) for name in dirnames)
    return found


def _processes(roots: tuple[str, ...]) -> set[str]:
    """Monitors and runtimes of the tests (by command line), and any process in a test cgroup."""
    found: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue
        name = os.path.basename(cmdline.split(" ", 1)[0]) if cmdline else ""
        in_test_cgroup = f"/{SESSION_CGROUP_PARENT}/" in cgroup
        if (name in MONITOR_NAMES and any(root in cmdline for root in roots)) or in_test_cgroup:
            found.add(f"pid {entry.name}: {cmdline[:200]}")
    return found


def _cni_nat_chains() -> set[str]:
    """portmap's per-pod chains in the nat table, for this session's test networks: a jump rule's comment
    names the network (`dnat name: "<network>" id: "<pod>"`), so other users' CNI networks are left out."""
    try:
        out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    found = set()
    for line in out.splitlines():
        match = re.search(rf'dnat name: \\?"({NETWORK_PREFIX}[^"\\]*)\\?" id: \\?"([^"\\]+)\\?".* -j (CNI-DN-\S+)', line)
        if match:
            found.add(f"{match.group(3)} (network {match.group(1)}, pod {match.group(2)[:12]})")
    return found


def snapshot(basetemp: Path) -> Snapshot:
    roots = _test_roots(basetemp)
    mounts = read_mountinfo()
    return Snapshot(
        mounts=frozenset(m.mount_point for m in mounts if _owned(m.mount_point, roots)),
        netns_pins=frozenset(m.mount_point for m in mounts if m.fs_type == "nsfs" and _owned(m.mount_point, roots)),
        cgroups=frozenset(_cgroup_dirs()),
        processes=frozenset(_processes(roots)),
        nat_chains=frozenset(_cni_nat_chains()),
    )


def leftovers(before: Snapshot, after: Snapshot) -> list[str]:
    report = []
    for label, attr in (("mounts", "mounts"), ("pinned namespaces", "netns_pins"), ("cgroups", "cgroups"),
                        ("processes", "processes"), ("iptables nat chains of CNI", "nat_chains")):
        new = sorted(getattr(after, attr) - getattr(before, attr))
        if new:
            report.append(f"{label} left behind ({len(new)}):\n    " + "\n    ".join(new))
    return report


def _hierarchies_with(parent: str) -> set[Path]:
    return {h for h in (CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ()) if (h / parent).is_dir()}


def _remove_cgroup_parent(parent: str, hierarchies: set[Path] | None = None) -> None:
    """The (empty) tree of a cgroup parent, in every hierarchy or in those given."""
    if hierarchies is None:
        hierarchies = set(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else set()
    for hierarchy in hierarchies:
        top = hierarchy / parent
        if top.is_dir():
            for directory, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass


@pytest.fixture(scope="session", autouse=True)
def no_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the session when the tests left mounts, namespaces, cgroups or processes behind."""
    basetemp = tmp_path_factory.getbasetemp()
    before = snapshot(basetemp)
    # Daemons started without a cgroup parent of their own make cripy's default one; the session removes it again
    # where it made it (only what is empty: its children are leaks, reported below).
    had_default_parent = _hierarchies_with(DEFAULT_CGROUP_PARENT)
    yield
    report = leftovers(before, snapshot(basetemp))
    if not report:
        _remove_cgroup_parent(SESSION_CGROUP_PARENT)
        _remove_cgroup_parent(DEFAULT_CGROUP_PARENT, _hierarchies_with(DEFAULT_CGROUP_PARENT) - had_default_parent)
    assert not report, "the integration tests leaked:\n  " + "\n  ".join(report)


def session_cgroup_parent() -> str:
    return "/" + SESSION_CGROUP_PARENT


__all__ = ["no_leaks", "session_cgroup_parent", "SESSION_CGROUP_PARENT"]
