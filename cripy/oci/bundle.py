"""The OCI bundle's config.json: written whole (a temporary file renamed over it) and readable by root only, since
it holds the container's environment, which often carries secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG = "config.json"


def write_config(bundle: Path, spec: dict[str, Any]) -> None:
    path = bundle / CONFIG
    tmp = path.with_name(f".{CONFIG}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(spec))  # one write: json.dump writes every token on its own
    os.chmod(tmp, 0o600)  # an earlier leftover may have had another mode
    tmp.replace(path)


def read_config(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / CONFIG).read_text())
