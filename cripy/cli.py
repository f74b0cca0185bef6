"""The `cripy` command: run the daemon (no sub-command), or `config`, `version`, `ctl`, `image import|trust`,
`audit`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cripy import CRI_API_VERSION, __version__
from cripy.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_DROPIN_DIR,
    Config,
    ConfigError,
    config_files,
    load_config,
    to_toml,
    validate,
)

COMMANDS = ("config", "version", "ctl", "image", "daemon", "audit")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command_at = _command_position(argv)
    if command_at is not None and argv[command_at] == "ctl":
        from cripy.ctl.main import main as ctl_main

        return ctl_main(argv[command_at + 1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            print(f"cripy version {__version__}\nCRI API version {CRI_API_VERSION}")
            return 0
        if args.command == "config":
            print(to_toml(Config() if args.default else _effective_config(args)), end="")
            return 0
        if args.command == "image":
            return _image_command(args)
        config = _effective_config(args)
        if args.command == "audit":
            return _audit_command(config, args.repair)
    except ConfigError as e:
        print(f"cripy: {e}", file=sys.stderr)
        return 2
    from cripy.linux.memory import limit_arenas

    limit_arenas()  # first: before the daemon's threads (memory.py says why)
    from cripy.daemon import run_daemon

    return run_daemon(config, reload=lambda: _effective_config(args),
                      config_files=lambda: config_files(args.config, args.config_dir))


OPTIONS_WITH_VALUES = ("--config", "--config-dir", "--root", "--runroot", "--listen", "--log-level")


def _command_position(argv: list[str]) -> int | None:
    """Where the sub-command is: the first argument that is neither an option nor an option's value."""
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUES:
            skip = True
        elif not arg.startswith("-"):
            return i if arg in COMMANDS else None
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cripy", description="A Kubernetes container runtime (CRI v1).")
    parser.add_argument("--config", type=Path, help=f"main config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--config-dir", type=Path, help=f"drop-in directory (default {DEFAULT_DROPIN_DIR})")
    parser.add_argument("--root", help="persistent state directory (images, database)")
    parser.add_argument("--runroot", help="runtime state directory (tmpfs)")
    parser.add_argument("--listen", help="path of the CRI unix socket")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("daemon", help="run the daemon (the default)")
    sub.add_parser("version", help="print the version")
    config = sub.add_parser("config", help="print the effective configuration as TOML")
    config.add_argument("--default", action="store_true", help="print the documented defaults instead")
    sub.add_parser("ctl", help="a CRI client with crictl's verbs (see `cripy ctl --help`)")
    audit = sub.add_parser("audit", help="compare the node with cripy's records: what is orphaned or missing")
    audit.add_argument("--repair", action="store_true", help="undo what is orphaned (with the journal's undo functions)")
    image = sub.add_parser("image", help="image operations on the running daemon")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    imp = image_sub.add_parser("import", help="load an OCI layout (dir or tar) or a docker-archive tarball")
    imp.add_argument("path", type=Path)
    imp.add_argument("--name", default="", help="name to give the image (when the archive carries none)")
    imp.add_argument("--runtime-endpoint", "-r", default="", help="cripy's socket (default: from the config)")
    imp.add_argument("--no-progress", action="store_true",
                     help="do not show the layers' progress (on stderr: bars on a terminal, lines otherwise)")
    trust = image_sub.add_parser("trust", help="which trust policy applies to an image, and (--check) whether "
                                               "the image the registry serves now would be accepted")
    trust.add_argument("image", help="image reference, as a pod spec names it")
    trust.add_argument("--namespace", "-n", default="", help="the Kubernetes namespace of the pod pulling it")
    trust.add_argument("--check", action="store_true", help="fetch the manifest and signatures and judge them")
    return parser


def _effective_config(args: argparse.Namespace) -> Config:
    explicit = args.config is not None
    config = load_config(args.config, args.config_dir, must_exist=explicit)
    for key in ("root", "runroot", "listen", "log_level"):
        value = getattr(args, key)
        if value is not None:
            setattr(config.cripy, key, value)
    if args.runroot is not None and args.listen is None and config.cripy.listen == Config().cripy.listen:
        config.cripy.listen = str(Path(args.runroot) / "cripy.sock")
    validate(config)
    return config


def _audit_command(config: Config, repair: bool) -> int:
    """Print what is orphaned or missing, by object; with repair, undo the orphans and check again. Exit status 1
    when something is (still) found, 3 when nothing is but a check was left out."""
    import asyncio

    from cripy.audit import Audit, report, summary
    from cripy.daemon import Daemon
    from cripy.storage.layout import Layout

    if not Layout(config.root, config.runroot).database.exists():
        print(f"cripy audit: no cripy database under {config.cripy.root}", file=sys.stderr)
        return 2

    async def run() -> int:
        daemon = Daemon(config)
        await daemon.open_for_audit()
        try:
            audit = Audit(daemon)
            findings = await audit.run()
            if findings:
                print(report(findings))
            print(f"cripy audit: {summary(findings)}")
            if not repair or not any(f.repair for f in findings):
                return _audit_status(findings, audit.notes)
            problems = await Audit(daemon).repair(findings)
            for problem in problems:
                print(f"cripy audit: {problem}", file=sys.stderr)
            audit = Audit(daemon)
            left = await audit.run()
            if left:
                print(report(left))
            print(f"cripy audit: after repair, {summary(left)}")
            return _audit_status(left, audit.notes)
        finally:
            await daemon.close_audit()

    return asyncio.run(run())


def _audit_status(findings: list, notes: list[str]) -> int:
    """1 when something is found; 3 when nothing is, but part of the node could not be checked (the notes say
    which), so that a script does not read an incomplete audit as a clean node; else 0."""
    for note in notes:
        print(f"cripy audit: {note}")
    if findings:
        return 1
    return 3 if notes else 0


def _image_command(args: argparse.Namespace) -> int:
    if args.image_command == "trust":
        return _trust_command(args)
    import secrets

    from cripy.ctl.admin import AdminClient
    from cripy.ctl.client import CRIError
    from cripy.ctl.progress import Follow

    endpoint = args.runtime_endpoint or _effective_config(args).cripy.listen
    progress_id = secrets.token_hex(8)
    with AdminClient(endpoint) as admin:
        try:
            if args.no_progress:
                images = admin.import_image(str(args.path.resolve()), args.name)
            else:
                # The layers' progress on stderr (bars on a terminal, lines otherwise) while the import runs.
                with Follow(admin.watch_progress("import", progress_id), sys.stderr):
                    images = admin.import_image(str(args.path.resolve()), args.name, progress_id)
        except CRIError as e:
            print(f"cripy image import: {e.code.name}: {e.details}", file=sys.stderr)
            return 1
    for image in images:
        print(f"imported {image['id']} {' '.join(image['repoTags'] + image['repoDigests'])}")
    return 0


def _trust_command(args: argparse.Namespace) -> int:
    """Runs locally with the node's configuration files, like the daemon's pulls; needs no running daemon."""
    from cripy.errors import CripyError
    from cripy.images.trust.explain import run

    settings = _effective_config(args).images
    try:
        code, lines = run(settings, args.image, args.namespace, args.check)
    except CripyError as e:
        print(f"cripy image trust: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())

