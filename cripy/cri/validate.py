"""Validators of CRI request values that protobuf cannot express, shared by the CRI edge and convert.py.

- `request_strings`: every string of every request, before a handler sees it: no NUL byte (the kernel's paths,
  argv and env end at one, and Python refuses them with ValueError), and a length bound by what the field can be
  (a path is at most PATH_MAX, an argument or environment string at most MAX_ARG_STRLEN). Annotation values are
  free text, bounded only by the message size.
- `exec_command`: an exec'd command must fit one execve: its arguments together under a bound well inside ARG_MAX,
  as `runc exec` passes them on its own command line (each one alone is bounded by `request_strings`).
- `cpu_list`: the kernel's list format of cpuset.cpus / cpuset.mems ("0-3,8,10-11").
- `shown`: a value for an error message, cut short: errors never echo a huge value back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cripy.errors import InvalidArgument
from cripy.linux import cgroups

PATH_MAX = 4096
MAX_ARG_STRLEN = 32 * 4096  # the kernel's bound on one argv or envp string, NUL included
EXEC_ARGS_MAX = 1 << 20  # all arguments of one command together (ARG_MAX is 2 MiB; runc's own argv comes on top)
CPU_LIST_MAX = 4096  # characters: the kernel takes a cpuset list in one page
MAX_CPU_ID = 8191  # CONFIG_NR_CPUS is at most 8192
SHOWN_MAX = 80

# Fields whose strings are free text or command lines, not names or paths (field name -> bound in bytes).
_LONG_FIELDS = {
    "command": MAX_ARG_STRLEN - 1,
    "args": MAX_ARG_STRLEN - 1,
    "cmd": MAX_ARG_STRLEN - 1,
    "value": MAX_ARG_STRLEN - 1,  # env values (KeyValue), sysctl and label values are checked further on
    "password": 64 * 1024,
    "auth": 64 * 1024,
    "identity_token": 64 * 1024,
    "registry_token": 64 * 1024,
}
_UNBOUNDED_MAPS = {"annotations"}  # free text: kubectl's last-applied-configuration lives here


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """repr(value), cut to about `limit` characters with the full length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, tuple)) else len(text)
    return f"{text[:limit]}... ({size} long)"


def request_strings(message: Message, where: str) -> None:
    """Refuse a NUL byte or an oversized string anywhere in a request (see the module docstring)."""
    _check_message(message, where)


def _check_message(message: Message, path: str) -> None:
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if isinstance(value, Mapping):  # a map field (not GetOptions().map_entry: that loads descriptor_pb2, 0.5 MiB)
            assert field.message_type is not None  # a map field's entries are messages
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str):
                    _check_string(key, f"{name}[{shown(key, 40)}] (key)", PATH_MAX)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _check_message(item, f"{name}[{shown(key, 40)}]")
                elif isinstance(item, str) and field.name not in _UNBOUNDED_MAPS:
                    _check_string(item, f"{name}[{shown(key, 40)}]", PATH_MAX)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for i, item in enumerate(items):
                _check_message(item, f"{name}[{i}]" if field.is_repeated else name)
        elif field.type == FieldDescriptor.TYPE_STRING:
            bound = _LONG_FIELDS.get(field.name, PATH_MAX)
            if field.is_repeated:
                for i, item in enumerate(value):
                    _check_string(item, f"{name}[{i}]", bound)
            else:
                _check_string(value, name, bound)


def _check_string(value: str, where: str, bound: int) -> None:
    if "\0" in value:
        raise InvalidArgument(f"{where}: {shown(value)} contains a NUL byte")
    if len(value) > bound // 4 and len(value.encode()) > bound:
        raise InvalidArgument(f"{where}: {shown(value)} is longer than {bound} bytes")


def exec_command(cmd: Sequence[str], where: str) -> None:
    """A command for `runc exec`: non-empty, and small enough together for one execve (E2BIG would be the daemon's
    error). Each argument on its own was checked with the rest of the request (`request_strings`)."""
    if not cmd or not cmd[0]:
        raise InvalidArgument(f"{where}: the command is empty")
    total = sum(len(arg.encode()) + 1 for arg in cmd)
    if total > EXEC_ARGS_MAX:
        raise InvalidArgument(f"{where}: the command's {len(cmd)} arguments are {total} bytes together, more than "
                              f"{EXEC_ARGS_MAX}")


def cpu_list(value: str, where: str) -> set[int]:
    """Parse a kernel cpu/memory-node list ("0-3,8"); its ids, or InvalidArgument naming the field."""
    if len(value) > CPU_LIST_MAX:
        raise InvalidArgument(f"{where}={shown(value)} is longer than {CPU_LIST_MAX} characters")
    try:
        return cgroups.parse_cpu_list(value, MAX_CPU_ID)
    except ValueError as e:
        raise InvalidArgument(f"{where}={shown(value)}: {shown(str(e), 60)[1:-1]}") from None
