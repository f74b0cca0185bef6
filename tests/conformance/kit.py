"""Where the CRI conformance kit is: CRI_CONFORMANCE_KIT (default ../shared/conformance beside the repository, or
beside the main checkout when this is a git worktree of it), with CRITEST and CRICTL overriding its two binaries.
Used by `make conformance` and by the tests that drive the kit's crictl against cripy."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Kit:
    root: Path
    critest: Path
    crictl: Path
    images_sh: Path
    anchors: Path

    @classmethod
    def configured(cls) -> Kit:
        """The kit where the environment says it is; nothing is checked."""
        root = Path(os.environ.get("CRI_CONFORMANCE_KIT") or _default_root()).resolve()
        return cls(root=root,
                   critest=Path(os.environ.get("CRITEST") or root / "bin" / "critest"),
                   crictl=Path(os.environ.get("CRICTL") or root / "bin" / "crictl"),
                   images_sh=root / "images.sh", anchors=root / "anchors.tsv")

    def missing(self, *paths: Path) -> list[str]:
        """Those of `paths` (default: what `make conformance` needs) that are not there."""
        return [str(path) for path in paths or (self.critest, self.images_sh, self.anchors) if not path.exists()]

    @classmethod
    def locate(cls) -> Kit:
        """The configured kit, complete for `make conformance`, or SystemExit saying what is missing."""
        kit = cls.configured()
        missing = kit.missing()
        if missing:
            raise SystemExit(f"conformance: the CRI conformance kit is incomplete at {kit.root} (missing: "
                             f"{', '.join(missing)}); set CRI_CONFORMANCE_KIT to its directory, or CRITEST/CRICTL "
                             "to the binaries")
        return kit


def _default_root() -> Path:
    """../shared/conformance beside this checkout, else beside the checkout this one is a worktree of."""
    beside = REPO_ROOT.parent / "shared" / "conformance"
    if beside.exists():
        return beside
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return beside
    main_checkout = Path(common).parent if common else None
    if main_checkout is not None and (main_checkout.parent / "shared" / "conformance").exists():
        return main_checkout.parent / "shared" / "conformance"
    return beside
