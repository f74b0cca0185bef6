"""Importing images without a registry: an OCI image layout (directory or tar) or a docker-archive tarball.

For air-gapped nodes. Every blob is verified as a pull verifies it: the digest and size of each blob against its
descriptor (OCI layout), and each layer's uncompressed digest against the config's diff_ids (both formats).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cripy.errors import DataLoss, InvalidArgument, NotFound
from cripy.images.manifest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    check_config_matches,
    digest_of,
    hasher_for,
    host_platform,
    parse_descriptor,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from cripy.images import progress
from cripy.images.progress import LayerProgress, Operation, ProgressBoard
from cripy.images.reference import Reference, parse_normalized
from cripy.images.store import Image, ImageStore, LayerSource
from cripy.timing import step

log = logging.getLogger(__name__)

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Found:
    """One image found in an archive: how to read its parts, and the names it carries."""

    manifest: bytes
    manifest_type: str
    manifest_digest: str
    config: Descriptor
    layers: list[Descriptor]
    names: list[Reference]


class Importer:
    """Loads archives into an ImageStore."""

    def __init__(self, store: ImageStore, scratch: Path, board: ProgressBoard | None = None) -> None:
        self._store = store
        self._scratch = scratch
        self._board = board or ProgressBoard()

    async def import_path(self, path: Path, name: str = "", progress_id: str = "") -> list[Image]:
        """Import every image of the archive at `path`; with a progress_id, its progress is on the board under
        that id for a client to watch."""
        operation = self._board.begin(progress.IMPORT, progress_id) if progress_id else Operation(progress.IMPORT, "")
        try:
            with step("image.import"):
                images = await self._import_path(path, name, operation)
        except BaseException as e:
            self._board.finish(operation, e)
            raise
        self._board.finish(operation, image_id=images[-1].id if images else "")
        return images

    async def _import_path(self, path: Path, name: str, operation: Operation) -> list[Image]:
        if not path.exists():
            raise NotFound(f"import: {path} does not exist")
        extra = [parse_normalized(name)] if name else []
        if path.is_dir():
            return await self._import_dir(path, extra, operation)
        with tempfile.TemporaryDirectory(dir=self._scratch, prefix="import-") as tmp:
            await asyncio.to_thread(_extract_archive, path, Path(tmp))
            return await self._import_dir(Path(tmp), extra, operation)

    async def _import_dir(self, root: Path, extra: list[Reference], operation: Operation) -> list[Image]:
        if (root / "oci-layout").exists():
            found = await asyncio.to_thread(_read_oci_layout, root)
        elif (root / "manifest.json").exists():
            found = await asyncio.to_thread(_read_docker_archive, root)
        else:
            raise InvalidArgument(f"import: {root} is neither an OCI image layout nor a docker-archive")
        images = []
        for item in found:
            names = item.names + [ref for ref in extra if ref not in item.names]
            if not names:
                raise InvalidArgument(
                    f"import: image {item.manifest_digest} in the archive carries no name: give one with --name"
                )
            images.append(await self._add(root, item, names, operation))
        return images

    async def _add(self, root: Path, item: _Found, names: list[Reference], operation: Operation) -> Image:
        config_bytes = await asyncio.to_thread(_read_verified, root, item.config)
        config = parse_image_config(config_bytes)
        check_config_matches(ImageManifest(item.manifest_type, item.config, item.layers), config)
        shown = [LayerProgress(desc.digest, desc.size) for desc in item.layers]
        operation.set_layers(shown)
        layers = [
            LayerSource(diff_id, desc.media_type, _copier(root, desc, layer), desc.digest, progress=layer)
            for desc, diff_id, layer in zip(item.layers, config.diff_ids, shown)
        ]
        image = await self._store.add_image(
            manifest=item.manifest,
            manifest_type=item.manifest_type,
            manifest_digest=item.manifest_digest,
            config=config_bytes,
            config_digest=item.config.digest,
            layers=layers,
            names=names,
        )
        log.info("imported %s as image %s", ", ".join(map(str, names)), image.id)
        return image


def _copier(root: Path, desc: Descriptor, shown: LayerProgress) -> Callable:
    async def copy(dest: Path) -> None:
        shown.begin(progress.COPYING)
        await asyncio.to_thread(_copy_verified, _blob_path(root, desc), desc, dest, shown.advance)

    return copy


def _blob_path(root: Path, desc: Descriptor) -> Path:
    if desc.urls and desc.urls[0].startswith("file:"):
        return root / desc.urls[0].removeprefix("file:")
    algorithm, encoded = desc.digest.split(":", 1)
    return root / "blobs" / algorithm / encoded


def _copy_verified(source: Path, desc: Descriptor, dest: Path, progress: Callable[[int], None] = lambda _: None) -> None:
    hasher = hasher_for(desc.digest)
    size = 0
    try:
        with open(source, "rb") as src, open(dest, "xb") as out:
            while chunk := src.read(COPY_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
                progress(size)
    except FileNotFoundError as e:
        dest.unlink(missing_ok=True)
        raise DataLoss(f"import: blob {desc.digest} is missing from the archive ({source.name})") from e
    try:
        _check_blob(desc, f"{hasher.name}:{hasher.hexdigest()}", size)
    except DataLoss:
        dest.unlink(missing_ok=True)
        raise


def _read_verified(root: Path, desc: Descriptor) -> bytes:
    try:
        data = _blob_path(root, desc).read_bytes()
    except FileNotFoundError as e:
        raise DataLoss(f"import: blob {desc.digest} is missing from the archive") from e
    _check_blob(desc, digest_of(data, desc.digest.split(":", 1)[0]), len(data))
    return data


def _check_blob(desc: Descriptor, actual: str, size: int) -> None:
    if actual != desc.digest or size != desc.size:
        raise DataLoss(
            f"import: blob {desc.digest} does not match its descriptor: got {actual}, {size} bytes "
            f"(expected {desc.size})"
        )


def _extract_archive(archive: Path, dest: Path) -> None:
    """Unpack an archive's plain files, refusing anything that would land outside `dest`."""
    import tarfile  # only imports need it: not loaded at start-up

    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise InvalidArgument(f"import: {archive} is not a readable tar archive: {e}") from e


