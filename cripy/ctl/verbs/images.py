"""Image verbs: pull, images, inspecti, rmi and imagefsinfo."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from cri_api.v1 import api_pb2

from cripy.ctl import documents, output
from cripy.ctl.admin import AdminClient
from cripy.ctl.client import DEFAULT_PULL_TIMEOUT
from cripy.ctl.configfile import load_pod_config
from cripy.ctl.context import (
    CommandError,
    Context,
    VerbAdder,
    add_auth_flags,
    add_output_flag,
    add_status_flags,
    build_auth,
    compile_pattern,
    for_each,
    parse_labels,
    truncated,
)
from cripy.ctl.progress import Follow

NONE = "<none>"


def cmd_pull(ctx: Context) -> int:
    args = ctx.args
    sandbox_config = load_pod_config(args.pod_config, ctx.warn) if args.pod_config else None
    annotations = parse_labels(args.annotation)
    timeout = args.pull_timeout if args.pull_timeout > 0 else DEFAULT_PULL_TIMEOUT

    def pull() -> str:
        return ctx.client.pull_image(args.image, auth=build_auth(args), sandbox_config=sandbox_config,
                                     annotations=annotations, timeout=timeout)

    if args.no_progress:
        image_ref = pull()
    else:
        # cripy's admin service shows the pull as it goes (bars on a terminal, lines otherwise, on stderr); the
        # watch starts first and waits for the pull to begin.
        with AdminClient(ctx.client.image_endpoint) as admin, \
                Follow(admin.watch_progress("pull", args.image), ctx.stderr):
            image_ref = pull()
    ctx.print(f"Image is up to date for {image_ref}")
    return 0


# -- images -------------------------------------------------------------------------------------------------


def _image_order(left: api_pb2.Image, right: api_pb2.Image) -> int:
    """crictl's order: by first tag when both have one, else by first digest when both have one, else by id."""
    if left.repo_tags and right.repo_tags:
        a, b = left.repo_tags[0], right.repo_tags[0]
    elif left.repo_digests and right.repo_digests:
        a, b = left.repo_digests[0], right.repo_digests[0]
    else:
        a, b = left.id, right.id
    return (a > b) - (a < b)


def list_images(ctx: Context, name: str, filters: Iterable[str]) -> list[api_pb2.Image]:
    images = sorted(ctx.client.list_images(name), key=functools.cmp_to_key(_image_order))
    for condition in filters:
        images = filter_images(images, condition)
    return images


def filter_images(images: list[api_pb2.Image], condition: str) -> list[api_pb2.Image]:
    """One `--filter` condition: dangling=BOOL, reference=REGEX, before=IMAGE, since=IMAGE."""
    kind, sep, value = condition.partition("=")
    if not sep or kind not in ("dangling", "reference", "before", "since"):
        raise CommandError(f"unknown filter flag: {condition}")
    if kind == "dangling":
        return [image for image in images if (value == "true" and not image.repo_tags)
                or (value == "false" and bool(image.repo_tags))]
    if kind == "reference":
        pattern = compile_pattern(value)
        return [image for image in images
                if (pattern is not None and pattern.search(split_repo_digest(image.repo_digests)[0]))
                or split_repo_digest(image.repo_digests)[0] == value]
    if kind == "before":
        return list(reversed(_until(value, list(reversed(images)))))
    return _until(value, images)


def _until(reference: str, images: list[api_pb2.Image]) -> list[api_pb2.Image]:
    """The images listed before the one `reference` names (by name:tag, id prefix or name@digest)."""
    kept = []
    for image in images:
        if ":" in reference and "@" not in reference:
            name, _ = split_repo_digest(image.repo_digests)
            if ":".join(repo_tag_pairs(image.repo_tags, name)[0]) == reference:
                break
        elif ":" not in reference and "@" not in reference:
            if image.id.startswith(reference):
                break
        elif image.repo_digests:
            if image.repo_digests[0].startswith(reference):
                break
        else:
            continue
        kept.append(image)
    return kept


