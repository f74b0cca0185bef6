"""Container verbs: create, run, start, ps, inspect, stop, rm and update."""

from __future__ import annotations

import argparse
import glob
import os
import re
import time

from cri_api.v1 import api_pb2

from cripy.ctl import documents, output
from cripy.ctl.client import CRIClient
from cripy.ctl.configfile import load_container_config, load_pod_config
from cripy.ctl.context import (
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    CommandError,
    Context,
    VerbAdder,
    add_auth_flags,
    add_list_flags,
    add_selection_flags,
    add_status_flags,
    build_auth,
    compile_pattern,
    for_each,
    label_or_unknown,
    newest_first,
    parse_labels,
    truncated,
)
from cripy.ctl.verbs.pods import print_labels

CONTAINER_STATES = {
    "created": api_pb2.CONTAINER_CREATED,
    "running": api_pb2.CONTAINER_RUNNING,
    "exited": api_pb2.CONTAINER_EXITED,
    "unknown": api_pb2.CONTAINER_UNKNOWN,
}
CONTAINER_STATE_NAMES = {value: name.capitalize() for name, value in CONTAINER_STATES.items()}
# What crictl shortens in the IMAGE column: a digest (`algorithm:hex`) is an image id, not a name.
DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")


# -- create, run, start -------------------------------------------------------------------------------------


def pull_for(ctx: Context, config: api_pb2.ContainerConfig, sandbox_config: api_pb2.PodSandboxConfig | None) -> None:
    """Pull the container's image and the images it mounts, as crictl's --with-pull does."""
    images = [config.image.image] + [mount.image.image for mount in config.mounts if mount.image.image]
    for image in images:
        ctx.client.pull_image(image, auth=build_auth(ctx.args), sandbox_config=sandbox_config,
                              annotations=dict(config.image.annotations))


def load_container(ctx: Context) -> tuple[api_pb2.ContainerConfig, api_pb2.PodSandboxConfig]:
    args = ctx.args
    if args.no_pull and args.with_pull:
        raise CommandError("conflict: no-pull and with-pull are both set")
    config = load_container_config(args.container_config, ctx.warn)
    if not config.image.user_specified_image:
        config.image.user_specified_image = config.image.image
    return config, load_pod_config(args.pod_config, ctx.warn)


def cmd_create(ctx: Context) -> int:
    config, sandbox_config = load_container(ctx)
    if ctx.args.with_pull:
        pull_for(ctx, config, sandbox_config)
    ctx.print(ctx.client.create_container(ctx.args.pod_id, config, sandbox_config))
    return 0


def cmd_run(ctx: Context) -> int:
    config, sandbox_config = load_container(ctx)
    pod_id = ctx.client.run_pod_sandbox(sandbox_config, ctx.args.runtime or "")
    if not ctx.args.no_pull:
        pull_for(ctx, config, sandbox_config)
    container_id = ctx.client.create_container(pod_id, config, sandbox_config)
    ctx.client.start_container(container_id)
    ctx.print(container_id)
    return 0


def cmd_start(ctx: Context) -> int:
    def start(container_id: str) -> None:
        ctx.client.start_container(container_id)
        ctx.print(container_id)

    return for_each(ctx, ctx.args.ids, start)


# -- ps, inspect --------------------------------------------------------------------------------------------


def list_containers(ctx: Context, args: argparse.Namespace) -> list[api_pb2.Container]:
    """The containers the list flags select, newest first; running ones unless --all, --state, -l or -n."""
    container_filter = api_pb2.ContainerFilter(id=getattr(args, "id", None) or "", pod_sandbox_id=args.pod or "",
                                               label_selector=parse_labels(args.label))
    if args.state:
        state = CONTAINER_STATES.get(args.state.lower())
        if state is None:
            raise CommandError("--state should be one of created, running, exited or unknown")
        container_filter.state.state = state
    elif not args.all:
        container_filter.state.state = api_pb2.CONTAINER_RUNNING
    if args.latest or args.last > 0:
        container_filter.ClearField("state")
    name, namespace = compile_pattern(args.name), compile_pattern(args.namespace)
    image_id = image_id_of(ctx.client, args.image) if args.image else None
    if args.image and image_id is None:
        return []
    containers = []
    for container in ctx.client.list_containers(container_filter):
        if image_id is not None and image_id_of(ctx.client, container.image.image) != image_id:
            continue
        pod_namespace = label_or_unknown(container.labels, POD_NAMESPACE_LABEL)
        if (name is None or name.search(container.metadata.name)) and \
                (namespace is None or namespace.search(pod_namespace)):
            containers.append(container)
    return newest_first(containers, args.latest, args.last)


