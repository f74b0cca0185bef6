"""The package structure holds: no import circles between the pod and container managers, nor between the
modules split along a layer (protocol below client, framing below session, handshake and pumps below the server)."""

from __future__ import annotations

import ast
from pathlib import Path

CRIPY = Path(__file__).resolve().parents[2] / "cripy"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, also under `if TYPE_CHECKING:` (a circle there is still a circle)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_pods_do_not_import_the_container_manager() -> None:
    """Containers need their pod (cripy.containers.manager uses cripy.pods.manager); a pod reaches its containers
    only through the PodMembers protocol the container manager registers."""
    for path in sorted((CRIPY / "pods").glob("*.py")):
        imported = _imported_modules(path)
        assert "cripy.containers.manager" not in imported, f"{path.name} imports cripy.containers.manager"


def test_the_container_manager_imports_the_pod_manager() -> None:
    assert "cripy.pods.manager" in _imported_modules(CRIPY / "containers" / "manager.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(CRIPY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """cripy module -> the cripy modules it imports (anywhere in the file, TYPE_CHECKING and function bodies too)."""
    modules = {_module_name(path): path for path in CRIPY.rglob("*.py")}
    return {name: (_imported_modules(path) & modules.keys()) - {name} for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = [start]
    while pending:
        for dep in graph[pending.pop()]:
            if dep not in seen:
                seen.add(dep)
                pending.append(dep)
    return seen


# Modules split out of a larger one hold its lower layer: the sans-IO protocol pieces, the wire format, the
# rules for single entries. They must never reach back (directly or through others) to what uses them.
SPLIT_LAYERS = [
    ("cripy.images.distribution", "cripy.images.registry"),
    ("cripy.images.layerstream", "cripy.images.layerentries"),
    ("cripy.images.layerstream", "cripy.images.unpack"),
    ("cripy.images.layerentries", "cripy.images.unpack"),
    ("cripy.streaming.spdyframing", "cripy.streaming.spdy"),
    ("cripy.network.cniprotocol", "cripy.network.cni"),
    ("cripy.streaming.handshake", "cripy.streaming.server"),
    ("cripy.streaming.handshake", "cripy.streaming.pumps"),
    ("cripy.streaming.pumps", "cripy.streaming.server"),
    ("cripy.streaming.pumps", "cripy.streaming.commandsession"),
    ("cripy.streaming.pumps", "cripy.streaming.portforward"),
    ("cripy.streaming.commandsession", "cripy.streaming.remotecommand"),
    ("cripy.streaming.commandsession", "cripy.streaming.server"),
    ("cripy.streaming.remotecommand", "cripy.streaming.server"),
    ("cripy.streaming.portforward", "cripy.streaming.server"),
]


def test_split_modules_do_not_reach_back() -> None:
    graph = _import_graph()
    for lower, upper in SPLIT_LAYERS:
        assert lower in graph and upper in graph, f"{lower} or {upper} no longer exists"
        assert upper not in _reachable(graph, lower), f"{lower} reaches {upper}"


def test_no_import_circles_in_the_images_streaming_and_network_packages() -> None:
    graph = _import_graph()
    for name in graph:
        if name.startswith(("cripy.images.", "cripy.streaming.", "cripy.network.")):
            assert name not in _reachable(graph, name), f"{name} imports itself through others"