def repo_tag_pairs(repo_tags: Iterable[str], image_name: str) -> list[tuple[str, str]]:
    """Each tag as (repository, tag), split at its last colon; an image without tags shows its name and <none>."""
    pairs = []
    for repo_tag in repo_tags:
        name, sep, tag = repo_tag.rpartition(":")
        if not sep:
            pairs.append(("errorRepoTag", "errorRepoTag"))
            continue
        pairs.append((image_name if name == NONE else name, tag))
    return pairs or [(image_name, NONE)]


def split_repo_digest(repo_digests: Iterable[str]) -> tuple[str, str]:
    """The repository and digest of an image's first repo digest, or <none>s."""
    first = next(iter(repo_digests), None)
    if first is None:
        return NONE, NONE
    parts = first.split("@")
    if len(parts) != 2:
        return "errorName", "errorRepoDigest"
    return parts[0], parts[1]


def cmd_images(ctx: Context) -> int:
    args = ctx.args
    images = list_images(ctx, args.repo or "", args.filter or ())
    if args.output in ("json", "yaml"):
        ctx.write(documents.proto_text(api_pb2.ListImagesResponse(images=images), args.output))
        return 0
    if args.quiet:
        for image in images:
            ctx.print(image.id)
        return 0
    if args.verbose:
        for image in images:
            print_image_details(ctx, image)
        return 0
    headers = ["IMAGE", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "SIZE"]
    headers += ["PINNED"] if args.pinned else []
    ctx.write(output.format_table(headers, image_rows(ctx, images)))
    return 0


def image_rows(ctx: Context, images: Iterable[api_pb2.Image]) -> Iterable[list[str]]:
    for image in images:
        repo_name, digest = split_repo_digest(image.repo_digests)
        for repo, tag in repo_tag_pairs(image.repo_tags, repo_name):
            row = [repo, tag]
            if ctx.args.digests:
                row.append(truncated(ctx, digest, "sha256:"))
            row += [truncated(ctx, image.id, "sha256:"), output.human_size(image.size)]
            if ctx.args.pinned:
                row.append("true" if image.pinned else "false")
            yield row


def print_image_details(ctx: Context, image: api_pb2.Image) -> None:
    ctx.print(f"ID: {image.id}")
    for tag in image.repo_tags:
        ctx.print(f"RepoTags: {tag}")
    for digest in image.repo_digests:
        ctx.print(f"RepoDigests: {digest}")
    if image.size:
        ctx.print(f"Size: {image.size}")
    if image.HasField("uid"):
        ctx.print(f"Uid: value:{image.uid.value}")
    if image.username:
        ctx.print(f"Username: {image.username}")
    if image.pinned:
        ctx.print("Pinned: true")
    ctx.print()


# -- inspecti, rmi, imagefsinfo -----------------------------------------------------------------------------


def cmd_inspecti(ctx: Context) -> int:
    args = ctx.args
    verbose = not args.quiet
    ids = list(args.images) or [image.id for image in list_images(ctx, args.name or "", args.filter or ())]
    if not ids:
        raise CommandError("no IDs given and no image matches the filters")
    statuses = []
    for image_id in ids:
        response = ctx.client.image_status(image_id, verbose=verbose)
        if not response.HasField("image"):
            raise CommandError(f"no such image {image_id!r} present")
        if args.output == "table":
            print_image_status_table(ctx, response, verbose)
        else:
            statuses.append(documents.status_document(documents.proto_document(response.image), response.info))
    if statuses:
        ctx.write(documents.status_documents_text(statuses, args.output))
    return 0


def print_image_status_table(ctx: Context, response: api_pb2.ImageStatusResponse, verbose: bool) -> None:
    ctx.print(f"ID: {response.image.id}")
    for tag in response.image.repo_tags:
        ctx.print(f"Tag: {tag}")
    for digest in response.image.repo_digests:
        ctx.print(f"Digest: {digest}")
    ctx.print(f"Size: {output.human_size(response.image.size)}")
    if verbose:
        ctx.print(f"Info: {documents.go_map_text(response.info)}")


