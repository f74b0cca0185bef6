"""Pod sandbox verbs: runp, pods, inspectp, stopp and rmp."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping

from cri_api.v1 import api_pb2

from cripy.ctl import documents, output
from cripy.ctl.configfile import load_pod_config
from cripy.ctl.context import (
    CommandError,
    Context,
    VerbAdder,
    add_list_flags,
    add_selection_flags,
    add_status_flags,
    compile_pattern,
    for_each,
    newest_first,
    parse_labels,
    truncated,
)

POD_STATES = {"ready": api_pb2.SANDBOX_READY, "notready": api_pb2.SANDBOX_NOTREADY}
POD_STATE_NAMES = {api_pb2.SANDBOX_READY: "Ready", api_pb2.SANDBOX_NOTREADY: "NotReady"}


def cmd_runp(ctx: Context) -> int:
    config = load_pod_config(ctx.args.config, ctx.warn)
    ctx.print(ctx.client.run_pod_sandbox(config, ctx.args.runtime or ""))
    return 0


def list_pods(ctx: Context, args: argparse.Namespace) -> list[api_pb2.PodSandbox]:
    """The pods the list flags select, newest first (the runtime filters by id, state and labels)."""
    pod_filter = api_pb2.PodSandboxFilter(id=getattr(args, "id", None) or "",
                                          label_selector=parse_labels(args.label))
    if args.state:
        state = POD_STATES.get(args.state.lower())
        if state is None:
            raise CommandError("--state should be ready or notready")
        pod_filter.state.state = state
    name, namespace = compile_pattern(args.name), compile_pattern(args.namespace)
    pods = [pod for pod in ctx.client.list_pod_sandbox(pod_filter)
            if (name is None or name.search(pod.metadata.name))
            and (namespace is None or namespace.search(pod.metadata.namespace))]
    return newest_first(pods, args.latest, args.last)


def runtime_handler(pod: api_pb2.PodSandbox) -> str:
    return pod.runtime_handler or "(default)"


def cmd_pods(ctx: Context) -> int:
    args = ctx.args
    pods = list_pods(ctx, args)
    if args.output in ("json", "yaml"):
        ctx.write(documents.proto_text(api_pb2.ListPodSandboxResponse(items=pods), args.output))
        return 0
    if args.quiet:
        for pod in pods:
            ctx.print(pod.id)
        return 0
    if args.verbose:
        for pod in pods:
            print_pod_details(ctx, pod)
        return 0
    now = time.time()
    rows = [[truncated(ctx, pod.id), output.created_ago(pod.created_at, now),
             POD_STATE_NAMES.get(pod.state, "Unknown"), pod.metadata.name, pod.metadata.namespace,
             str(pod.metadata.attempt), runtime_handler(pod)] for pod in pods]
    headers = ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
    ctx.write(output.format_table(headers, rows))
    return 0


def print_pod_details(ctx: Context, pod: api_pb2.PodSandbox) -> None:
    ctx.print(f"ID: {pod.id}")
    if pod.HasField("metadata"):
        print_metadata(ctx, pod.metadata, always_attempt=False)
    ctx.print(f"Status: {POD_STATE_NAMES.get(pod.state, 'Unknown')}")
    ctx.print(f"Created: {documents.go_time_string(pod.created_at)}")
    print_labels(ctx, "Labels", pod.labels)
    print_labels(ctx, "Annotations", pod.annotations)
    ctx.print(f"Runtime: {runtime_handler(pod)}")
    ctx.print()


def print_metadata(ctx: Context, metadata: api_pb2.PodSandboxMetadata, *, always_attempt: bool) -> None:
    if metadata.name:
        ctx.print(f"Name: {metadata.name}")
    if metadata.uid:
        ctx.print(f"UID: {metadata.uid}")
    if metadata.namespace:
        ctx.print(f"Namespace: {metadata.namespace}")
    if always_attempt or metadata.attempt:
        ctx.print(f"Attempt: {metadata.attempt}")


def print_labels(ctx: Context, title: str, labels: Mapping[str, str]) -> None:
    """A `Labels:` block, one tab-indented `key -> value` per entry; nothing for an empty map (Go's nil)."""
    if not labels:
        return
    ctx.print(f"{title}:")
    for key, value in documents.sorted_pairs(labels):
        ctx.print(f"\t{key} -> {value}")


def cmd_inspectp(ctx: Context) -> int:
    args = ctx.args
    verbose = not args.quiet
    ids = list(args.ids) or [pod.id for pod in list_pods(ctx, args)]
    if not ids:
        raise CommandError("no IDs given and no pod matches the filters")
    statuses = []
    for pod_id in ids:
        response = ctx.client.pod_sandbox_status(pod_id, verbose=verbose)
        if args.output == "table":
            print_pod_status_table(ctx, response, verbose)
            continue
        status = documents.status_fields(
            response.status, {"createdAt": documents.rfc3339_nano(response.status.created_at)})
        statuses.append(documents.status_document(status, response.info))
    if statuses:
        ctx.write(documents.status_documents_text(statuses, args.output))
    return 0


def print_pod_status_table(ctx: Context, response: api_pb2.PodSandboxStatusResponse, verbose: bool) -> None:
    status = response.status
    ctx.print(f"ID: {status.id}")
    if status.HasField("metadata"):
        print_metadata(ctx, status.metadata, always_attempt=True)
    ctx.print(f"Status: {api_pb2.PodSandboxState.Name(status.state)}")
    ctx.print(f"Created: {documents.go_time_string(status.created_at)}")
    if status.HasField("network"):
        ctx.print(f"IP Addresses: {status.network.ip}")
        for ip in status.network.additional_ips:
            ctx.print(f"Additional IP: {ip.ip}")
    print_labels(ctx, "Labels", status.labels)
    print_labels(ctx, "Annotations", status.annotations)
    if verbose:
        ctx.print(f"Info: {documents.go_map_text(response.info)}")


def stop_pod(ctx: Context, pod_id: str) -> None:
    ctx.client.stop_pod_sandbox(pod_id)
    ctx.print(f"Stopped sandbox {pod_id}")


def cmd_stopp(ctx: Context) -> int:
    return for_each(ctx, ctx.args.ids, lambda pod_id: stop_pod(ctx, pod_id))


def cmd_rmp(ctx: Context) -> int:
    args = ctx.args
    ids = [pod.id for pod in ctx.client.list_pod_sandbox()] if args.all else list(args.ids)
    if not ids:
        if args.all:
            ctx.info("No pods to remove")
            return 0
        raise CommandError("rmp needs POD-ID arguments or --all")

    def remove(pod_id: str) -> None:
        state = ctx.client.pod_sandbox_status(pod_id).status.state
        if state == api_pb2.SANDBOX_READY:
            if not args.force:
                raise CommandError(f"pod sandbox {pod_id!r} is running, please stop it first")
            stop_pod(ctx, pod_id)
        ctx.client.remove_pod_sandbox(pod_id)
        ctx.print(f"Removed sandbox {pod_id}")

    return for_each(ctx, ids, remove)


def register(verb: VerbAdder) -> None:
    sub = verb("runp", cmd_runp, "run a pod sandbox from a config file")
    sub.add_argument("config", metavar="POD-CONFIG")
    sub.add_argument("-r", "--runtime", help="runtime handler (RuntimeClass)")

    sub = verb("pods", cmd_pods, "list pod sandboxes")
    add_list_flags(sub, what="pod")

    sub = verb("inspectp", cmd_inspectp, "show the status of pod sandboxes (all matching the filters without IDs)")
    sub.add_argument("ids", nargs="*", metavar="POD-ID")
    add_status_flags(sub)
    add_selection_flags(sub, what="pod")

    sub = verb("stopp", cmd_stopp, "stop pod sandboxes")
    sub.add_argument("ids", nargs="+", metavar="POD-ID")

    sub = verb("rmp", cmd_rmp, "remove pod sandboxes")
    sub.add_argument("ids", nargs="*", metavar="POD-ID")
    sub.add_argument("-f", "--force", action="store_true", help="stop ready pod sandboxes first")
    sub.add_argument("-a", "--all", action="store_true", help="remove all pod sandboxes")