def image_id_of(client: CRIClient, image: str) -> str | None:
    """The id of the image `image` names (crictl compares images by the ids the runtime resolves them to)."""
    status = client.image_status(image)
    return status.image.id if status.HasField("image") else None


def cmd_ps(ctx: Context) -> int:
    args = ctx.args
    containers = list_containers(ctx, args)
    if args.output in ("json", "yaml"):
        ctx.write(documents.proto_text(api_pb2.ListContainersResponse(containers=containers), args.output))
        return 0
    if args.quiet:
        for container in containers:
            ctx.print(container.id)
        return 0
    now = time.time()
    if args.verbose:
        for container in containers:
            print_container_details(ctx, container, now)
        return 0
    rows = [[truncated(ctx, container.id), display_image(ctx, container.image.image),
             output.created_ago(container.created_at, now),
             CONTAINER_STATE_NAMES.get(container.state, "Unknown"), container.metadata.name,
             str(container.metadata.attempt), truncated(ctx, container.pod_sandbox_id),
             label_or_unknown(container.labels, POD_NAME_LABEL),
             label_or_unknown(container.labels, POD_NAMESPACE_LABEL)] for container in containers]
    headers = ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE"]
    ctx.write(output.format_table(headers, rows))
    return 0


def display_image(ctx: Context, image: str) -> str:
    """An image id (a digest) is shortened like container ids; with -r, the image's first tag is shown."""
    if not ctx.args.no_trunc and DIGEST_RE.fullmatch(image):
        image = output.truncate_id(image, image.split(":", 1)[0] + ":")
    if ctx.args.resolve_image_path:
        status = ctx.client.image_status(image)
        if status.image.repo_tags:
            return status.image.repo_tags[0]
    return image


def print_container_details(ctx: Context, container: api_pb2.Container, now: float) -> None:
    ctx.print(f"ID: {container.id}")
    ctx.print(f"PodID: {container.pod_sandbox_id}")
    ctx.print(f"Namespace: {label_or_unknown(container.labels, POD_NAMESPACE_LABEL)}")
    if container.HasField("metadata"):
        if container.metadata.name:
            ctx.print(f"Name: {container.metadata.name}")
        ctx.print(f"Attempt: {container.metadata.attempt}")
    ctx.print(f"State: {CONTAINER_STATE_NAMES.get(container.state, 'Unknown')}")
    if container.HasField("image"):
        ctx.print(f"Image: {container.image.image}")
    ctx.print(f"Created: {output.created_ago(container.created_at, now)}")
    print_labels(ctx, "Labels", container.labels)
    print_labels(ctx, "Annotations", container.annotations)
    ctx.print()


def container_status_document(status: api_pb2.ContainerStatus) -> dict[str, object]:
    """crictl's container status: readable timestamps, started/finished only once they happened."""
    started = status.started_at if status.state != api_pb2.CONTAINER_CREATED else None
    finished = None
    if status.state == api_pb2.CONTAINER_EXITED or \
            (status.state == api_pb2.CONTAINER_UNKNOWN and status.finished_at > 0):
        finished = status.finished_at
    return documents.status_fields(status, {
        "createdAt": documents.rfc3339_nano(status.created_at),
        "startedAt": documents.rfc3339_nano(started) if started is not None else documents.GO_ZERO_TIME,
        "finishedAt": documents.rfc3339_nano(finished) if finished is not None else documents.GO_ZERO_TIME,
    })


def cmd_inspect(ctx: Context) -> int:
    args = ctx.args
    verbose = not args.quiet
    ids = list(args.ids) or [container.id for container in list_containers(ctx, args)]
    if not ids:
        raise CommandError("no IDs given and no container matches the filters")
    statuses = []
    for container_id in ids:
        response = ctx.client.container_status(container_id, verbose=verbose)
        if args.output == "table":
            print_container_status_table(ctx, response, verbose)
            continue
        statuses.append(documents.status_document(container_status_document(response.status), response.info))
    if statuses:
        ctx.write(documents.status_documents_text(statuses, args.output))
    return 0


def print_container_status_table(ctx: Context, response: api_pb2.ContainerStatusResponse, verbose: bool) -> None:
    status, now = response.status, time.time()
    ctx.print(f"ID: {status.id}")
    if status.HasField("metadata"):
        if status.metadata.name:
            ctx.print(f"Name: {status.metadata.name}")
        if status.metadata.attempt:
            ctx.print(f"Attempt: {status.metadata.attempt}")
    ctx.print(f"State: {api_pb2.ContainerState.Name(status.state)}")
    ctx.print(f"Created: {output.created_ago(status.created_at, now)}")
    if status.state != api_pb2.CONTAINER_CREATED:
        ctx.print(f"Started: {output.created_ago(status.started_at, now)}")
    if status.state == api_pb2.CONTAINER_EXITED:
        if status.finished_at > 0:
            ctx.print(f"Finished: {output.created_ago(status.finished_at, now)}")
        ctx.print(f"Exit Code: {status.exit_code}")
    print_labels(ctx, "Labels", status.labels)
    print_labels(ctx, "Annotations", status.annotations)
    if verbose:
        ctx.print(f"Info: {documents.go_map_text(response.info)}")


# -- stop, rm, update ---------------------------------------------------------------------------------------


def stop_container(ctx: Context, container_id: str, timeout: int) -> None:
    ctx.client.stop_container(container_id, timeout)
    ctx.print(container_id)


def cmd_stop(ctx: Context) -> int:
    args = ctx.args
    if args.all and args.ids:
        raise CommandError("cannot specify CONTAINER-ID(s) when using --all")
    if args.all:
        running = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING))
        ids = [container.id for container in ctx.client.list_containers(running)]
        if not ids:
            ctx.print("No running containers found.")
            return 0
    elif not args.ids:
        raise CommandError("you must specify at least one CONTAINER-ID or use --all")
    else:
        ids = list(args.ids)
    return for_each(ctx, ids, lambda container_id: stop_container(ctx, container_id, args.stop_timeout))


def cmd_rm(ctx: Context) -> int:
    args = ctx.args
    ids = [container.id for container in ctx.client.list_containers()] if args.all else list(args.ids)
    if not ids:
        if args.all:
            return 0
        raise CommandError("rm needs CONTAINER-ID arguments or --all")

    def remove(container_id: str) -> None:
        status = ctx.client.container_status(container_id).status
        if status.state == api_pb2.CONTAINER_RUNNING:
            if not args.force:
                raise CommandError(f"container {container_id!r} is running, please stop it first")
            stop_container(ctx, container_id, 0)
        ctx.client.remove_container(container_id)
        ctx.print(container_id)
        if not args.keep_logs and status.log_path:
            remove_log_files(ctx, container_id, status.log_path)

    return for_each(ctx, ids, remove)


def remove_log_files(ctx: Context, container_id: str, log_path: str) -> None:
    """The container's log and its rotations (`<path>.*`), as crictl rm does unless --keep-logs."""
    for path in [*glob.glob(glob.escape(log_path) + ".*"), log_path]:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            ctx.error(f"removing log file {path} for container {container_id!r} failed: {error.strerror}")


