"""Runtime verbs: version, info, runtime-config, events, and cripy's own `inflight`."""

from __future__ import annotations

import json
from typing import Any

from cri_api.v1 import api_pb2

from cripy.ctl import documents, output
from cripy.ctl.admin import AdminClient
from cripy.ctl.context import Context, VerbAdder, add_output_flag
from cripy.ctl.progress import short_digest


def cmd_version(ctx: Context) -> int:
    response = ctx.client.version()
    if ctx.args.output:
        ctx.write(documents.proto_text(response, ctx.args.output))
        return 0
    ctx.print(f"Version:  {response.version}")
    ctx.print(f"RuntimeName:  {response.runtime_name}")
    ctx.print(f"RuntimeVersion:  {response.runtime_version}")
    ctx.print(f"RuntimeApiVersion:  {response.runtime_api_version}")
    return 0


def cmd_info(ctx: Context) -> int:
    response = ctx.client.status(verbose=not ctx.args.quiet)
    extra: dict[str, Any] = {}
    # crictl passes these two through Go's encoding/json rather than protojson: snake_case, zero values left out.
    if response.runtime_handlers:
        extra["runtimeHandlers"] = [documents.go_struct_document(handler) for handler in response.runtime_handlers]
    if response.HasField("features"):
        extra["features"] = documents.go_struct_document(response.features)
    document = documents.status_document(documents.proto_document(response.status), response.info, extra)
    ctx.write(documents.status_documents_text([document], ctx.args.output))
    return 0


def cmd_runtime_config(ctx: Context) -> int:
    response = ctx.client.runtime_config()
    if response.HasField("linux"):
        driver = api_pb2.CgroupDriver.Name(response.linux.cgroup_driver)
        # crictl's table here has a minimum column width of 10.
        ctx.write(output.format_table(["cgroup driver:", driver], [], min_width=10))
    return 0


def cmd_events(ctx: Context) -> int:
    for event in ctx.client.container_events():
        ctx.write(documents.proto_text(event, ctx.args.output))
        ctx.stdout.flush()
    return 0


def cmd_inflight(ctx: Context) -> int:
    """The calls the runtime is serving now and the step each is in (cripy's admin service; not in crictl)."""
    with AdminClient(ctx.args.runtime_endpoint) as admin:
        calls = admin.inflight(timeout=ctx.args.timeout or None)
    if ctx.args.output == "json":
        ctx.print(json.dumps({"calls": calls}, indent=2))
        return 0
    rows = []
    for call in calls:
        steps = ", ".join(f"{step['name']}" + (f" [{short_detail(step['detail'])}]" if step["detail"] else "")
                          for step in call["steps"]) or "-"
        in_step = ", ".join(seconds_text(step["seconds"]) for step in call["steps"]) or "-"
        rows.append([str(call["id"]), call["method"], call["object"] or "-", seconds_text(call["seconds"]), steps,
                     in_step, str(call["joined"])])
    ctx.write(output.format_table(["ID", "METHOD", "OBJECT", "AGE", "STEP", "IN STEP", "JOINED"], rows))
    return 0


def seconds_text(seconds: float) -> str:
    """Exact enough to tell a slow step from a stuck one: 85ms, 12.3s, 4m07s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def short_detail(detail: str) -> str:
    """A layer digest as its first 12 hex digits; anything else as it is."""
    return short_digest(detail) if detail.startswith("sha256:") else detail


def register(verb: VerbAdder) -> None:
    sub = verb("version", cmd_version, "show the runtime's name and versions")
    add_output_flag(sub, ("json", "yaml"), None)
    sub = verb("info", cmd_info, "show the runtime's status and information")
    add_output_flag(sub, ("json", "yaml"), "json")
    sub.add_argument("-q", "--quiet", action="store_true", help="do not ask for the runtime's verbose info")
    verb("runtime-config", cmd_runtime_config, "show the runtime's configuration (cgroup driver)")
    sub = verb("events", cmd_events, "stream container events until interrupted", aliases=["event"])
    add_output_flag(sub, ("json", "yaml"), "json")
    sub = verb("inflight", cmd_inflight, "list the calls cripy is serving now: the step each is in and for how long")
    add_output_flag(sub, ("json", "table"), "table")
