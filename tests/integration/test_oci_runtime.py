"""The OCI runtime layer against the real conmon and runc: busybox containers in temporary bundles.

Needs root, /usr/bin/conmon, /usr/bin/runc and /bin/busybox (busybox-static). Every test removes what it made:
containers (runc delete --force), conmon processes (by pid), cgroups and temporary directories.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from cripy.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from cripy.linux import moveprimer
from cripy.linux.moveprimer import MovePrimer
from cripy.oci.exits import ExitWatcher, read_exit_file, read_oom_file
from cripy.oci.inotify import wait_for_path
from cripy.oci.runtime import CreateResult, OCIRuntime, RuntimeHandler
from cripy.storage.layout import Layout
from cripy.streaming.commandsession import CommandIO
from cripy.streaming.remotecommand import run_exec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not all(os.path.exists(p) for p in ("/usr/bin/conmon", "/usr/bin/runc", "/bin/busybox")),
                       reason="needs conmon, runc and busybox-static"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
WAIT = 30.0  # bound for waiting on container events; tests never assert on durations


def _base_spec() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["runc", "spec", "--bundle", tmp], check=True)
        return json.loads((Path(tmp) / "config.json").read_text())


_SPEC = _base_spec()


def _make_rootfs(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "tmp").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")


def _v1_mounts() -> list[Path]:
    mounts = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, _ = line.split(":", 2)
        if controllers and (CGROUP_ROOT / controllers.replace("name=", "")).is_dir():
            mounts.append(CGROUP_ROOT / controllers.replace("name=", ""))
    return mounts


async def _remove_cgroup_tree(relative: str) -> None:
    # runc also creates the container's cgroup in the unified hierarchy of a hybrid host.
    for mount in _v1_mounts() + [CGROUP_ROOT / "unified", CGROUP_ROOT]:
        top = mount / relative
        if not top.is_dir() or mount == CGROUP_ROOT and not (CGROUP_ROOT / "cgroup.controllers").exists():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            for _ in range(100):  # a parent stays busy for a moment while its removed child is torn down
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    await asyncio.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class Env:
    """One test's world: a temporary directory with run/exit/runc dirs, a runtime, bundles and a cgroup parent."""

    def __init__(self) -> None:
        # Short base path: the attach socket path must fit sun_path.
        self.base = Path(tempfile.mkdtemp(prefix="cripy-oci-", dir="/tmp"))
        self.run_dir = self.base / "run"
        self.exits_dir = self.run_dir / "exits"
        self.handler = RuntimeHandler(runtime_root=self.base / "runc")
        self.runtime = OCIRuntime(self.handler, layout=Layout(self.base / "root", self.run_dir))
        self.cgroup_parent = f"/cripy-test-{uuid.uuid4().hex[:12]}"
        self.ids: list[str] = []
        self.conmon_pids: list[int] = []

    def bundle(self, args: list[str], *, memory_limit: int | None = None,
               readonly: bool = True) -> tuple[str, Path]:
        ctr_id = uuid.uuid4().hex
        self.ids.append(ctr_id)
        bundle = self.base / "ctr" / ctr_id[:12]
        _make_rootfs(bundle / "rootfs")
        spec = json.loads(json.dumps(_SPEC))
        spec["process"]["args"] = args
        spec["process"]["terminal"] = False
        spec["process"].pop("oomScoreAdj", None)  # no CAP_SYS_RESOURCE here: negative values fail
        spec["root"]["readonly"] = readonly
        spec["linux"]["cgroupsPath"] = f"{self.cgroup_parent}/{ctr_id}"
        if memory_limit is not None:
            spec["linux"]["resources"]["memory"] = {"limit": memory_limit, "swap": memory_limit}
        (bundle / "config.json").write_text(json.dumps(spec))
        return ctr_id, bundle

    def paths(self, ctr_id: str) -> tuple[Path, Path]:
        """(log path, persist dir) of a container."""
        return self.base / "logs" / f"{ctr_id[:12]}.log", self.base / "persist" / ctr_id[:12]

    async def create(self, ctr_id: str, bundle: Path, **kwargs: object) -> CreateResult:
        log_path, persist_dir = self.paths(ctr_id)
        result = await self.runtime.create(ctr_id, bundle, log_path=log_path, persist_dir=persist_dir, **kwargs)
        self.conmon_pids.append(result.conmon_pid)
        return result

    async def run(self, args: list[str], **kwargs: object) -> tuple[str, CreateResult]:
        ctr_id, bundle = self.bundle(args, **kwargs)
        result = await self.create(ctr_id, bundle)
        await self.runtime.start(ctr_id)
        return ctr_id, result

    async def cleanup(self) -> None:
        for ctr_id in self.ids:
            subprocess.run([self.handler.runtime_path, "--root", str(self.handler.runtime_root), "delete",
                            "--force", ctr_id], capture_output=True)
        for pid in self.conmon_pids:
            if _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in self.conmon_pids:  # conmon is not our child: wait for it by watching /proc
            for _ in range(200):
                if not _pid_alive(pid):
                    break
                await asyncio.sleep(0.05)
        await _remove_cgroup_tree(self.cgroup_parent.strip("/"))
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    world = Env()
    try:
        yield world
    finally:
        await world.cleanup()