def parse_bytes(value: str) -> int:
    """A byte count like crictl/docker accept it: 1048576, 512k, 256m, 1g (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", value, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {value!r}: expected bytes or a k/m/g/t suffix")
    exponent = " kmgt".index(match.group(2).lower() or " ")
    return int(match.group(1)) * 1024 ** exponent


def cmd_update(ctx: Context) -> int:
    args = ctx.args
    resources = api_pb2.LinuxContainerResources(
        cpu_shares=args.cpu_shares or 0, cpu_quota=args.cpu_quota or 0, cpu_period=args.cpu_period or 0,
        cpuset_cpus=args.cpuset_cpus or "", cpuset_mems=args.cpuset_mems or "",
        memory_limit_in_bytes=args.memory or 0, oom_score_adj=args.oom_score_adj or 0)

    def update(container_id: str) -> None:
        ctx.client.update_container_resources(container_id, resources)
        ctx.print(container_id)

    return for_each(ctx, args.ids, update)


# -- command line -------------------------------------------------------------------------------------------


def add_create_flags(sub: argparse.ArgumentParser, *, pull_default: str) -> None:
    sub.add_argument("--no-pull", action="store_true", help="do not pull the image" + pull_default)
    sub.add_argument("--with-pull", action="store_true", help="pull the image (and the images it mounts) first")
    add_auth_flags(sub)


def add_container_selection(sub: argparse.ArgumentParser) -> None:
    add_selection_flags(sub, what="container")
    sub.add_argument("-a", "--all", action="store_true", help="all containers (default: running)")
    sub.add_argument("-p", "--pod", help="filter by pod sandbox id")
    sub.add_argument("--image", help="filter by image (compared by the id the runtime resolves it to)")


def register(verb: VerbAdder) -> None:
    sub = verb("create", cmd_create, "create a container in a pod sandbox")
    sub.add_argument("pod_id", metavar="POD-ID")
    sub.add_argument("container_config", metavar="CONTAINER-CONFIG")
    sub.add_argument("pod_config", metavar="POD-CONFIG")
    add_create_flags(sub, pull_default=" (the default)")

    sub = verb("run", cmd_run, "run a pod sandbox and a container in it")
    sub.add_argument("container_config", metavar="CONTAINER-CONFIG")
    sub.add_argument("pod_config", metavar="POD-CONFIG")
    sub.add_argument("-r", "--runtime", help="runtime handler (RuntimeClass)")
    add_create_flags(sub, pull_default=" (default: pull)")

    sub = verb("start", cmd_start, "start created containers")
    sub.add_argument("ids", nargs="+", metavar="CONTAINER-ID")

    sub = verb("ps", cmd_ps, "list containers")
    add_list_flags(sub, what="container")
    sub.add_argument("-a", "--all", action="store_true", help="show all containers (default: running)")
    sub.add_argument("-p", "--pod", help="filter by pod sandbox id")
    sub.add_argument("--image", help="filter by image (compared by the id the runtime resolves it to)")
    sub.add_argument("-r", "--resolve-image-path", action="store_true", help="show image names, not ids")

    sub = verb("inspect", cmd_inspect, "show the status of containers (all matching the filters without IDs)")
    sub.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    add_status_flags(sub)
    add_container_selection(sub)

    sub = verb("stop", cmd_stop, "stop running containers")
    sub.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    sub.add_argument("-t", "--timeout", dest="stop_timeout", type=int, default=0,
                     help="seconds before the container is killed")
    sub.add_argument("-a", "--all", action="store_true", help="stop all running containers")

    sub = verb("rm", cmd_rm, "remove containers")
    sub.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    sub.add_argument("-f", "--force", action="store_true", help="stop running containers first")
    sub.add_argument("-k", "--keep-logs", action="store_true", help="keep the container's log files")
    sub.add_argument("-a", "--all", action="store_true", help="remove all containers")

    sub = verb("update", cmd_update, "update the resources of running containers")
    sub.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    sub.add_argument("--cpu-share", "--cpu-shares", dest="cpu_shares", type=int,
                     help="CPU shares (relative weight)")
    sub.add_argument("--cpu-quota", type=int, help="CPU CFS quota in microseconds")
    sub.add_argument("--cpu-period", type=int, help="CPU CFS period in microseconds")
    sub.add_argument("--cpuset-cpus", help="CPUs the container may use (0-3, 0,1)")
    sub.add_argument("--cpuset-mems", help="memory nodes the container may use")
    sub.add_argument("--memory", type=parse_bytes, help="memory limit in bytes (suffixes k, m, g)")
    sub.add_argument("--oom-score-adj", type=int, help="OOM killer score adjustment")