def _read_oci_layout(root: Path) -> list[_Found]:
    index_bytes = (root / "index.json").read_bytes()
    index = parse_manifest(OCI_INDEX, index_bytes)
    if not isinstance(index, ImageIndex):
        raise InvalidArgument(f"import: {root}/index.json is not an image index")
    found: list[_Found] = []
    for desc in index.manifests:
        names = _names_from_annotations(desc.annotations)
        manifest_bytes = _read_verified(root, desc)
        document = parse_manifest(desc.media_type, manifest_bytes)
        if isinstance(document, ImageIndex):
            chosen = select_platform(document, host_platform())
            manifest_bytes = _read_verified(root, chosen)
            document = parse_manifest(chosen.media_type, manifest_bytes)
            desc = chosen
        if not isinstance(document, ImageManifest):
            raise InvalidArgument(f"import: {desc.digest} is not an image manifest")
        found.append(_Found(manifest_bytes, document.media_type, desc.digest, document.config, document.layers, names))
    if not found:
        raise InvalidArgument(f"import: {root}/index.json lists no image")
    return found


def _names_from_annotations(annotations: Any) -> list[Reference]:
    names: list[Reference] = []
    for key in (CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION):
        value = dict(annotations or {}).get(key, "")
        if not value or ("/" not in value and ":" not in value and "@" not in value):
            continue  # a bare tag names nothing by itself
        try:
            names.append(parse_normalized(value))
        except InvalidArgument:
            log.warning("import: ignoring annotation %s=%r: not an image reference", key, value)
    return names


def _read_docker_archive(root: Path) -> list[_Found]:
    try:
        entries = json.loads((root / "manifest.json").read_text())
    except ValueError as e:
        raise InvalidArgument(f"import: manifest.json of the docker-archive is not JSON: {e}") from e
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument("import: manifest.json of the docker-archive lists no image")
    found: list[_Found] = []
    for entry in entries:
        config = _local_descriptor(root, entry.get("Config", ""), OCI_CONFIG)
        layers = [_local_descriptor(root, layer, OCI_LAYER_TAR) for layer in entry.get("Layers", [])]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _descriptor_json(config),
                "layers": [_descriptor_json(layer) for layer in layers],
            },
            separators=(",", ":"),
        ).encode()
        names = [parse_normalized(tag) for tag in entry.get("RepoTags") or []]
        digest = digest_of(manifest)
        found.append(_Found(manifest, OCI_MANIFEST, digest, config, layers, names))
    return found


def _local_descriptor(root: Path, relative: str, media_type: str) -> Descriptor:
    """A descriptor for a file named by a docker-archive's manifest.json, its digest computed from the file."""
    if not relative or relative.startswith("/") or ".." in Path(relative).parts:
        raise InvalidArgument(f"import: docker-archive names an unusable path {relative!r}")
    path = root / relative
    if not path.is_file():
        raise DataLoss(f"import: docker-archive file {relative} is missing")
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            hasher.update(chunk)
    return parse_descriptor(
        {"mediaType": media_type, "digest": "sha256:" + hasher.hexdigest(), "size": path.stat().st_size,
         "urls": ["file:" + relative]},
        f"docker-archive file {relative}",
    )


def _descriptor_json(desc: Descriptor) -> dict:
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}

