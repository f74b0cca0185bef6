"""Output formatting for `cripy ctl`: crictl-like tables, JSON and YAML renderings of CRI messages.

Everything here is pure (returns strings); the verbs in main.py decide where the text goes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

OUTPUT_FORMATS = ("json", "yaml", "table")
TRUNCATED_ID_LENGTH = 13
# crictl uses a tabwriter with minwidth 20 and padding 3; keep the same look.
TABLE_MIN_WIDTH = 20
TABLE_PADDING = 3

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def message_to_dict(message: Message) -> dict[str, Any]:
    """A CRI message as crictl prints it: camelCase names, enum names, zero values included."""
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=False,
    )


def parse_info_map(info: Mapping[str, str]) -> dict[str, Any]:
    """The verbose `info` map of a status response; values holding JSON become structured."""
    parsed: dict[str, Any] = {}
    for key, value in info.items():
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)


def render_data(data: Any, fmt: str) -> str:
    """Render plain data as json or yaml (the only structured formats)."""
    if fmt == "yaml":
        return to_yaml(data)
    if fmt == "json":
        return to_json(data)
    raise ValueError(f"unsupported output format {fmt!r}: choose json or yaml")


def render_message(message: Message, fmt: str) -> str:
    return render_data(message_to_dict(message), fmt)


def render_status_info(status: Message | None, info: Mapping[str, str], fmt: str) -> str:
    """The `{"status": ..., "info": ...}` document of crictl's inspect verbs."""
    data: dict[str, Any] = {"status": message_to_dict(status) if status is not None else None}
    if info:
        data["info"] = parse_info_map(info)
    return render_data(data, fmt)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like crictl's tabwriter; the last column is not padded."""
    all_rows = [list(headers)] + [list(row) for row in rows]
    if not headers:
        return ""
    widths = [0] * len(headers)
    for row in all_rows:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(cell))
    widths = [max(TABLE_MIN_WIDTH, width + TABLE_PADDING) for width in widths]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def human_size(size: float, precision: int = 3) -> str:
    """Decimal size with `precision` significant digits (e.g. 1.46MB), like docker's units.HumanSize."""
    unit_index = 0
    while size >= 1000 and unit_index < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        unit_index += 1
    return f"{size:.{precision}g}{_DECIMAL_UNITS[unit_index]}"


def human_duration(seconds: float) -> str:
    """Approximate elapsed time in words (e.g. "About a minute"), like docker's units.HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds // 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 3:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def created_ago(created_at_ns: int, now: float | None = None) -> str:
    """`created_at` (nanoseconds since the epoch) as "N units ago"."""
    now = time.time() if now is None else now
    return human_duration(max(0.0, now - created_at_ns / 1e9)) + " ago"


def truncate_id(value: str, prefix: str = "") -> str:
    """The short form of an id: `prefix` removed, 13 characters kept."""
    if prefix and value.startswith(prefix):
        value = value[len(prefix):]
    return value[:TRUNCATED_ID_LENGTH]


def split_repo_tag(repo_tag: str) -> tuple[str, str]:
    """"repo:tag" into its parts; the colon of a registry port is not a tag separator."""
    name, sep, tag = repo_tag.rpartition(":")
    if not sep or "/" in tag:
        return repo_tag, "<none>"
    return name, tag


def split_repo_digest(repo_digests: Sequence[str]) -> tuple[str, str]:
    """The repository and digest of an image's first repo digest, or <none>s."""
    if not repo_digests:
        return "<none>", "<none>"
    name, sep, digest = repo_digests[0].partition("@")
    if not sep:
        return "<none>", "<none>"
    return name, digest
