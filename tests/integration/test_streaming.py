"""Exec, attach and port-forward through cripy's streaming server, driven by independent protocol clients
(tests/support/spdy_client.py for SPDY/3.1, tests/support/ws_client.py on aiohttp for WebSocket) over real sockets,
against real containers: the URLs come from the CRI calls Exec, Attach and PortForward, exactly as kubelet gets
them. Also the refusals (unknown or used tokens, protocols nobody offered, containers that are not running, ports
nothing listens on) and the clean-up after clients that vanish mid-stream."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import secrets
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.daemon import REPO_ROOT
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
    script = (f"set -e; mkdir -p /www; echo hello-from-httpd > /www/index.html; "
              f"head -c {BIG_SIZE} /dev/urandom > /www/big; "
              f"httpd -f -p {HTTP_PORTS[0]} -h /www & httpd -f -p {HTTP_PORTS[1]} -h /www & wait")
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
    script = 'while read line; do echo "size=$(stty size)."; done; echo bye'
    url = exec_url(pod_env, sleeper, ["sh", "-c", script], stdin=True, stderr=False, tty=True)
    with connect(transport, url, stdin=True, stderr=False, tty=True) as client:
        for width, height in ((123, 45), (80, 24)):
            client.resize(width, height)
            # runc applies the size when it gets SIGWINCH, concurrently with the input: ask until it shows.
            for _ in range(100):
                client.send_stdin(b"\n")
                client.read_until(b"size=")
                if client.read_until(b".") == f"{height} {width}.".encode():
                    break
            else:
                raise AssertionError(f"stty never reported {height} rows and {width} columns")
        client.send_stdin(b"\x04")  # ^D: end of input for the terminal's line discipline
        result = client.read_until_exit()
    assert result.exit_code == 0, result
    assert b"bye" in result.stdout
    assert result.stdout.count(b"\x04") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tty_exec_starts_with_the_clients_size(pod_env: PodEnv, sleeper: str, transport: str) -> None:
    """The first size a client sends (kubectl sends it right away) is the terminal's size when the command starts:
    a command that asks at once sees it, not 0 0."""
    url = exec_url(pod_env, sleeper, ["stty", "size"], stdin=True, stderr=False, tty=True)
    with connect(transport, url, stdin=True, stderr=False, tty=True) as client:
        client.resize(77, 21)
        result = client.read_until_exit()
    assert result.exit_code == 0, result
    assert result.stdout.strip() == b"21 77", result.stdout


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
    pod_env.wait_for(f"the exec'd process to be killed: {host_processes_with(marker)}", lambda: not host_processes_with(f"sleep {marker}"))
    pod_env.wait_for("runc exec to be gone", lambda: not host_processes_with(f"sh -c echo started; exec sleep {marker}"))
    pod_env.wait_for("the server to close its side", lambda: established_connections(port) == 0)
    assert "Traceback" not in pod_env.daemon.log_text()


# ---- attach -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echoer(pod_env: PodEnv, pod: tuple) -> str:
    """A container created with stdin that echoes every line it reads."""
    pod_id, config = pod
    script = 'echo ready; while read line; do echo "echo:$line"; echo "err:$line" >&2; done'
    return pod_env.run(pod_id, config, "echoer", ["sh", "-c", script], stdin=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_to_a_container_that_echoes_its_stdin(pod_env: PodEnv, echoer: str, transport: str) -> None:
    for round_ in range(2):  # detaching leaves the container running: a second attach works the same
        word = f"{transport}-{round_}-{secrets.token_hex(4)}"
        with connect(transport, attach_url(pod_env, echoer, stdin=True), stdin=True) as client:
            client.send_stdin(f"{word}\n".encode())
            assert client.read_until(f"echo:{word}\n".encode()).endswith(f"echo:{word}\n".encode())
            assert client.read_until(f"err:{word}\n".encode(), stream="stderr")
        assert pod_env.status(echoer).state == api_pb2.CONTAINER_RUNNING


def test_attach_with_a_terminal_resizes_through_conmon(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ctr = pod_env.run(pod_id, config, "tty-shell", ["sh"], stdin=True, tty=True)
    url = attach_url(pod_env, ctr, stdin=True, stderr=False, tty=True)
    with RemoteCommandClient.connect(url, stdin=True, stderr=False, tty=True) as client:
        client.resize(101, 33)
        for _ in range(100):
            client.send_stdin(b'echo "size=$(stty size)."\n')
            client.read_until(b"size=")
            client.read_until(b"size=")  # the terminal echoes the command line first
            if client.read_until(b".") == b"33 101.":
                break
        else:
            raise AssertionError("stty in the attached terminal never reported 33 rows and 101 columns")
    assert pod_env.status(ctr).state == api_pb2.CONTAINER_RUNNING
    pod_env.stop(ctr)
    pod_env.remove(ctr)


def test_attach_ends_when_the_container_exits(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ctr = pod_env.run(pod_id, config, "short-lived", ["sh", "-c", "read line; echo last:$line; exit 0"], stdin=True,
                      stdin_once=True)
    with RemoteCommandClient.connect(attach_url(pod_env, ctr, stdin=True), stdin=True) as client:
        client.send_stdin(b"words\n")
        result = client.read_until_exit()
    assert b"last:words" in result.stdout
    assert result.exit_code == 0 and result.status == {"metadata": {}, "status": "Success"}
    pod_env.wait_state(ctr)
    pod_env.remove(ctr)


# ---- port-forward ------------------------------------------------------------------------------------------------


def test_port_forward_over_spdy_two_ports_concurrently_and_10_mib(pod_env: PodEnv, pod: tuple,
                                                                  web: dict[str, Any]) -> None:
    pod_id, _ = pod
    url = port_forward_url(pod_env, pod_id, list(HTTP_PORTS))
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def fetch(client: PortForwardClient, port: int, path: str, key: str) -> None:
        try:
            channel = client.open(port)
            http_get(channel.send, path)
            channel.close()
            results[key] = http_body(channel.recv_all(timeout=60))
            assert channel.error() == ""
            channel.reset()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    with PortForwardClient.connect(url) as client:
        jobs = [(HTTP_PORTS[i % 2], "/index.html", f"small-{i}") for i in range(12)]
        jobs += [(HTTP_PORTS[1], "/big", "big-1"), (HTTP_PORTS[0], "/big", "big-0")]
        threads = [threading.Thread(target=fetch, args=(client, *job)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for i in range(12):
            assert results[f"small-{i}"] == b"hello-from-httpd\n"
        for key in ("big-0", "big-1"):
            assert len(results[key]) == BIG_SIZE
            assert hashlib.sha256(results[key]).hexdigest() == web["big_sha256"]


def test_port_forward_over_websocket_two_ports_and_10_mib(pod_env: PodEnv, pod: tuple,
                                                          web: dict[str, Any]) -> None:
    pod_id, _ = pod
    url = port_forward_url(pod_env, pod_id, list(HTTP_PORTS))
    with WsPortForwardClient.connect(url, list(HTTP_PORTS)) as client:
        assert client.protocol == "v4.channel.k8s.io"
        http_get(client.channel(HTTP_PORTS[0]).send, "/index.html")
        http_get(client.channel(HTTP_PORTS[1]).send, "/big")
        small = client.channel(HTTP_PORTS[0]).read_until(b"hello-from-httpd\n")
        head = client.channel(HTTP_PORTS[1]).read_until(b"\r\n\r\n")
        body = client.channel(HTTP_PORTS[1]).recv_exactly(BIG_SIZE, timeout=60)
    assert b" 200 " in small.split(b"\r\n")[0]
    assert b" 200 " in head.split(b"\r\n")[0]
    assert hashlib.sha256(body).hexdigest() == web["big_sha256"]


def test_port_forward_to_a_port_nothing_listens_on(pod_env: PodEnv, pod: tuple, web: dict[str, Any]) -> None:
    pod_id, _ = pod
    with PortForwardClient.connect(port_forward_url(pod_env, pod_id, [9, HTTP_PORTS[0]])) as client:
        refused = client.open(9)
        message = refused.error()
        assert "9" in message and pod_id in message and "refused" in message.lower(), message
        assert refused.recv_all() == b""
        # the same connection still forwards other requests
        good = client.open(HTTP_PORTS[0])
        http_get(good.send, "/index.html")
        good.close()
        assert http_body(good.recv_all()) == b"hello-from-httpd\n"
        assert good.error() == ""
    with WsPortForwardClient.connect(port_forward_url(pod_env, pod_id, [9]), [9, HTTP_PORTS[0]]) as client:
        assert "refused" in client.channel(9).error().lower()
        http_get(client.channel(HTTP_PORTS[0]).send, "/index.html")
        assert client.channel(HTTP_PORTS[0]).read_until(b"hello-from-httpd\n")


# ---- refusals ----------------------------------------------------------------------------------------------------


def test_unknown_and_used_tokens_get_404(pod_env: PodEnv, sleeper: str) -> None:
    url = exec_url(pod_env, sleeper, ["true"])
    with RemoteCommandClient.connect(url) as client:
        assert client.read_until_exit().exit_code == 0
    for bad in (url, url.rsplit("/", 1)[0] + "/" + secrets.token_urlsafe(32),
                url.replace("/exec/", "/attach/"), url.rsplit("/", 2)[0] + "/nothing-here"):
        with pytest.raises(UpgradeRefused) as refused:
            RemoteCommandClient.connect(bad)
        assert refused.value.response.status == 404, bad
    with pytest.raises(WsUpgradeRefused) as ws_refused:
        WsRemoteCommandClient.connect(url)
    assert ws_refused.value.status == 404


def test_a_protocol_nobody_offered_is_refused_clearly(pod_env: PodEnv, sleeper: str) -> None:
    with pytest.raises(UpgradeRefused) as refused:
        RemoteCommandClient.connect(exec_url(pod_env, sleeper, ["true"]), protocols=("v9.channel.k8s.io",))
    response = refused.value.response
    assert response.status == 403
    assert "v9.channel.k8s.io" in response.body.decode() and "v4.channel.k8s.io" in response.body.decode()
    assert "v4.channel.k8s.io" in response.header_values("X-Accepted-Stream-Protocol-Versions")
    with pytest.raises(WsUpgradeRefused) as ws_refused:
        WsRemoteCommandClient.connect(exec_url(pod_env, sleeper, ["true"]), protocols=("v9.channel.k8s.io",))
    assert ws_refused.value.status == 403
    with pytest.raises(UpgradeRefused) as pf_refused:
        PortForwardClient.connect(port_forward_url(pod_env, pod_env.list_pods()[0].id, [80]),
                                  protocols=("v4.channel.k8s.io",))
    assert pf_refused.value.response.status == 403
    assert "portforward.k8s.io" in pf_refused.value.response.body.decode()


def test_streaming_calls_check_the_container_and_the_streams(pod_env: PodEnv, pod: tuple, sleeper: str) -> None:
    pod_id, config = pod
    created = pod_env.create(pod_id, config, pod_env.container_config("never-started", SLEEP))
    try:
        for call in (lambda: exec_url(pod_env, created, ["true"]), lambda: attach_url(pod_env, created)):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            assert "not running" in error.details() and created in error.details()
    finally:
        pod_env.remove(created)
    assert rpc_error(lambda: exec_url(pod_env, "no-such-container", ["true"])).code() == grpc.StatusCode.NOT_FOUND
    for flags in ({"tty": True, "stderr": True}, {"stdin": False, "stdout": False, "stderr": False}):
        error = rpc_error(lambda: exec_url(pod_env, sleeper, ["true"], **flags))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, flags
    assert rpc_error(lambda: exec_url(pod_env, sleeper, [])).code() == grpc.StatusCode.INVALID_ARGUMENT
    # stdin only where the container was created with it
    error = rpc_error(lambda: attach_url(pod_env, sleeper, stdin=True))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "stdin" in error.details()
    assert rpc_error(lambda: port_forward_url(pod_env, "no-such-pod", [80])).code() == grpc.StatusCode.NOT_FOUND


# ---- cripy ctl ---------------------------------------------------------------------------------------------------


def ctl(env: PodEnv, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cripy.cli", "ctl", "-r", str(env.daemon.socket), *args],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_ctl_exec_interactive_pipes_stdin_and_returns_the_exit_code(pod_env: PodEnv, sleeper: str) -> None:
    process = ctl(pod_env, "exec", "-i", sleeper, "sh", "-c", "cat; exit 5", stdin=subprocess.PIPE)
    out, err = process.communicate(b"through ctl\n", timeout=60)
    assert out == b"through ctl\n", err
    assert process.returncode == 5, err


def test_ctl_port_forward(pod_env: PodEnv, pod: tuple, web: dict[str, Any]) -> None:
    pod_id, _ = pod
    process = ctl(pod_env, "port-forward", pod_id, f"0:{HTTP_PORTS[0]}")
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local_port = int(line.split(":")[1].split()[0])
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", local_port), timeout=30) as conn:
                http_get(conn.sendall, "/index.html")
                response = b""
                while chunk := conn.recv(65536):
                    response += chunk
            assert http_body(response) == b"hello-from-httpd\n"
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_ctl_exec_it_on_a_real_terminal(pod_env: PodEnv, sleeper: str) -> None:
    """`cripy ctl exec -it` with a pty as its terminal: raw mode, the terminal's size passed on, the exit code."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: ctl with the pty as its controlling terminal
        os.chdir(REPO_ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "cripy.cli", "ctl", "-r", str(pod_env.daemon.socket),
                                  "exec", "-it", sleeper, "sh", "-c", "stty size; read line; echo got:$line; exit 4"])
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        output = _read_pty_until(fd, b"33 101")
        os.write(fd, b"typed\r")
        output += _read_pty_until(fd, b"got:typed")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"33 101" in output and b"got:typed" in output, output
    assert os.waitstatus_to_exitcode(status) == 4


def _read_pty_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    """Bytes from the pty until `marker` shows (the timeout only stops a hang)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen
