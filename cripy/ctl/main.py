"""`cripy ctl`: crictl's verbs and flags over the CRI v1 API, for people and tests.

Owns the command line (argparse), the verbs (each a small function building requests from flags and printing the
response in crictl's shapes) and the error reporting: a failed call prints one `E ...` line naming the call and
the gRPC code to stderr and the command exits 1.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
from cri_api.v1 import api_pb2
from google.protobuf.message import Message

from cripy import __version__
from cripy.ctl import output
from cripy.ctl.client import DEFAULT_ENDPOINT, DEFAULT_PULL_TIMEOUT, DEFAULT_TIMEOUT, CRIClient, CRIError
from cripy.ctl.configfile import ConfigFileError, load_container_config, load_pod_config
from cripy.ctl.crilog import LogFileReader, LogLine

# How often `logs -f` looks for new log data and whether the container is still running.
LOG_FOLLOW_POLL_SECONDS = 0.25

CONTAINER_STATES = {
    "created": api_pb2.CONTAINER_CREATED,
    "running": api_pb2.CONTAINER_RUNNING,
    "exited": api_pb2.CONTAINER_EXITED,
    "unknown": api_pb2.CONTAINER_UNKNOWN,
}
CONTAINER_STATE_NAMES = {value: name.capitalize() for name, value in CONTAINER_STATES.items()}
POD_STATES = {"ready": api_pb2.SANDBOX_READY, "notready": api_pb2.SANDBOX_NOTREADY}
POD_STATE_NAMES = {api_pb2.SANDBOX_READY: "Ready", api_pb2.SANDBOX_NOTREADY: "NotReady"}
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

# Interactive exec (-i/-t) needs the streaming protocols (SPDY/WebSocket to the URL from Exec). A streaming client
# plugs in here: it gets the client and the Exec request and returns the command's exit code.
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


class CommandError(Exception):
    """A failure found by the client itself: bad flags or arguments, or a named object that is not there."""


@dataclass
class Context:
    """What a verb needs: its parsed flags, a lazily connected client, and the output streams."""

    args: argparse.Namespace
    stdout: TextIO
    stderr: TextIO
    _client: CRIClient | None = field(default=None, repr=False)

    @property
    def client(self) -> CRIClient:
        if self._client is None:
            debug_log = self.debug if self.args.debug else None
            try:
                self._client = CRIClient(self.args.runtime_endpoint, self.args.image_endpoint or None,
                                         timeout=self.args.timeout, debug_log=debug_log)
            except ValueError as error:
                raise CommandError(str(error)) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def print(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def write(self, text: str) -> None:
        self.stdout.write(text)

    def error(self, message: str) -> None:
        self.stderr.write(f"E {message}\n")

    def warn(self, message: str) -> None:
        self.stderr.write(f"W {message}\n")

    def debug(self, message: str) -> None:
        self.stderr.write(f"D {message}\n")

    def write_bytes(self, data: bytes, to_stderr: bool = False) -> None:
        """Raw output (logs, exec output) without re-encoding where the stream allows it."""
        stream = self.stderr if to_stderr else self.stdout
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(data.decode("utf-8", "replace"))
            return
        stream.flush()
        buffer.write(data)
        buffer.flush()


# -- shared helpers ----------------------------------------------------------------------------------------


def for_each(ctx: Context, ids: Iterable[str], action: Callable[[str], None]) -> int:
    """Apply `action` to every id; a failure is reported and the others still run. Exit code 1 if any failed."""
    failed = False
    for item in ids:
        try:
            action(item)
        except (CRIError, CommandError) as error:
            ctx.error(str(error))
            failed = True
    return 1 if failed else 0


def parse_labels(values: Sequence[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values or ():
        key, sep, label_value = value.partition("=")
        if not sep or not key:
            raise CommandError(f"invalid label {value!r}: expected key=value")
        labels[key] = label_value
    return labels


def newest_first(items: list[Any], latest: bool, last: int) -> list[Any]:
    """Sort by creation time, newest first, and keep the newest one (latest) or `last` ones."""
    items = sorted(items, key=lambda item: item.created_at, reverse=True)
    if latest:
        return items[:1]
    if last > 0:
        return items[:last]
    return items


def matches_pattern(pattern: str | None, value: str) -> bool:
    if not pattern:
        return True
    try:
        return re.search(pattern, value) is not None
    except re.error as error:
        raise CommandError(f"invalid regular expression {pattern!r}: {error}") from None


def parse_bytes(value: str) -> int:
    """A byte count like crictl/docker accept it: 1048576, 512k, 256m, 1g (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", value, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {value!r}: expected bytes or a k/m/g/t suffix")
    exponent = " kmgt".index(match.group(2).lower() or " ")
    return int(match.group(1)) * 1024 ** exponent


