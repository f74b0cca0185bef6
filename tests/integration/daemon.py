"""A real cripy daemon for integration tests: its own root, run root, socket, registries.conf and policy, run as a
separate process (`python -m cripy.cli`) exactly as an operator runs it, and driven through CRI gRPC stubs."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from cripy.linux import mount

REPO_ROOT = Path(__file__).resolve().parents[2]
# Names this test session owns carry its tag, so that two sessions on one machine (CI and a developer's run)
# neither collide nor take each other's resources for leaks.
SESSION_TAG = secrets.token_hex(2)
# A base for every test daemon's run root: short (sun_path), and one place the leak check looks for leftovers.
SHORT_BASE = Path("/tmp")
SHORT_PREFIX = f"cpt{SESSION_TAG}-"
RUNROOT_ROOM = 40  # bytes: cripy refuses a run root over 60 (attach sockets); the tests' own paths need some room


def short_tempdir(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{SHORT_PREFIX}{tag}-", dir=SHORT_BASE))


def _remove_unless_mounted(path: Path) -> None:
    """Remove a daemon's run root once its object is gone, unless something is still mounted below it (the leak
    check reports that; removing files under a live mount would hide it)."""
    if not mount.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


class CripyDaemon:
    """Start, stop, kill and restart one cripy daemon; `runtime` and `images` are CRI stubs bound to it."""

    def __init__(self, workdir: Path, *, registries_conf: str = "", policy: str | None = None,
                 extra_toml: str = "", auth_json: str | None = None) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.runroot = workdir / "run"
        if len(str(self.runroot)) > RUNROOT_ROOM:  # pytest's own temporary paths grow with its run counter
            self.runroot = short_tempdir("run")
            weakref.finalize(self, _remove_unless_mounted, self.runroot)
        self.socket = workdir / "cripy.sock"
        self.config_path = workdir / "cripy.toml"
        self.log_path = workdir / "cripy.log"
        self.registries_conf = workdir / "registries.conf"
        self.registries_dir = workdir / "registries.conf.d"
        self.policy_path = workdir / "policy.json"
        self.policy_dir = workdir / "policies"
        self.registries_d = workdir / "registries.d"
        self.auth_path = workdir / "auth.json"
        self.certs_dir = workdir / "certs.d"
        self.cni_dir = workdir / "cni"
        self.extra_toml = extra_toml
        self.env: dict[str, str] = {}  # extra environment of the daemon (fault points: cripy/faults.py)
        self.pass_fds: tuple[int, ...] = ()  # descriptors the daemon inherits, as from a careless parent
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.registries_dir.mkdir(exist_ok=True)
        self.certs_dir.mkdir(exist_ok=True)
        self.cni_dir.mkdir(exist_ok=True)
        self.registries_conf.write_text(registries_conf)
        self.policy_path.write_text(policy or '{"default": [{"type": "insecureAcceptAnything"}]}')
        if auth_json is not None:
            self.auth_path.write_text(auth_json)
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""
[cripy]
root = "{self.root}"
runroot = "{self.runroot}"
listen = "{self.socket}"
log_level = "debug"

[images]
registries_conf = "{self.registries_conf}"
registries_conf_d = "{self.registries_dir}"
signature_policy = "{self.policy_path}"
signature_policy_dir = "{self.policy_dir}"
registries_d = "{self.registries_d}"
auth_file = "{self.auth_path}"
certs_dir = "{self.certs_dir}"

[network]
conf_dir = "{self.cni_dir}"
{self.extra_toml}
"""
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 20.0) -> "CripyDaemon":
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", REGISTRY_AUTH_FILE=str(self.workdir / "no-such-auth.json"),
                   **self.env)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "cripy.cli", "--config", str(self.config_path),
             "--config-dir", str(self.workdir / "cripy.d")],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, pass_fds=self.pass_fds,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"cripy exited with {self._process.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    self.runtime.Version(api_pb2.VersionRequest(), timeout=2)
                    return self
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"cripy did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        self._close_channel()
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int | None:
        """The daemon's exit status once it has exited by itself (a fault point), None if it still runs."""
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close_channel()
        self._process = None
        return code

    def restart(self, sig: int = signal.SIGTERM) -> "CripyDaemon":
        self.stop(sig)
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        return self._channel

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ---- conveniences for image tests ------------------------------------------------------------------

    def pull(self, image: str, *, username: str = "", password: str = "", timeout: float = 120) -> str:
        auth = api_pb2.AuthConfig(username=username, password=password) if username else None
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image), auth=auth)
        return self.images.PullImage(request, timeout=timeout).image_ref

    def image_status(self, image: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
        return self.images.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image), verbose=verbose), timeout=10)

    def list_images(self, image: str = "") -> list[api_pb2.Image]:
        request = api_pb2.ListImagesRequest()
        if image:
            request.filter.image.image = image
        return list(self.images.ListImages(request, timeout=10).images)

    def remove_image(self, image: str) -> None:
        self.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=30)
