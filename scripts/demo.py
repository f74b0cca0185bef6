"""`make demo`: cripy end to end with its default configuration, nothing leaving the machine.

Starts a local registry on 127.0.0.1 holding a busybox image built here, starts cripy with the default config
(default root, run root and socket), installs the default CNI bridge config if the node has none, then through
`cripy ctl`: pulls the image, lists it, runs a pod and a container, prints the container's logs and an exec, and
removes everything again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cripy.config import Config  # noqa: E402
from cripy.network.cniprotocol import default_bridge_conflist  # noqa: E402
from tests.support.images import busybox_image  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

DEFAULTS = Config()
CNI_CONF = Path(DEFAULTS.network.conf_dir) / "10-cripy-bridge.conflist"
REGISTRIES_DROPIN_DIR = Path(DEFAULTS.images.registries_conf_d)


def ctl(*args: str, check: bool = True) -> str:
    command = [sys.executable, "-m", "cripy.cli", "ctl", *args]
    print(f"\n$ cripy ctl {' '.join(args)}", flush=True)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(result.stdout, end="")
    if result.stderr:
        print(result.stderr, end="", file=sys.stderr)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `cripy ctl {' '.join(args)}` failed")
    return result.stdout.strip()


def install_cni_config() -> Path | None:
    conf_dir = CNI_CONF.parent
    existing = [p for p in conf_dir.glob("*") if p.suffix in (".conflist", ".conf", ".json")] if conf_dir.is_dir() else []
    if existing:
        print(f"demo: using the node's CNI config {sorted(existing)[0]}")
        return None
    conf_dir.mkdir(parents=True, exist_ok=True)
    CNI_CONF.write_text(default_bridge_conflist())
    print(f"demo: installed cripy's default bridge network config at {CNI_CONF}")
    return CNI_CONF


def start_cripy(log_path: Path) -> subprocess.Popen[bytes]:
    socket = Path(DEFAULTS.cripy.listen)
    if socket.exists():
        raise SystemExit(f"demo: {socket} exists: is a cripy daemon already running? Stop it first.")
    log = open(log_path, "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "cripy.cli"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"demo: cripy exited with {daemon.returncode}; see {log_path}")
        if socket.exists():
            return daemon
        time.sleep(0.1)
    daemon.kill()
    raise SystemExit(f"demo: cripy did not start within 30 s; see {log_path}")


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (cripy manages mounts, namespaces and cgroups)")
    work = Path(tempfile.mkdtemp(prefix="cripy-demo-"))
    registry = Registry(work / "registry").start()
    image = f"{registry.host}/demo/busybox:latest"
    registry.push_image("demo/busybox", "latest", busybox_image())
    print(f"demo: registry on {registry.url} holds {image}")
    REGISTRIES_DROPIN_DIR.mkdir(parents=True, exist_ok=True)
    dropin = REGISTRIES_DROPIN_DIR / f"cripy-demo-{registry.port}.conf"
    dropin.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    installed_cni = install_cni_config()
    daemon = start_cripy(work / "cripy.log")
    pod_id = container_id = ""
    try:
        ctl("version")
        ctl("pull", image)
        ctl("images")
        pod_config = work / "pod.json"
        pod_config.write_text(
            '{"metadata": {"name": "demo", "namespace": "default", "uid": "cripy-demo-uid"},'
            f' "log_directory": "{work}/logs", "linux": {{}}}}'
        )
        container_config = work / "container.json"
        container_config.write_text(
            '{"metadata": {"name": "hello"}, "image": {"image": "' + image + '"},'
            ' "command": ["/bin/sh", "-c", "echo hello from a cripy container; echo my hostname is $(hostname);'
            ' ip -4 addr show eth0 | grep inet; sleep 3600"], "log_path": "hello.log", "linux": {}}'
        )
        pod_id = ctl("runp", str(pod_config))
        container_id = ctl("create", pod_id, str(container_config), str(pod_config))
        ctl("start", container_id)
        time.sleep(1.5)
        ctl("ps")
        ctl("logs", container_id)
        ctl("exec", "-s", container_id, "cat", "/etc/resolv.conf")
        ctl("stop", "-t", "1", container_id)
        ctl("rm", container_id)
        ctl("stopp", pod_id)
        ctl("rmp", pod_id)
        pod_id = ""
        ctl("rmi", image)
        ctl("images")
        print("\ndemo: done")
        return 0
    finally:
        if pod_id:
            ctl("rmp", "-f", pod_id, check=False)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        registry.stop()
        dropin.unlink(missing_ok=True)
        if installed_cni is not None:
            print(f"demo: leaving the default network config {installed_cni} installed (it is cripy's default)")
        print(f"demo: logs of this run in {work}")


if __name__ == "__main__":
    sys.exit(main())