def build_auth(args: argparse.Namespace) -> api_pb2.AuthConfig | None:
    """Registry credentials from --creds, --auth or --username/--password (crictl's pull flags)."""
    if args.creds and args.auth:
        raise CommandError("--creds and --auth are mutually exclusive")
    if args.creds:
        username, sep, password = args.creds.partition(":")
        if not username:
            raise CommandError("--creds needs USERNAME[:PASSWORD]")
        if not sep:
            if not sys.stdin.isatty():
                raise CommandError("--creds has no password and stdin is not a terminal to ask for one")
            password = getpass.getpass("Password: ")
        return api_pb2.AuthConfig(username=username, password=password)
    if args.auth:
        return api_pb2.AuthConfig(auth=args.auth)
    if args.username:
        return api_pb2.AuthConfig(username=args.username, password=args.password or "")
    return None


def print_ids_or_document(ctx: Context, items: Sequence[Any], response: Message) -> bool:
    """A list verb's -q (ids) or -o json/yaml output; False when the verb prints its table instead."""
    if ctx.args.quiet:
        for item in items:
            ctx.print(item.id)
        return True
    if ctx.args.output != "table":
        ctx.write(output.render_message(response, ctx.args.output))
        return True
    return False


def truncated(ctx: Context, value: str, prefix: str = "") -> str:
    return value if ctx.args.no_trunc else output.truncate_id(value, prefix)


# -- runtime ------------------------------------------------------------------------------------------------


def cmd_version(ctx: Context) -> int:
    response = ctx.client.version()
    if ctx.args.output:
        ctx.write(output.render_message(response, ctx.args.output))
        return 0
    ctx.print(f"Version:  {response.version}")
    ctx.print(f"RuntimeName:  {response.runtime_name}")
    ctx.print(f"RuntimeVersion:  {response.runtime_version}")
    ctx.print(f"RuntimeApiVersion:  {response.runtime_api_version}")
    return 0


def cmd_info(ctx: Context) -> int:
    response = ctx.client.status(verbose=True)
    data: dict[str, Any] = {"status": output.message_to_dict(response.status)}
    if response.runtime_handlers:
        data["runtimeHandlers"] = [output.message_to_dict(handler) for handler in response.runtime_handlers]
    if response.HasField("features"):
        data["features"] = output.message_to_dict(response.features)
    data.update(output.parse_info_map(response.info))
    ctx.write(output.render_data(data, ctx.args.output))
    return 0


# -- images -------------------------------------------------------------------------------------------------


def cmd_pull(ctx: Context) -> int:
    args = ctx.args
    sandbox_config = load_pod_config(args.pod_config, ctx.warn) if args.pod_config else None
    annotations = parse_labels(args.annotation)
    timeout = args.pull_timeout if args.pull_timeout > 0 else DEFAULT_PULL_TIMEOUT
    image_ref = ctx.client.pull_image(args.image, auth=build_auth(args), sandbox_config=sandbox_config,
                                      annotations=annotations, timeout=timeout)
    ctx.print(f"Image is up to date for {image_ref}")
    return 0


def cmd_images(ctx: Context) -> int:
    args = ctx.args
    images = sorted(ctx.client.list_images(args.repo or ""),
                    key=lambda image: image.repo_tags[0] if image.repo_tags else "")
    if print_ids_or_document(ctx, images, api_pb2.ListImagesResponse(images=images)):
        return 0
    headers = ["IMAGE", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "SIZE"]
    ctx.write(output.format_table(headers, image_rows(ctx, images)))
    return 0


def image_rows(ctx: Context, images: Iterable[api_pb2.Image]) -> Iterable[list[str]]:
    for image in images:
        repo_name, digest = output.split_repo_digest(image.repo_digests)
        pairs = [output.split_repo_tag(tag) for tag in image.repo_tags] or [(repo_name, "<none>")]
        for repo, tag in pairs:
            row = [repo, tag]
            if ctx.args.digests:
                row.append(truncated(ctx, digest, "sha256:"))
            row += [truncated(ctx, image.id, "sha256:"), output.human_size(image.size)]
            yield row


def cmd_inspecti(ctx: Context) -> int:
    def inspect(image: str) -> None:
        response = ctx.client.image_status(image, verbose=True)
        if not response.HasField("image"):
            raise CommandError(f"no such image {image!r} present")
        ctx.write(output.render_status_info(response.image, response.info, ctx.args.output))

    return for_each(ctx, ctx.args.images, inspect)


def cmd_rmi(ctx: Context) -> int:
    args = ctx.args
    if args.all or args.prune:
        images = ctx.client.list_images()
        if args.prune:
            images = unused_images(ctx.client, images)
        targets = [image.id for image in images]
    else:
        targets = list(args.images)
        if not targets:
            raise CommandError("rmi needs IMAGE arguments, --all or --prune")

    def remove(image: str) -> None:
        status = ctx.client.image_status(image)
        if not status.HasField("image"):
            raise CommandError(f"no such image {image!r}")
        ctx.client.remove_image(status.image.id)
        for name in list(status.image.repo_tags) or [status.image.id]:
            ctx.print(f"Deleted: {name}")

    return for_each(ctx, targets, remove)


def unused_images(client: CRIClient, images: list[api_pb2.Image]) -> list[api_pb2.Image]:
    """Images no container (in any state) refers to, pinned ones excepted."""
    used: set[str] = set()
    for container in client.list_containers():
        used.update({container.image_ref, container.image_id, container.image.image})
    return [image for image in images
            if not image.pinned and image.id not in used and not used.intersection(image.repo_tags)
            and not used.intersection(image.repo_digests)]


def cmd_imagefsinfo(ctx: Context) -> int:
    response = ctx.client.image_fs_info()
    ctx.write(output.render_data({"status": output.message_to_dict(response)}, ctx.args.output))
    return 0


# -- pods ---------------------------------------------------------------------------------------------------


def cmd_runp(ctx: Context) -> int:
    config = load_pod_config(ctx.args.config, ctx.warn)
    ctx.print(ctx.client.run_pod_sandbox(config, ctx.args.runtime or ""))
    return 0


def pod_filter(args: argparse.Namespace) -> api_pb2.PodSandboxFilter:
    pod_filter = api_pb2.PodSandboxFilter(id=args.id or "", label_selector=parse_labels(args.label))
    if args.state:
        state = POD_STATES.get(args.state.lower().replace("_", ""))
        if state is None:
            raise CommandError(f"invalid pod state {args.state!r}: expected ready or notready")
        pod_filter.state.state = state
    return pod_filter


def cmd_pods(ctx: Context) -> int:
    args = ctx.args
    pods = [pod for pod in ctx.client.list_pod_sandbox(pod_filter(args))
            if matches_pattern(args.name, pod.metadata.name)
            and matches_pattern(args.namespace, pod.metadata.namespace)]
    pods = newest_first(pods, args.latest, args.last)
    if print_ids_or_document(ctx, pods, api_pb2.ListPodSandboxResponse(items=pods)):
        return 0
    now = time.time()
    rows = [[truncated(ctx, pod.id), output.created_ago(pod.created_at, now),
             POD_STATE_NAMES.get(pod.state, "Unknown"), pod.metadata.name, pod.metadata.namespace,
             str(pod.metadata.attempt), pod.runtime_handler or "(default)"] for pod in pods]
    headers = ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
    ctx.write(output.format_table(headers, rows))
    return 0


