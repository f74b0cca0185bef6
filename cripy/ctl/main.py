"""`cripy ctl`: crictl's verbs and flags over the CRI v1 API, for people and tests.

Owns the command line: the global flags (endpoints, deadline, debug), the verbs each group module in
cripy/ctl/verbs/ registers, and the error reporting: a failed call prints one `E ...` line naming the call and
the gRPC code to stderr and the command exits 1 (2 for a command line argparse rejects).

Where crictl and `cripy ctl` share a verb and its flags, they print the same text (tests/integration/
test_crictl.py holds them to it), with two deliberate differences: `exec -s` keeps the command's streams and
exit code (see verbs/streams.py), and `stats`/`statsp` clear the screen only on a terminal (verbs/stats.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cripy import __version__
from cripy.ctl.client import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, CRIError
from cripy.ctl.configfile import ConfigFileError
from cripy.ctl.context import CommandError, Context, Handler
from cripy.ctl.verbs import containers, images, pods, runtime, stats, streams

VERB_GROUPS = (runtime, images, pods, containers, stats, streams)


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

    def verb(name: str, handler: Handler, help: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=help, aliases=list(aliases))
        sub.set_defaults(handler=handler)
        return sub

    for group in VERB_GROUPS:
        group.register(verb)
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
    except (CRIError, CommandError, ConfigFileError) as error:
        ctx.error(str(error))
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
