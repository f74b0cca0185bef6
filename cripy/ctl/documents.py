"""The JSON and YAML documents `cripy ctl` prints, in the shapes crictl gives them.

crictl renders CRI messages two ways, and this module reproduces both:

- list verbs (`ps/pods/images/stats/statsp -o json|yaml`) print the response message as protobuf JSON: fields in
  declaration order, camelCase names, zero values included, 64-bit integers as strings, enums by name, map entries
  sorted (`proto_document`). Go's protojson deliberately varies its whitespace between builds, so only the data,
  not the spacing after a colon, can match crictl there.
- status verbs (`info`, `inspect`, `inspectp`, `inspecti`, `imagefsinfo`) build one document per object:
  `{"status": ..., <verbose info keys>...}`, a value of the info map starting with `{` parsed as JSON, any other
  kept as a string; then print it through Go's encoding/json (keys sorted at every level, `<>&` escaped, two-space
  indent) or through sigs.k8s.io/yaml (`status_documents_text`).

YAML is written the way go-yaml v2 writes it: keys in its natural order, strings that would read back as another
type in double quotes, multi-line strings as literal blocks.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# -- protobuf JSON --------------------------------------------------------------------------------------------


def proto_document(message: Message) -> dict[str, Any]:
    """`message` as Go's protojson with EmitDefaultValues gives it: declaration order, map keys sorted."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    # protojson writes a whole double without a fraction (0, not 0.0), as Go's encoding/json does.
    return go_json_value(_in_declaration_order(message.DESCRIPTOR, data))  # type: ignore[arg-type]  # upb's own


# Fields of the CRI v1 API that crictl (built from a newer API) knows and the Python bindings cripy uses
# (container-runtime-interface-api) do not yet: crictl prints them with their zero value, and so does cripy ctl,
# last in their message as they are in the API. A field the bindings know is printed from the message instead.
NEWER_CRI_FIELDS: dict[str, tuple[tuple[str, Any], ...]] = {
    "runtime.v1.ImageSpec": (("imageRef", ""),),
}