def cmd_inspectp(ctx: Context) -> int:
    def inspect(pod_id: str) -> None:
        response = ctx.client.pod_sandbox_status(pod_id, verbose=True)
        ctx.write(output.render_status_info(response.status, response.info, ctx.args.output))

    return for_each(ctx, ctx.args.ids, inspect)


def cmd_stopp(ctx: Context) -> int:
    def stop(pod_id: str) -> None:
        ctx.client.stop_pod_sandbox(pod_id)
        ctx.print(f"Stopped sandbox {pod_id}")

    return for_each(ctx, ctx.args.ids, stop)


def cmd_rmp(ctx: Context) -> int:
    args = ctx.args
    ids = [pod.id for pod in ctx.client.list_pod_sandbox()] if args.all else list(args.ids)
    if not ids and not args.all:
        raise CommandError("rmp needs POD-ID arguments or --all")

    def remove(pod_id: str) -> None:
        if args.force:
            ctx.client.stop_pod_sandbox(pod_id)
        ctx.client.remove_pod_sandbox(pod_id)
        ctx.print(f"Removed sandbox {pod_id}")

    return for_each(ctx, ids, remove)


# -- containers ---------------------------------------------------------------------------------------------


def ensure_image(ctx: Context, image: str, sandbox_config: api_pb2.PodSandboxConfig) -> None:
    """Pull `image` unless the runtime already has it."""
    if ctx.client.image_status(image).HasField("image"):
        return
    ctx.client.pull_image(image, auth=build_auth(ctx.args), sandbox_config=sandbox_config)


def cmd_create(ctx: Context) -> int:
    args = ctx.args
    config = load_container_config(args.container_config, ctx.warn)
    sandbox_config = load_pod_config(args.pod_config, ctx.warn)
    if args.with_pull:
        ensure_image(ctx, config.image.image, sandbox_config)
    ctx.print(ctx.client.create_container(args.pod_id, config, sandbox_config))
    return 0


def cmd_run(ctx: Context) -> int:
    args = ctx.args
    config = load_container_config(args.container_config, ctx.warn)
    sandbox_config = load_pod_config(args.pod_config, ctx.warn)
    if not args.no_pull:
        ensure_image(ctx, config.image.image, sandbox_config)
    pod_id = ctx.client.run_pod_sandbox(sandbox_config, args.runtime or "")
    container_id = ctx.client.create_container(pod_id, config, sandbox_config)
    ctx.client.start_container(container_id)
    ctx.print(container_id)
    return 0


def cmd_start(ctx: Context) -> int:
    def start(container_id: str) -> None:
        ctx.client.start_container(container_id)
        ctx.print(container_id)

    return for_each(ctx, ctx.args.ids, start)


def container_filter(args: argparse.Namespace) -> api_pb2.ContainerFilter:
    container_filter = api_pb2.ContainerFilter(id=args.id or "", pod_sandbox_id=args.pod or "",
                                               label_selector=parse_labels(args.label))
    if args.state:
        state = CONTAINER_STATES.get(args.state.lower())
        if state is None:
            raise CommandError(f"invalid container state {args.state!r}: expected one of "
                             f"{', '.join(CONTAINER_STATES)}")
        container_filter.state.state = state
    elif not args.all:
        container_filter.state.state = api_pb2.CONTAINER_RUNNING
    return container_filter


def image_matches(wanted: str | None, container: api_pb2.Container) -> bool:
    """`--image` matches the image as given at creation, its resolved ref or id, or a short name of it."""
    if not wanted:
        return True
    candidates = {container.image.image, container.image.user_specified_image, container.image_ref,
                  container.image_id}
    if wanted in candidates:
        return True
    for candidate in filter(None, candidates):
        if candidate.startswith(wanted + "@") or candidate.endswith("/" + wanted) \
                or candidate.endswith("/" + wanted + ":latest") or candidate == wanted + ":latest":
            return True
        if candidate.removeprefix("sha256:").startswith(wanted.removeprefix("sha256:")) and len(wanted) >= 4:
            return True
    return False


