"""Exec, attach and port-forward through cripy's streaming server, driven by independent protocol clients
(tests/support/spdy_client.py for SPDY/3.1, tests/support/ws_client.py on aiohttp for WebSocket) over real sockets,
against real containers: the URLs come from the CRI calls Exec, Attach and PortForward, exactly as kubelet gets
them. Also the refusals (unknown or used tokens, protocols nobody offered, containers that are not running, ports
nothing listens on) and the clean-up after clients that vanish mid-stream."""

from __future__ import annotations

import hashlib
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import PodEnv, rpc_error
from tests.support.spdy_client import PortForwardClient, RemoteCommandClient, UpgradeRefused
from tests.support.ws_client import WsPortForwardClient, WsRemoteCommandClient, WsUpgradeRefused

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
BIG_SIZE = 10 * 1024 * 1024
HTTP_PORTS = (8080, 8081)
TRANSPORTS = ("spdy", "websocket")


# ---- fixtures and helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pod(pod_env: PodEnv) -> tuple[str, api_pb2.PodSandboxConfig]:
    return pod_env.run_pod("streaming-pod")


@pytest.fixture(scope="module")
def sleeper(pod_env: PodEnv, pod: tuple) -> str:
    """A running container to exec into."""
    pod_id, config = pod
    return pod_env.run(pod_id, config, "sleeper", SLEEP)


@pytest.fixture(scope="module")
def web(pod_env: PodEnv, pod: tuple) -> dict[str, Any]:
    """Two busybox httpd in the pod (ports 8080 and 8081) serving a small page and a 10 MiB random file."""
    pod_id, config = pod
    script = (f"mkdir -p /www && echo hello-from-httpd > /www/index.html && head -c {BIG_SIZE} /dev/urandom > "
              f"/www/big && touch /www/ready && httpd -f -p {HTTP_PORTS[0]} -h /www & "
              f"httpd -f -p {HTTP_PORTS[1]} -h /www & wait")
    ctr = pod_env.run(pod_id, config, "web", ["sh", "-c", script])
    for port in HTTP_PORTS:
        pod_env.wait_for(f"httpd on port {port}", lambda port=port: pod_env.exec(
            ctr, ["wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/index.html"]).exit_code == 0)
    digest = pod_env.sh(ctr, "sha256sum /www/big").split()[0]
    return {"container": ctr, "big_sha256": digest}


def exec_url(env: PodEnv, ctr_id: str, cmd: list[str], *, stdin: bool = False, stdout: bool = True,
             stderr: bool = True, tty: bool = False) -> str:
    request = api_pb2.ExecRequest(container_id=ctr_id, cmd=cmd, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
    url = env.rt.Exec(request, timeout=10).url
    assert urlsplit(url).hostname == "127.0.0.1" and "/exec/" in url, url
    return url


def attach_url(env: PodEnv, ctr_id: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True,
               tty: bool = False) -> str:
    request = api_pb2.AttachRequest(container_id=ctr_id, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
    return env.rt.Attach(request, timeout=10).url


def port_forward_url(env: PodEnv, pod_id: str, ports: list[int]) -> str:
    return env.rt.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=ports), timeout=10).url


def connect(transport: str, url: str, **flags: Any) -> RemoteCommandClient | WsRemoteCommandClient:
    if transport == "spdy":
        return RemoteCommandClient.connect(url, **flags)
    return WsRemoteCommandClient.connect(url, **flags)