class ExitLog:
    """Collects ExitWatcher callbacks; ``wait(id)`` returns one container's (code, time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, datetime]] = []
        self._changed = asyncio.Event()

    async def on_exit(self, ctr_id: str, code: int, when: datetime) -> None:
        self.calls.append((ctr_id, code, when))
        self._changed.set()

    async def wait(self, ctr_id: str) -> tuple[int, datetime]:
        async with asyncio.timeout(WAIT):
            while True:
                for cid, code, when in self.calls:
                    if cid == ctr_id:
                        return code, when
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def exits(env: Env) -> AsyncIterator[ExitLog]:
    collected = ExitLog()
    watcher = ExitWatcher(env.exits_dir, collected.on_exit)
    await watcher.start()
    try:
        yield collected
    finally:
        await watcher.stop()


async def _wait_for_text(path: Path, text: str) -> str:
    async with asyncio.timeout(WAIT):
        while True:
            content = path.read_text() if path.exists() else ""
            if text in content:
                return content
            await asyncio.sleep(0.05)


# ---- lifecycle -----------------------------------------------------------------------------------------------


async def test_container_output_goes_to_cri_log_and_exit_code_is_reported(env: Env, exits: ExitLog) -> None:
    ctr_id, bundle = env.bundle(["sh", "-c", "echo hello; echo err >&2; sleep 0.2; exit 7"])
    result = await env.create(ctr_id, bundle)

    status = Path(f"/proc/{result.conmon_pid}/status").read_text()
    ppid = int(re.search(r"^PPid:\s*(\d+)", status, re.M).group(1))
    assert ppid != os.getpid()
    assert "conmon" in Path(f"/proc/{result.conmon_pid}/comm").read_text()
    state = await env.runtime.state(ctr_id)
    assert state is not None and state["status"] == "created" and state["pid"] == result.pid

    await env.runtime.start(ctr_id)
    code, _ = await exits.wait(ctr_id)
    assert code == 7

    log_path, persist_dir = env.paths(ctr_id)
    lines = log_path.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)"
    assert any(re.fullmatch(stamp + r" stdout F hello", line) for line in lines), lines
    assert any(re.fullmatch(stamp + r" stderr F err", line) for line in lines), lines
    assert read_exit_file(persist_dir / "exit") == 7
    assert read_oom_file(persist_dir) is False
    assert (await env.runtime.state(ctr_id))["status"] == "stopped"


async def test_delete_is_idempotent_and_state_is_none_for_unknown(env: Env, exits: ExitLog) -> None:
    ctr_id, _ = await env.run(["true"])
    await exits.wait(ctr_id)
    await env.runtime.kill(ctr_id, signal.SIGTERM)  # already stopped: not an error
    await env.runtime.delete(ctr_id)
    await env.runtime.delete(ctr_id)
    await env.runtime.kill(ctr_id, signal.SIGKILL)  # gone: not an error either
    assert await env.runtime.state(ctr_id) is None
    assert not (env.runtime.socket_dir / ctr_id).is_symlink()


async def test_sigkill_reports_128_plus_signal(env: Env, exits: ExitLog) -> None:
    ctr_id, _ = await env.run(["sleep", "1000"])
    assert stat.S_ISSOCK(os.stat(env.runtime.attach_socket_path(ctr_id)).st_mode)
    await env.runtime.resize(ctr_id, 24, 80)  # accepted by conmon's control fifo (no terminal: nothing to do)
    await env.runtime.kill(ctr_id, signal.SIGKILL)
    code, _ = await exits.wait(ctr_id)
    assert code == 128 + signal.SIGKILL


async def test_sigterm_reaches_the_container(env: Env, exits: ExitLog) -> None:
    # PID 1 of a pid namespace only receives signals it handles, hence the trap.
    ctr_id, _ = await env.run(["sh", "-c", "trap 'exit 143' TERM; echo ready; sleep 1000 & wait"])
    await _wait_for_text(env.paths(ctr_id)[0], "ready")
    await env.runtime.kill(ctr_id, signal.SIGTERM)
    code, _ = await exits.wait(ctr_id)
    assert code == 143


async def test_conmon_stays_in_the_daemons_cgroup(env: Env, exits: ExitLog) -> None:
    """Not in the container's: a unit with KillMode=process keeps the monitors when the daemon restarts."""
    ctr_id, bundle = env.bundle(["true"])
    result = await env.create(ctr_id, bundle)
    mine = Path("/proc/self/cgroup").read_text()
    assert Path(f"/proc/{result.conmon_pid}/cgroup").read_text() == mine
    await env.runtime.start(ctr_id)
    assert (await exits.wait(ctr_id))[0] == 0