def cmd_ps(ctx: Context) -> int:
    args = ctx.args
    containers = [container for container in ctx.client.list_containers(container_filter(args))
                  if matches_pattern(args.name, container.metadata.name)
                  and matches_pattern(args.namespace, container.labels.get(POD_NAMESPACE_LABEL, ""))
                  and image_matches(args.image, container)]
    containers = newest_first(containers, args.latest, args.last)
    if print_ids_or_document(ctx, containers, api_pb2.ListContainersResponse(containers=containers)):
        return 0
    now = time.time()
    rows = [[truncated(ctx, container.id), display_image(ctx, container.image.image),
             output.created_ago(container.created_at, now),
             CONTAINER_STATE_NAMES.get(container.state, "Unknown"), container.metadata.name,
             str(container.metadata.attempt), truncated(ctx, container.pod_sandbox_id),
             container.labels.get(POD_NAME_LABEL, "unknown")] for container in containers]
    headers = ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"]
    ctx.write(output.format_table(headers, rows))
    return 0


def display_image(ctx: Context, image: str) -> str:
    """Image ids are shortened like container ids; names are shown as they are."""
    if image.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{64}", image):
        return truncated(ctx, image, "sha256:")
    return image


def cmd_inspect(ctx: Context) -> int:
    def inspect(container_id: str) -> None:
        response = ctx.client.container_status(container_id, verbose=True)
        ctx.write(output.render_status_info(response.status, response.info, ctx.args.output))

    return for_each(ctx, ctx.args.ids, inspect)


def cmd_stop(ctx: Context) -> int:
    def stop(container_id: str) -> None:
        ctx.client.stop_container(container_id, ctx.args.stop_timeout)
        ctx.print(container_id)

    return for_each(ctx, ctx.args.ids, stop)


def cmd_rm(ctx: Context) -> int:
    args = ctx.args
    ids = [container.id for container in ctx.client.list_containers()] if args.all else list(args.ids)
    if not ids and not args.all:
        raise CommandError("rm needs CONTAINER-ID arguments or --all")

    def remove(container_id: str) -> None:
        if args.force:
            ctx.client.stop_container(container_id, 0)
        ctx.client.remove_container(container_id)
        ctx.print(container_id)

    return for_each(ctx, ids, remove)


def cmd_exec(ctx: Context) -> int:
    args = ctx.args
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CommandError("exec needs a COMMAND after the CONTAINER-ID")
    if (args.interactive or args.tty) and not args.sync:
        if interactive_exec is None:
            ctx.stderr.write("exec -it is not supported yet\n")
            return 1
        request = api_pb2.ExecRequest(container_id=args.container, cmd=command, tty=args.tty,
                                      stdin=args.interactive, stdout=True, stderr=not args.tty)
        return interactive_exec(ctx.client, request)
    # Without a terminal or stdin the synchronous call gives the same result as a stream.
    response = ctx.client.exec_sync(args.container, command, args.exec_timeout)
    if response.stdout:
        ctx.write_bytes(response.stdout)
    if response.stderr:
        ctx.write_bytes(response.stderr, to_stderr=True)
    return response.exit_code


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
            prefix = f"{line.timestamp} ".encode() if args.timestamps and line.timestamp else b""
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


