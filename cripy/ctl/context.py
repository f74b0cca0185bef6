"""What every `cripy ctl` verb shares: the Context (parsed flags, a lazily connected client, the output streams),
the client-side error, and the small helpers for flags common to several verbs (labels, regular expressions,
newest-first selection, id truncation, registry credentials, output formats).
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from cri_api.v1 import api_pb2

from cripy.ctl import output
from cripy.ctl.client import CRIClient, CRIError

POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


class CommandError(Exception):
    """A failure found by the client itself: bad flags or arguments, or a named object that is not there."""


Handler = Callable[["Context"], int]


class VerbAdder(Protocol):
    """Adds a verb to the command line: its name, handler, help and aliases; returns its parser for flags."""

    def __call__(self, name: str, handler: Handler, help: str,
                 aliases: Sequence[str] = ()) -> argparse.ArgumentParser: ...


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

    def info(self, message: str) -> None:
        self.stderr.write(f"I {message}\n")

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
    if last > 0:
        return items[:last]
    if latest:
        return items[:1]
    return items


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise CommandError(f"invalid regular expression {pattern!r}: {error}") from None


def matches_pattern(pattern: str | None, value: str) -> bool:
    compiled = compile_pattern(pattern)
    return compiled is None or compiled.search(value) is not None


def truncated(ctx: Context, value: str, prefix: str = "") -> str:
    return value if getattr(ctx.args, "no_trunc", False) else output.truncate_id(value, prefix)


def label_or_unknown(labels: Mapping[str, str], key: str) -> str:
    """A kubelet label (pod name, namespace) or `unknown`, as crictl shows containers not made by the kubelet."""
    return labels[key] if key in labels else "unknown"


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
        password = args.password
        if password is None:
            if not sys.stdin.isatty():
                raise CommandError("--username has no --password and stdin is not a terminal to ask for one")
            password = getpass.getpass("Enter Password:")
        return api_pb2.AuthConfig(username=args.username, password=password)
    return None


# -- flags shared by several verbs --------------------------------------------------------------------------

STATUS_FORMATS = ("json", "yaml", "table")
LIST_FORMATS = ("json", "yaml", "table")


def add_output_flag(parser: argparse.ArgumentParser, choices: Sequence[str], default: str | None) -> None:
    parser.add_argument("-o", "--output", choices=choices, default=default,
                        help=f"output format ({', '.join(choices)}; default {default or 'text'})")


def add_auth_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--creds", metavar="USERNAME[:PASSWORD]", help="registry credentials")
    parser.add_argument("--auth", metavar="AUTH", help="base64 encoded USERNAME[:PASSWORD]")
    parser.add_argument("--username", "-u", help="registry user name (password from --password or asked)")
    parser.add_argument("--password", help="registry password (with --username)")


def add_status_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the inspect verbs: the format and -q (no verbose info)."""
    add_output_flag(parser, STATUS_FORMATS, "json")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not ask for the runtime's verbose info")


def add_selection_flags(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Filters naming objects by their attributes (used by the list verbs and by inspect without ids)."""
    parser.add_argument("--name", help=f"filter by {what} name (regular expression)")
    parser.add_argument("--label", action="append", metavar="KEY=VALUE", help="filter by label (repeatable)")
    parser.add_argument("-s", "--state", help="filter by state")
    parser.add_argument("-l", "--latest", action="store_true", help="show only the most recently created")
    parser.add_argument("-n", "--last", type=int, default=0, help="show the N most recently created")
    parser.add_argument("--namespace", help="filter by pod namespace (regular expression)")


def add_list_flags(parser: argparse.ArgumentParser, *, what: str) -> None:
    parser.add_argument("--id", help="filter by id (prefix accepted by most runtimes)")
    add_selection_flags(parser, what=what)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only ids")
    parser.add_argument("-v", "--verbose", action="store_true", help="print a block of details per object")
    parser.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    add_output_flag(parser, LIST_FORMATS, "table")
