"""The package structure holds: no import circles between the pod and container managers."""

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