def cmd_stats(ctx: Context) -> int:
    args = ctx.args
    stats_filter = api_pb2.ContainerStatsFilter(id=args.container or args.id or "", pod_sandbox_id=args.pod or "",
                                                label_selector=parse_labels(args.label))
    stats = ctx.client.list_container_stats(stats_filter)
    if not args.all:
        running = {container.id for container in ctx.client.list_containers(
            api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)))}
        stats = [stat for stat in stats if stat.attributes.id in running]
    if args.output != "table":
        ctx.write(output.render_message(api_pb2.ListContainerStatsResponse(stats=stats), args.output))
        return 0
    rows = [[truncated(ctx, stat.attributes.id), stat.attributes.metadata.name, cpu_percent(stat.cpu),
             output.human_size(stat.memory.working_set_bytes.value, 4),
             output.human_size(stat.writable_layer.used_bytes.value, 4),
             str(stat.writable_layer.inodes_used.value)] for stat in stats]
    ctx.write(output.format_table(["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], rows))
    return 0


def cpu_percent(cpu: api_pb2.CpuUsage) -> str:
    """usage_nano_cores as a percentage of one core (the runtime samples it; no second request needed)."""
    return f"{cpu.usage_nano_cores.value / 1e7:.2f}"


def cmd_statsp(ctx: Context) -> int:
    args = ctx.args
    stats_filter = api_pb2.PodSandboxStatsFilter(id=args.pod_id or args.id or "",
                                                 label_selector=parse_labels(args.label))
    stats = ctx.client.list_pod_sandbox_stats(stats_filter)
    if args.output != "table":
        ctx.write(output.render_message(api_pb2.ListPodSandboxStatsResponse(stats=stats), args.output))
        return 0
    rows = [[stat.attributes.metadata.name, truncated(ctx, stat.attributes.id), cpu_percent(stat.linux.cpu),
             output.human_size(stat.linux.memory.working_set_bytes.value, 4)] for stat in stats]
    ctx.write(output.format_table(["POD", "POD ID", "CPU %", "MEM"], rows))
    return 0


def cmd_update(ctx: Context) -> int:
    args = ctx.args
    resources = api_pb2.LinuxContainerResources(
        cpu_shares=args.cpu_shares or 0, cpu_quota=args.cpu_quota or 0, cpu_period=args.cpu_period or 0,
        cpuset_cpus=args.cpuset_cpus or "", cpuset_mems=args.cpuset_mems or "",
        memory_limit_in_bytes=args.memory or 0)

    def update(container_id: str) -> None:
        ctx.client.update_container_resources(container_id, resources)
        ctx.print(container_id)

    return for_each(ctx, args.ids, update)


# -- command line -------------------------------------------------------------------------------------------


def add_output_flag(parser: argparse.ArgumentParser, choices: Sequence[str], default: str | None) -> None:
    parser.add_argument("-o", "--output", choices=choices, default=default,
                        help=f"output format ({', '.join(choices)}; default {default or 'text'})")


def add_auth_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--creds", metavar="USERNAME[:PASSWORD]", help="registry credentials")
    parser.add_argument("--auth", metavar="AUTH", help="base64 encoded USERNAME[:PASSWORD]")
    parser.add_argument("--username", "-u", help="registry user name (with --password)")
    parser.add_argument("--password", help="registry password (with --username)")


def add_list_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", help="filter by id (prefix accepted by most runtimes)")
    parser.add_argument("--name", help="filter by name (regular expression)")
    parser.add_argument("--label", action="append", metavar="KEY=VALUE", help="filter by label (repeatable)")
    parser.add_argument("-s", "--state", help="filter by state")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only ids")
    parser.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    parser.add_argument("-l", "--latest", action="store_true", help="show only the most recently created")
    parser.add_argument("-n", "--last", type=int, default=0, help="show the N most recently created")
    add_output_flag(parser, output.OUTPUT_FORMATS, "table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cripy ctl", description="A CRI v1 client with crictl's verbs.")
    parser.add_argument("-r", "--runtime-endpoint",
                        default=os.environ.get("CONTAINER_RUNTIME_ENDPOINT") or DEFAULT_ENDPOINT,
                        help=f"CRI runtime endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument("-i", "--image-endpoint", default=os.environ.get("IMAGE_SERVICE_ENDPOINT", ""),
                        help="CRI image endpoint (default: the runtime endpoint)")
    parser.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="per-call deadline in seconds, 0 for none (pulls: see pull --pull-timeout)")
    parser.add_argument("-D", "--debug", action="store_true", help="log requests and responses to stderr")
    parser.add_argument("--version", action="version", version=f"cripy ctl {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def verb(name: str, handler: Callable[[Context], int], help: str,
             aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=help, aliases=list(aliases))
        sub.set_defaults(handler=handler)
        return sub

    sub = verb("version", cmd_version, "show the runtime's name and versions")
    add_output_flag(sub, ("json", "yaml"), None)
    sub = verb("info", cmd_info, "show the runtime's status and information")
    add_output_flag(sub, ("json", "yaml"), "json")

    sub = verb("pull", cmd_pull, "pull an image")
    sub.add_argument("image")
    add_auth_flags(sub)
    sub.add_argument("-p", "--pod-config", help="pod config file (JSON or YAML) passed as sandbox_config")
    sub.add_argument("-a", "--annotation", action="append", metavar="KEY=VALUE", help="image annotation")
    sub.add_argument("--pull-timeout", type=float, default=0,
                     help=f"deadline for the pull in seconds (default {DEFAULT_PULL_TIMEOUT:.0f})")
    sub = verb("images", cmd_images, "list images", aliases=["image", "img"])
    sub.add_argument("repo", nargs="?", help="only images matching this reference")
    sub.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    sub.add_argument("--digests", action="store_true", help="show digests")
    sub.add_argument("--no-trunc", action="store_true", help="do not shorten ids and digests")
    add_output_flag(sub, output.OUTPUT_FORMATS, "table")
    sub = verb("inspecti", cmd_inspecti, "show the status of images")
    sub.add_argument("images", nargs="+", metavar="IMAGE")
    add_output_flag(sub, ("json", "yaml"), "json")
    sub = verb("rmi", cmd_rmi, "remove images")
    sub.add_argument("images", nargs="*", metavar="IMAGE")
    sub.add_argument("-a", "--all", action="store_true", help="remove all images")
    sub.add_argument("-q", "--prune", action="store_true", help="remove images no container uses")
    sub = verb("imagefsinfo", cmd_imagefsinfo, "show image filesystem usage")
    add_output_flag(sub, ("json", "yaml"), "json")

    sub = verb("runp", cmd_runp, "run a pod sandbox from a config file")
    sub.add_argument("config", metavar="POD-CONFIG")
    sub.add_argument("-r", "--runtime", help="runtime handler (RuntimeClass)")
    sub = verb("pods", cmd_pods, "list pod sandboxes")
    add_list_flags(sub)
    sub.add_argument("--namespace", help="filter by namespace (regular expression)")
    sub = verb("inspectp", cmd_inspectp, "show the status of pod sandboxes")
    sub.add_argument("ids", nargs="+", metavar="POD-ID")
    add_output_flag(sub, ("json", "yaml"), "json")
    sub = verb("stopp", cmd_stopp, "stop pod sandboxes")
    sub.add_argument("ids", nargs="+", metavar="POD-ID")
    sub = verb("rmp", cmd_rmp, "remove pod sandboxes")
    sub.add_argument("ids", nargs="*", metavar="POD-ID")
    sub.add_argument("-f", "--force", action="store_true", help="stop the pod sandboxes first")
    sub.add_argument("-a", "--all", action="store_true", help="remove all pod sandboxes")

    sub = verb("create", cmd_create, "create a container in a pod sandbox")
    sub.add_argument("pod_id", metavar="POD-ID")
    sub.add_argument("container_config", metavar="CONTAINER-CONFIG")
    sub.add_argument("pod_config", metavar="POD-CONFIG")
    sub.add_argument("--with-pull", action="store_true", help="pull the image first when it is missing")
    add_auth_flags(sub)
    sub = verb("run", cmd_run, "run a pod sandbox and a container in it")
    sub.add_argument("container_config", metavar="CONTAINER-CONFIG")
    sub.add_argument("pod_config", metavar="POD-CONFIG")
    sub.add_argument("-r", "--runtime", help="runtime handler (RuntimeClass)")
    sub.add_argument("--no-pull", action="store_true", help="do not pull a missing image")
    add_auth_flags(sub)
    sub = verb("start", cmd_start, "start created containers")
    sub.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    sub = verb("ps", cmd_ps, "list containers")
    add_list_flags(sub)
    sub.add_argument("-a", "--all", action="store_true", help="show all containers (default: running)")
    sub.add_argument("-p", "--pod", help="filter by pod sandbox id")
    sub.add_argument("--image", help="filter by image")
    sub.add_argument("--namespace", help="filter by pod namespace (regular expression)")
    sub = verb("inspect", cmd_inspect, "show the status of containers")
    sub.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    add_output_flag(sub, ("json", "yaml"), "json")
    sub = verb("stop", cmd_stop, "stop running containers")
    sub.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    sub.add_argument("-t", "--timeout", dest="stop_timeout", type=int, default=0,
                     help="seconds before the container is killed")
    sub = verb("rm", cmd_rm, "remove containers")
    sub.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    sub.add_argument("-f", "--force", action="store_true", help="stop running containers first")
    sub.add_argument("-a", "--all", action="store_true", help="remove all containers")
    sub = verb("logs", cmd_logs, "print a container's logs")
    sub.add_argument("container", metavar="CONTAINER-ID")
    sub.add_argument("-f", "--follow", action="store_true", help="follow the log until the container exits")
    sub.add_argument("--tail", type=int, default=-1, help="only the last N lines (default all)")
    sub.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    sub = verb("exec", cmd_exec, "run a command in a running container")
    sub.add_argument("-s", "--sync", action="store_true", help="run synchronously (ExecSync)")
    sub.add_argument("--timeout", dest="exec_timeout", type=int, default=0,
                     help="seconds the command may run (0 = no limit)")
    sub.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    sub.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    sub.add_argument("container", metavar="CONTAINER-ID")
    sub.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    sub = verb("attach", cmd_attach, "attach to a running container")
    sub.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the container")
    sub.add_argument("-t", "--tty", action="store_true", help="stdin is a terminal")
    sub.add_argument("container", metavar="CONTAINER-ID")
    sub = verb("port-forward", cmd_port_forward, "forward local ports to a pod sandbox")
    sub.add_argument("pod_id", metavar="POD-ID")
    sub.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")
    sub = verb("stats", cmd_stats, "show container resource usage")
    sub.add_argument("container", nargs="?", metavar="CONTAINER-ID")
    sub.add_argument("-a", "--all", action="store_true", help="all containers (default: running)")
    sub.add_argument("--id", help="filter by container id")
    sub.add_argument("-p", "--pod", help="filter by pod sandbox id")
    sub.add_argument("--label", action="append", metavar="KEY=VALUE", help="filter by label (repeatable)")
    sub.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    add_output_flag(sub, output.OUTPUT_FORMATS, "table")
    sub = verb("statsp", cmd_statsp, "show pod sandbox resource usage")
    sub.add_argument("pod_id", nargs="?", metavar="POD-ID")
    sub.add_argument("--id", help="filter by pod sandbox id")
    sub.add_argument("--label", action="append", metavar="KEY=VALUE", help="filter by label (repeatable)")
    sub.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    add_output_flag(sub, output.OUTPUT_FORMATS, "table")
    sub = verb("update", cmd_update, "update the resources of running containers")
    sub.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    sub.add_argument("--cpu-shares", type=int, help="CPU shares (relative weight)")
    sub.add_argument("--cpu-quota", type=int, help="CPU CFS quota in microseconds")
    sub.add_argument("--cpu-period", type=int, help="CPU CFS period in microseconds")
    sub.add_argument("--cpuset-cpus", help="CPUs the container may use (0-3, 0,1)")
    sub.add_argument("--cpuset-mems", help="memory nodes the container may use")
    sub.add_argument("--memory", type=parse_bytes, help="memory limit in bytes (suffixes k, m, g)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    ctx = Context(args=args, stdout=sys.stdout, stderr=sys.stderr)
    try:
        return args.handler(ctx)
    except CRIError as error:
        ctx.error(str(error))
    except (CommandError, ConfigFileError) as error:
        ctx.error(str(error))
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