def cmd_rmi(ctx: Context) -> int:
    args = ctx.args
    targets: dict[str, bool] = {image: True for image in args.images}
    if args.all or args.prune:
        for image in ctx.client.list_images():
            if not (args.prune and image.pinned):
                targets[image.id] = True
    if args.prune:
        for container in ctx.client.list_containers():
            status = ctx.client.image_status(container.image.image)
            if status.HasField("image"):
                targets[status.image.id] = False
    if not targets:
        if args.all or args.prune:
            ctx.info("No images to remove")
            return 0
        raise CommandError("rmi needs IMAGE arguments, --all or --prune")

    def remove(image: str) -> None:
        status = ctx.client.image_status(image)
        if not status.HasField("image"):
            raise CommandError(f"no such image {image}")
        ctx.client.remove_image(image)
        for name in list(status.image.repo_tags) or list(status.image.repo_digests):
            ctx.print(f"Deleted: {name}")

    return for_each(ctx, [image for image, wanted in targets.items() if wanted], remove)


def cmd_imagefsinfo(ctx: Context) -> int:
    response = ctx.client.image_fs_info()
    if ctx.args.output == "table":
        print_filesystems(ctx, "Container", response.container_filesystems)
        print_filesystems(ctx, "Image", response.image_filesystems)
        return 0
    response = api_pb2.ImageFsInfoResponse(image_filesystems=response.image_filesystems,
                                           container_filesystems=response.container_filesystems)
    document = documents.status_document(documents.proto_document(response))
    ctx.write(documents.status_documents_text([document], ctx.args.output))
    return 0


def print_filesystems(ctx: Context, label: str, filesystems: Iterable[api_pb2.FilesystemUsage]) -> None:
    ctx.print(f"{label} Filesystem ")
    for index, usage in enumerate(filesystems):
        ctx.print(f"TimeStamp[{index}]: {usage.timestamp}")
        ctx.print(f"Disk[{index}]: {output.human_size(usage.used_bytes.value, 4)}")
        ctx.print(f"Inodes[{index}]: {usage.inodes_used.value}")
        ctx.print(f"Mountpoint[{index}]: {usage.fs_id.mountpoint}")


def register(verb: VerbAdder) -> None:
    sub = verb("pull", cmd_pull, "pull an image")
    sub.add_argument("image")
    add_auth_flags(sub)
    sub.add_argument("-p", "--pod-config", help="pod config file (JSON or YAML) passed as sandbox_config")
    sub.add_argument("-a", "--annotation", action="append", metavar="KEY=VALUE", help="image annotation")
    sub.add_argument("--pull-timeout", "--pt", type=float, default=0,
                     help=f"deadline for the pull in seconds (default {DEFAULT_PULL_TIMEOUT:.0f})")
    sub.add_argument("--no-progress", action="store_true",
                     help="do not show the layers' progress (shown on stderr: bars on a terminal, lines otherwise)")

    sub = verb("images", cmd_images, "list images", aliases=["image", "img"])
    sub.add_argument("repo", nargs="?", help="only images matching this reference")
    sub.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    sub.add_argument("-v", "--verbose", action="store_true", help="print a block of details per image")
    sub.add_argument("-f", "--filter", action="append", metavar="CONDITION",
                     help="dangling=BOOL, reference=REGEX, before=IMAGE or since=IMAGE (repeatable)")
    sub.add_argument("--digests", action="store_true", help="show digests")
    sub.add_argument("--pinned", action="store_true", help="show whether images are pinned")
    sub.add_argument("--no-trunc", action="store_true", help="do not shorten ids and digests")
    add_output_flag(sub, ("json", "yaml", "table"), "table")

    sub = verb("inspecti", cmd_inspecti, "show the status of images (all matching the filters without IMAGEs)")
    sub.add_argument("images", nargs="*", metavar="IMAGE")
    add_status_flags(sub)
    sub.add_argument("--name", help="without IMAGEs: the images matching this reference")
    sub.add_argument("-f", "--filter", action="append", metavar="CONDITION", help="as for images --filter")

    sub = verb("rmi", cmd_rmi, "remove images")
    sub.add_argument("images", nargs="*", metavar="IMAGE")
    sub.add_argument("-a", "--all", action="store_true", help="remove all images")
    sub.add_argument("-q", "--prune", action="store_true", help="remove images no container uses")

    sub = verb("imagefsinfo", cmd_imagefsinfo, "show image filesystem usage")
    add_output_flag(sub, ("json", "yaml", "table"), "json")
