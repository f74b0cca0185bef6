"""Verbs that carry a container's input and output: exec, attach, port-forward and logs.

`exec -s` deliberately differs from crictl: crictl prints the command's stdout and then its stderr, each followed
by a newline, all on its own stdout, and turns any non-zero exit into its own error and exit code 1; `cripy ctl`
writes the two streams where they came from, unchanged, and exits with the command's exit code, so that scripts
can use it as they would run the command itself.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import grpc
from cri_api.v1 import api_pb2

from cripy.ctl.client import CRIClient, CRIError
from cripy.ctl.context import CommandError, Context, VerbAdder, for_each
from cripy.ctl.crilog import LogFileReader, LogLine, display_timestamp

# How often `logs -f` looks for new log data and whether the container is still running.
LOG_FOLLOW_POLL_SECONDS = 0.25

# Interactive exec (-i/-t) needs the streaming protocols (SPDY to the URL from Exec). A streaming client plugs in
# here: it gets the client and the Exec request and returns the command's exit code.
InteractiveExec = Callable[[CRIClient, api_pb2.ExecRequest], int]


def streaming_exec(client: CRIClient, request: api_pb2.ExecRequest) -> int:
    """Exec through the streaming server (the URL from the Exec call), as crictl exec -it does."""
    return remote_command(client.exec(request).url, request, f"exec in {request.container_id}")


def remote_command(url: str, request: api_pb2.ExecRequest | api_pb2.AttachRequest, what: str) -> int:
    """Relay the local stdio to the exec or attach session at `url`; the command's exit code."""
    from cripy.ctl import stream

    try:
        return stream.run_remote_command(url, stdin=request.stdin, tty_mode=request.tty)
    except (stream.StreamError, OSError) as error:
        raise CommandError(f"{what}: {error}") from None


interactive_exec: InteractiveExec | None = streaming_exec

SELECTION_FLAGS = ("name", "pod", "image", "state", "label", "latest", "last")


def exec_targets(ctx: Context) -> tuple[list[str], list[str], bool]:
    """The containers and the command: `ID COMMAND...`, or with a selection flag every selected container and all
    arguments as the command. Also whether to print each container's id before its output."""
    from cripy.ctl.verbs.containers import list_containers

    args = ctx.args
    words = list(args.words)
    if words[:1] == ["--"]:
        words = words[1:]
    if not any(getattr(args, flag) for flag in SELECTION_FLAGS):
        command = words[1:]
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            raise CommandError("exec needs a CONTAINER-ID and a COMMAND")
        return [words[0]], command, False
    if not words:
        raise CommandError("exec needs a COMMAND")
    selection = argparse.Namespace(id="", pod=args.pod, label=args.label, state=args.state, all=False,
                                   latest=args.latest, last=args.last, name=args.name, namespace=None,
                                   image=args.image)
    ids = [container.id for container in list_containers(ctx, selection)]
    if not ids:
        raise CommandError("no containers found per filter flags")
    return ids, words, not args.quiet


def cmd_exec(ctx: Context) -> int:
    args = ctx.args
    ids, command, announce = exec_targets(ctx)
    if (args.interactive or args.tty) and not args.sync:
        if interactive_exec is None:
            raise CommandError("exec -it is not supported by this client")
        if len(ids) != 1:
            raise CommandError("exec -i/-t needs exactly one container")
        request = api_pb2.ExecRequest(container_id=ids[0], cmd=command, tty=args.tty, stdin=args.interactive,
                                      stdout=True, stderr=not args.tty)
        return interactive_exec(ctx.client, request)
    exit_codes = []

    def run(container_id: str) -> None:
        if announce:
            ctx.print(f"{container_id}:")
            ctx.stdout.flush()
        # Without a terminal or stdin the synchronous call gives the same result as a stream.
        response = ctx.client.exec_sync(container_id, command, args.exec_timeout)
        if response.stdout:
            ctx.write_bytes(response.stdout)
        if response.stderr:
            ctx.write_bytes(response.stderr, to_stderr=True)
        exit_codes.append(response.exit_code)

    failed = for_each(ctx, ids, run)
    if args.ignore_errors:
        return 0
    return next((code for code in exit_codes if code), failed)


def cmd_attach(ctx: Context) -> int:
    args = ctx.args
    request = api_pb2.AttachRequest(container_id=args.container, stdin=args.stdin, tty=args.tty, stdout=True,
                                    stderr=not args.tty)
    return remote_command(ctx.client.attach(request).url, request, f"attach to {args.container}")


