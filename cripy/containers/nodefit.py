"""Whether this node can honour a container's resources: checked at CreateContainer and UpdateContainerResources,
so that what runc or the kernel would refuse later (at StartContainer, or half-way through `runc update`) is
refused up front with InvalidArgument.

The request's values were already checked for form (cri/convert.py); here they meet the node: `unified` needs
cgroup v2, cpusets must name CPUs and memory nodes the node's root cpuset has, and hugepage limits must name page
sizes the kernel offers.
"""

from __future__ import annotations

from pathlib import Path

from cripy.containers.model import Resources
from cripy.errors import InvalidArgument
from cripy.linux import cgroups

HUGEPAGES_DIR = Path("/sys/kernel/mm/hugepages")
_UNITS_KB = {"K": 1, "M": 1 << 10, "G": 1 << 20, "T": 1 << 30, "P": 1 << 40}


def require_node_support(resources: Resources, where: str) -> None:
    if resources.unified and cgroups.mode() is cgroups.CgroupMode.V1:
        raise InvalidArgument(f"{where}: linux.resources.unified ({', '.join(sorted(resources.unified)[:5])}) "
                              "needs cgroup v2, and this node runs cgroup v1")
    for kind, value in (("cpus", resources.cpuset_cpus), ("mems", resources.cpuset_mems)):
        if value:
            _require_within_node_cpuset(kind, value, where)
    for size in resources.hugepage_limits:
        if not (HUGEPAGES_DIR / f"hugepages-{_page_size_kb(size)}kB").is_dir():
            raise InvalidArgument(f"{where}: linux.resources.hugepage_limits: this node has no {size} huge pages")


def _require_within_node_cpuset(kind: str, value: str, where: str) -> None:
    available = cgroups.node_cpuset(kind)
    if not available:
        return  # no cpuset controller: runc leaves cpusets alone
    wanted = cgroups.parse_cpu_list(value, max_id=1 << 16)
    missing = sorted(wanted - cgroups.parse_cpu_list(available, max_id=1 << 16))
    if missing:
        noun = "CPUs" if kind == "cpus" else "memory nodes"
        raise InvalidArgument(f"{where}: linux.resources.cpuset_{kind} asks for {noun} {missing[:8]} this node does "
                              f"not have (it has {available})")


def _page_size_kb(size: str) -> int:
    """"2MB" -> 2048 (the form of convert's check: digits, a unit letter, "B")."""
    return int(size[:-2]) * _UNITS_KB[size[-2]]