@pytest.mark.skipif(not moveprimer.moves_wait(), reason="cgroup moves do not wait here (favordynmods)")
async def test_create_exec_and_streamed_exec_prime_a_move_that_moves_nothing(env: Env) -> None:
    """Each launch of a runc that moves into the container's cgroups asks the primer for a move, which writes
    this process's pid to its own cgroup: the move waits in the primer's thread and moves nothing."""
    mine = Path("/proc/self/cgroup").read_text()
    primer = env.runtime.move_primer = MovePrimer()

    async def moves_reach(count: int) -> None:
        async with asyncio.timeout(WAIT):
            while primer.moves < count:
                await asyncio.sleep(0.01)

    ctr_id, bundle = await env.run(["sleep", "1000"])
    await moves_reach(1)
    result = await env.runtime.exec_sync(ctr_id, ["echo", "hi"], timeout=None)
    assert (result.exit_code, result.stdout) == (0, b"hi\n")
    await moves_reach(2)
    output: list[bytes] = []

    async def collect(_channel: int, data: bytes) -> None:
        output.append(data)

    outcome = await run_exec(env.runtime, ctr_id, ("echo", "streamed"), False,
                             CommandIO(stdin=None, stdout=True, stderr=True, write=collect), bundle)
    assert outcome.exit_code == 0 and b"".join(output) == b"streamed\n"
    await moves_reach(3)
    assert Path("/proc/self/cgroup").read_text() == mine


# ---- failures ------------------------------------------------------------------------------------------------


async def _assert_nothing_left(env: Env, ctr_id: str, bundle: Path) -> None:
    assert await env.runtime.state(ctr_id) is None
    assert _processes_mentioning(ctr_id) == []
    assert not (env.runtime.socket_dir / ctr_id).is_symlink()
    assert not (bundle / "attach").exists() and not (bundle / "ctl").exists()


async def test_create_with_missing_binary_raises_runc_message_and_leaves_nothing(env: Env) -> None:
    ctr_id, bundle = env.bundle(["/nonexistent-binary"])
    with pytest.raises(Internal) as info:
        await env.create(ctr_id, bundle)
    message = str(info.value)
    assert ctr_id in message and "/nonexistent-binary" in message and "no such file" in message
    await _assert_nothing_left(env, ctr_id, bundle)


async def test_create_with_missing_rootfs_raises_and_leaves_nothing(env: Env) -> None:
    ctr_id, bundle = env.bundle(["true"])
    shutil.rmtree(bundle / "rootfs")
    with pytest.raises(Internal) as info:
        await env.create(ctr_id, bundle)
    assert ctr_id in str(info.value) and "rootfs" in str(info.value)
    await _assert_nothing_left(env, ctr_id, bundle)


# ---- exec ----------------------------------------------------------------------------------------------------


async def test_exec_sync_output_and_exit_codes(env: Env) -> None:
    ctr_id, _ = await env.run(["sleep", "1000"])
    result = await env.runtime.exec_sync(ctr_id, ["echo", "hi"], timeout=None)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"hi\n", b"")
    result = await env.runtime.exec_sync(ctr_id, ["sh", "-c", "echo oops >&2; exit 3"], timeout=30)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"", b"oops\n")
    with pytest.raises(InvalidArgument):
        await env.runtime.exec_sync(ctr_id, ["/no/such/command"], timeout=30)
    # Each call's pid file and runc log go after its answer, in a worker thread, whatever the outcome.
    for _ in range(100):
        if not os.listdir(env.runtime.exec_dir):
            break
        await asyncio.sleep(0.02)
    assert os.listdir(env.runtime.exec_dir) == []


async def test_exec_sync_timeout_kills_the_command(env: Env) -> None:
    ctr_id, _ = await env.run(["sleep", "1000"])
    with pytest.raises(DeadlineExceeded) as info:
        await env.runtime.exec_sync(ctr_id, ["sleep", "10"], timeout=1)
    assert ctr_id in str(info.value) and "sleep" in str(info.value)
    ps = await env.runtime.exec_sync(ctr_id, ["ps", "-o", "pid,args"], timeout=30)
    assert b"sleep 1000" in ps.stdout
    assert b"sleep 10\n" not in ps.stdout