def cmd_port_forward(ctx: Context) -> int:
    from cripy.ctl import stream

    args = ctx.args
    try:
        mappings = stream.parse_port_mappings(args.ports)
    except ValueError as error:
        raise CommandError(str(error)) from None
    request = api_pb2.PortForwardRequest(pod_sandbox_id=args.pod_id, port=[remote for _, remote in mappings])
    url = ctx.client.port_forward(request).url

    def announce(line: str) -> None:
        ctx.print(line)
        ctx.stdout.flush()

    try:
        stream.PortForwarder(url, mappings, announce).run()
    except (stream.StreamError, OSError) as error:
        raise CommandError(f"port-forward to {args.pod_id}: {error}") from None
    return 0


def cmd_logs(ctx: Context) -> int:
    args = ctx.args
    status = ctx.client.container_status(args.container).status
    if not status.log_path:
        raise CommandError(f"container {args.container} has no log path")

    def emit(lines: list[LogLine]) -> None:
        for line in lines:
            prefix = f"{display_timestamp(line.timestamp)} ".encode() if args.timestamps and line.timestamp else b""
            ending = b"\n" if line.complete else b""
            ctx.write_bytes(prefix + line.content + ending, to_stderr=line.stream == "stderr")

    with LogFileReader(status.log_path) as reader:
        if not args.follow:
            emit(tail(reader.finish(), args.tail))
            return 0
        emit(tail(reader.read_lines(), args.tail))
        while container_running(ctx.client, status.id or args.container):
            time.sleep(LOG_FOLLOW_POLL_SECONDS)
            emit(reader.read_lines())
        emit(reader.finish())
    return 0


def tail(lines: list[LogLine], count: int) -> list[LogLine]:
    if count < 0:
        return lines
    return lines[len(lines) - count:] if count else []


def container_running(client: CRIClient, container_id: str) -> bool:
    """Whether the container may still write logs (created or running); a removed one does not."""
    try:
        state = client.container_status(container_id).status.state
    except CRIError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return state in (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_RUNNING)


def add_transport_flag(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-r", "--transport", choices=("spdy",), default="spdy",
                     help="streaming protocol (this client speaks SPDY)")


def register(verb: VerbAdder) -> None:
    sub = verb("exec", cmd_exec, "run a command in running containers")
    sub.add_argument("-s", "--sync", action="store_true", help="run synchronously (ExecSync)")
    sub.add_argument("--timeout", dest="exec_timeout", type=int, default=0,
                     help="seconds the command may run (0 = no limit)")
    sub.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    sub.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    add_transport_flag(sub)
    sub.add_argument("--name", help="run in every container whose name matches (regular expression)")
    sub.add_argument("-p", "--pod", help="run in every container of this pod sandbox")
    sub.add_argument("--image", help="run in every container of this image")
    sub.add_argument("--state", help="run in every container in this state")
    sub.add_argument("--label", action="append", metavar="KEY=VALUE", help="run in containers with this label")
    sub.add_argument("-l", "--latest", action="store_true", help="run in the most recently created container")
    sub.add_argument("-n", "--last", type=int, default=0, help="run in the N most recently created containers")
    sub.add_argument("-q", "--quiet", action="store_true", help="do not print each selected container's id")
    sub.add_argument("-e", "--ignore-errors", action="store_true", help="exit 0 whatever the commands return")
    sub.add_argument("words", nargs=argparse.REMAINDER, metavar="[CONTAINER-ID] COMMAND [ARG...]")

    sub = verb("attach", cmd_attach, "attach to a running container")
    sub.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the container")
    sub.add_argument("-t", "--tty", action="store_true", help="stdin is a terminal")
    add_transport_flag(sub)
    sub.add_argument("container", metavar="CONTAINER-ID")

    sub = verb("port-forward", cmd_port_forward, "forward local ports to a pod sandbox")
    add_transport_flag(sub)
    sub.add_argument("pod_id", metavar="POD-ID")
    sub.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")

    sub = verb("logs", cmd_logs, "print a container's logs")
    sub.add_argument("container", metavar="CONTAINER-ID")
    sub.add_argument("-f", "--follow", action="store_true", help="follow the log until the container exits")
    sub.add_argument("--tail", type=int, default=-1, help="only the last N lines (default all)")
    sub.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