def _in_declaration_order(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    ordered: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.json_name not in data:
            continue
        value = data[field.json_name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            value = {key: _ordered_value(value_field, value[key]) for key in sorted(value)}
        elif field.is_repeated:
            value = [_ordered_value(field, item) for item in value]
        else:
            value = _ordered_value(field, value)
        ordered[field.json_name] = value
    known = {field.json_name for field in descriptor.fields}
    for json_name, zero in NEWER_CRI_FIELDS.get(descriptor.full_name, ()):
        if json_name not in known:
            ordered[json_name] = zero
    return ordered


def _ordered_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and isinstance(value, dict):
        return _in_declaration_order(field.message_type, value)
    return value


def status_fields(message: Message, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """crictl's status object for `inspect`/`inspectp`: every top-level field present (an unset message is null),
    with `overrides` (its readable timestamps) replacing the protobuf values."""
    data = proto_document(message)
    data.update(overrides or {})
    return {field.json_name: data.get(field.json_name) for field in message.DESCRIPTOR.fields}


def go_struct_document(message: Message) -> dict[str, Any]:
    """`message` through Go's encoding/json (crictl does this for Status's runtime handlers and features):
    protobuf field names, zero values and unset messages left out, enums and 64-bit integers as numbers."""
    data: dict[str, Any] = {}
    for field, value in message.ListFields():
        data[field.name] = _go_struct_value(field, value)
    return data


def _go_struct_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return dict(value)
    if field.is_repeated:
        return [_go_struct_scalar(field, item) for item in value]
    return _go_struct_scalar(field, value)


def _go_struct_scalar(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return go_struct_document(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


# -- status documents -----------------------------------------------------------------------------------------


def status_document(status: Mapping[str, Any] | None, info: Mapping[str, str] | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One object of a status verb: `status`, then `extra` (info's runtime handlers and features), then the
    verbose info map, each value that starts with `{` parsed as JSON and any other kept as a plain string."""
    document: dict[str, Any] = {}
    if status is not None:
        document["status"] = status
    document.update(extra or {})
    for key in sorted(info or {}):
        value = (info or {})[key]
        if value.startswith("{"):
            document[key] = json.loads(value)
        else:
            document[key] = value.strip('"')
    return document


def status_documents_text(documents: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The text a status verb prints: one document as it is, several as a list; json or yaml."""
    if not documents:
        return ""
    data: Any = documents[0] if len(documents) == 1 else list(documents)
    data = go_json_value(data)
    if fmt == "yaml":
        return go_yaml(data) + "\n"
    if fmt == "json":
        return go_json(data) + "\n"
    raise ValueError(f"unsupported output format {fmt!r}: choose json or yaml")


def proto_text(message: Message, fmt: str) -> str:
    """A list verb's `-o json|yaml`: the response message as protobuf JSON, or that JSON as YAML."""
    data = proto_document(message)
    if fmt == "yaml":
        return go_yaml(data) + "\n"
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unsupported output format {fmt!r}: choose json or yaml")


# -- Go's encoding/json ---------------------------------------------------------------------------------------

_GO_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_HTML_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def go_json_value(value: Any) -> Any:
    """A value as it is after a round trip through Go's `map[string]any`: every number a float64, so a whole
    float prints as an integer."""
    if isinstance(value, dict):
        return {key: go_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [go_json_value(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def go_json(data: Any) -> str:
    """json.Marshal then json.Indent(.., "", "  "): sorted keys, HTML-safe escapes, UTF-8 kept."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, separators=(",", ": "))
    # Only strings can hold these characters in JSON text, so replacing them everywhere is exact.
    return _GO_HTML_ESCAPE_RE.sub(lambda match: _GO_HTML_ESCAPES[match.group()], text)


# -- go-yaml v2 -----------------------------------------------------------------------------------------------

# Plain scalars go-yaml v2 reads as booleans besides the ones PyYAML's YAML 1.1 resolver knows.
_GO_YAML_EXTRA_BOOLS = frozenset({"y", "Y", "n", "N"})
_RESOLVER = yaml.resolver.Resolver()


def _reads_as_other_type(text: str) -> bool:
    if text in _GO_YAML_EXTRA_BOOLS:
        return True
    return _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) != "tag:yaml.org,2002:str"


def go_yaml_key_order(left: str, right: str) -> int:
    """go-yaml v2's key order: letters compare by code point, a non-letter sorts before a letter, and runs of
    digits compare as numbers."""
    a, b = list(left), list(right)
    for index in range(min(len(a), len(b))):
        if a[index] == b[index]:
            continue
        a_letter, b_letter = a[index].isalpha(), b[index].isalpha()
        if a_letter and b_letter:
            return -1 if a[index] < b[index] else 1
        if a_letter or b_letter:
            return 1 if a_letter else -1
        a_number = b_number = 0
        if a[index] == "0" or b[index] == "0":
            # Zeros inside a longer number: both runs get a leading 1 so that their lengths still count.
            back = index - 1
            while back >= 0 and a[back].isdigit():
                if a[back] != "0":
                    a_number = b_number = 1
                    break
                back -= 1
        a_end, a_number = _digit_run(a, index, a_number)
        b_end, b_number = _digit_run(b, index, b_number)
        if a_number != b_number:
            return -1 if a_number < b_number else 1
        if a_end != b_end:
            return -1 if a_end < b_end else 1
        return -1 if a[index] < b[index] else 1
    return (len(a) > len(b)) - (len(a) < len(b))


def _digit_run(chars: list[str], start: int, number: int) -> tuple[int, int]:
    end = start
    while end < len(chars) and chars[end].isdigit():
        number = number * 10 + int(chars[end])
        end += 1
    return end, number


class _GoYamlDumper(yaml.SafeDumper):
    """PyYAML writing what go-yaml v2 writes for JSON-shaped data."""

    def represent_mapping(self, tag: str, mapping: Any, flow_style: bool | None = None) -> yaml.MappingNode:
        items = sorted(mapping.items(), key=functools.cmp_to_key(_go_yaml_item_order))
        return super().represent_mapping(tag, items, flow_style)


def _go_yaml_item_order(x: tuple[Any, Any], y: tuple[Any, Any]) -> int:
    return go_yaml_key_order(str(x[0]), str(y[0]))


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    if "\n" in text:
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
    if _reads_as_other_type(text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", text)


_GoYamlDumper.add_representer(str, _represent_str)
_GoYamlDumper.add_representer(dict, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data))


def go_yaml(data: Any) -> str:
    """`data` as sigs.k8s.io/yaml's JSONToYAML prints it (ends with a newline)."""
    return yaml.dump(data, Dumper=_GoYamlDumper, default_flow_style=False, allow_unicode=True, width=80)


# -- Go time formats ------------------------------------------------------------------------------------------

GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time in RFC 3339: crictl's "never happened"


def rfc3339_nano(nanoseconds: int) -> str:
    """Go's time.Unix(0, ns).Format(time.RFC3339Nano) in UTC: trailing zeros of the fraction dropped."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def go_time_string(nanoseconds: int) -> str:
    """Go's time.Time String() of time.Unix(0, ns) in the local zone: "2006-01-02 15:04:05.999999999 -0700 MST"."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc).astimezone()
    digits = f"{fraction:09d}".rstrip("0")
    clock = moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{digits}" if digits else "")
    return f"{clock} {moment.strftime('%z')} {moment.tzname()}"


def go_map_text(values: Mapping[str, str]) -> str:
    """A map[string]string printed with %v: `map[k1:v1 k2:v2]`, keys sorted."""
    return "map[" + " ".join(f"{key}:{values[key]}" for key in sorted(values)) + "]"


def sorted_pairs(values: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    return ((key, values[key]) for key in sorted(values))