def established_connections(port: int) -> int:
    """TCP connections to 127.0.0.1:port in the ESTABLISHED state (on the server's side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "01" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def host_processes_with(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def http_get(send: Callable[[bytes], None], path: str) -> None:
    send(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())


def http_body(response: bytes) -> bytes:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], response[:300]
    return body


# ---- exec -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_pipes_stdin_through_cat(pod_env: PodEnv, sleeper: str, transport: str) -> None:
    payload = b"line one\nline two\n" + secrets.token_bytes(300_000)
    url = exec_url(pod_env, sleeper, ["cat"], stdin=True)
    with connect(transport, url, stdin=True) as client:
        assert client.protocol in ("v4.channel.k8s.io", "v5.channel.k8s.io")
        writer = threading.Thread(target=lambda: (client.send_stdin(payload), client.close_stdin()))
        writer.start()
        result = client.read_until_exit()
        writer.join()
    assert result.exit_code == 0, result
    assert result.status is not None and result.status["status"] == "Success"
    assert result.stdout == payload
    assert result.stderr == b""
    assert result.streams_finished


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_reports_exit_code_3(pod_env: PodEnv, sleeper: str, transport: str) -> None:
    url = exec_url(pod_env, sleeper, ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"])
    with connect(transport, url) as client:
        result = client.read_until_exit()
    assert result.stdout == b"to-stdout\n"
    assert result.stderr == b"to-stderr\n"
    assert result.exit_code == 3, result
    assert result.status is not None and result.status["status"] == "Failure"
    assert result.status["reason"] == "NonZeroExitCode"
    assert {"reason": "ExitCode", "message": "3"} in result.status["details"]["causes"]


def test_exec_with_an_older_protocol_reports_failure_as_text(pod_env: PodEnv, sleeper: str) -> None:
    url = exec_url(pod_env, sleeper, ["sh", "-c", "exit 3"])
    with RemoteCommandClient.connect(url, protocols=("v2.channel.k8s.io",)) as client:
        assert client.protocol == "v2.channel.k8s.io"
        result = client.read_until_exit()
    assert b"exit code" in result.error and b"3" in result.error, result.error
    url = exec_url(pod_env, sleeper, ["true"])
    with RemoteCommandClient.connect(url, protocols=("v2.channel.k8s.io",)) as client:
        assert client.read_until_exit().error == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tty_exec_sees_the_resize(pod_env: PodEnv, sleeper: str, transport: str) -> None:
    url = exec_url(pod_env, sleeper, ["sh", "-c", "while read line; do stty size; done; echo bye"], stdin=True,
                   stderr=False, tty=True)
    with connect(transport, url, stdin=True, stderr=False, tty=True) as client:
        client.resize(123, 45)
        # runc applies the size when it gets SIGWINCH, concurrently with the input; ask until it shows.
        for _ in range(50):
            client.send_stdin(b"\n")
            line = client.read_until(b"\n")
            if b"45 123" in line:
                break
        else:
            raise AssertionError("stty never reported 45 rows and 123 columns")
        client.resize(80, 24)
        for _ in range(50):
            client.send_stdin(b"\n")
            if b"24 80" in client.read_until(b"\n"):
                break
        else:
            raise AssertionError("stty never reported 24 rows and 80 columns")
        client.send_stdin(b"\x04")  # ^D: end of input for the terminal's line discipline
        result = client.read_until_exit()
    assert result.exit_code == 0, result
    assert b"bye" in result.stdout


# ---- the clean-up after a vanished client ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_a_client_that_disconnects_leaves_no_process(pod_env: PodEnv, sleeper: str, transport: str,
                                                      tty: bool) -> None:
    marker = str(40000 + secrets.randbelow(20000))
    url = exec_url(pod_env, sleeper, ["sh", "-c", f"echo started; exec sleep {marker}"], stdin=True,
                   stderr=not tty, tty=tty)
    port = urlsplit(url).port
    assert port is not None
    client = connect(transport, url, stdin=True, stderr=not tty, tty=tty)
    client.read_until(b"started")
    assert host_processes_with(f"sleep {marker}")
    client.abort()
    pod_env.wait_for("the exec'd process to be killed", lambda: not host_processes_with(f"sleep {marker}"))
    pod_env.wait_for("runc exec to be gone", lambda: not host_processes_with(f"sh -c echo started; exec sleep {marker}"))
    pod_env.wait_for("the server to close its side", lambda: established_connections(port) == 0)
    assert "Traceback" not in pod_env.daemon.log_text()