async def test_exec_sync_of_missing_command_is_an_error(env: Env) -> None:
    """A command the container does not have is the caller's mistake, not the runtime's failure."""
    ctr_id, _ = await env.run(["sleep", "1000"])
    with pytest.raises(InvalidArgument) as info:
        await env.runtime.exec_sync(ctr_id, ["/no/such/command"], timeout=30)
    assert ctr_id in str(info.value) and "/no/such/command" in str(info.value)


async def test_exec_sync_output_is_capped(env: Env) -> None:
    ctr_id, _ = await env.run(["sleep", "1000"])
    result = await env.runtime.exec_sync(ctr_id, ["head", "-c", "20000000", "/dev/zero"], timeout=60)
    assert result.exit_code == 0
    assert len(result.stdout) == 16 * 1024 * 1024


# ---- resources and logs --------------------------------------------------------------------------------------


async def test_update_resources_sets_memory_limit(env: Env) -> None:
    ctr_id, _ = await env.run(["sleep", "1000"])
    limit = 64 * 1024 * 1024
    await env.runtime.update_resources(ctr_id, {"memory": {"limit": limit}})
    memory_cgroup = CGROUP_ROOT / "memory" / env.cgroup_parent.strip("/") / ctr_id
    assert int((memory_cgroup / "memory.limit_in_bytes").read_text()) == limit


async def test_oom_kill_is_recorded(env: Env, exits: ExitLog) -> None:
    ctr_id, _ = await env.run(["tail", "/dev/zero"], memory_limit=20 * 1024 * 1024)
    code, _ = await exits.wait(ctr_id)
    assert code == 128 + signal.SIGKILL
    assert read_oom_file(env.paths(ctr_id)[1]) is True


async def test_reopen_log_writes_to_a_new_file_at_the_same_path(env: Env) -> None:
    script = "echo before; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after; sleep 1000"
    ctr_id, bundle = env.bundle(["sh", "-c", script], readonly=False)
    await env.create(ctr_id, bundle)
    await env.runtime.start(ctr_id)
    log_path = env.paths(ctr_id)[0]
    await _wait_for_text(log_path, "before")

    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)
    await env.runtime.reopen_log(ctr_id, log_path)
    assert log_path.exists()
    (bundle / "rootfs" / "tmp" / "go").touch()

    content = await _wait_for_text(log_path, "stdout F after")
    assert "before" not in content
    assert "after" not in rotated.read_text()


async def test_reopen_log_without_conmon_is_a_precondition_failure(env: Env, exits: ExitLog) -> None:
    ctr_id, _ = await env.run(["true"])
    await exits.wait(ctr_id)
    with pytest.raises(FailedPrecondition) as info:
        await env.runtime.reopen_log(ctr_id, env.paths(ctr_id)[0])
    assert ctr_id in str(info.value)


# ---- exit watcher --------------------------------------------------------------------------------------------


async def test_exit_before_watcher_start_is_reported_on_start(env: Env) -> None:
    ctr_id, _ = await env.run(["sh", "-c", "exit 5"])
    assert await wait_for_path(env.exits_dir / ctr_id, WAIT)

    collected = ExitLog()
    async with ExitWatcher(env.exits_dir, collected.on_exit):
        code, when = await collected.wait(ctr_id)
    assert code == 5
    assert when.timestamp() == pytest.approx(os.stat(env.exits_dir / ctr_id).st_mtime)
    assert [c for c in collected.calls if c[0] == ctr_id] == [(ctr_id, 5, when)]


async def test_watcher_reports_each_file_once_and_ignores_temp_files(tmp_path: Path) -> None:
    collected = ExitLog()
    async with ExitWatcher(tmp_path, collected.on_exit):
        (tmp_path / "aaa.XYZ123").write_text("1")  # glib temp name: ignored
        (tmp_path / "aaa.XYZ123").rename(tmp_path / "aaa")  # renamed into place: reported
        (tmp_path / "bbb").write_text("2")  # written in place: reported on close
        assert (await collected.wait("aaa"))[0] == 1
        await collected.wait("bbb")
        (tmp_path / "aaa").unlink()
        tmp = tmp_path / "ccc.ABCDEF"
        tmp.write_text("3")
        tmp.rename(tmp_path / "ccc")
        await collected.wait("ccc")
    assert sorted((cid, code) for cid, code, _ in collected.calls) == [("aaa", 1), ("bbb", 2), ("ccc", 3)]
