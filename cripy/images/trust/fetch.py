"""Fetching an image's signatures from where registries.d says they are, through the pull's own source.

Both kinds are looked up for the physical reference (the registry or mirror the manifest came from), by the
digest of the top-level manifest:
  * simple signing, from the lookaside: <base>/<repository path>@<algo>=<hex>/signature-<n> for n = 1, 2, ...
    until the first missing one; file:// is read from disk, http(s):// fetched with the system CAs plus the
    certs.d directory of that server;
  * sigstore, attached in the registry: the manifest tagged "<algo>-<hex>.sig" in the same repository, whose
    layers of type application/vnd.dev.cosign.simplesigning.v1+json are signatures. Fetched by the pull's
    RegistryClient, so mirrors, credentials, TLS and retries are the pull's.
A signature source that does not answer gives a `Found` with `error` set: the requirement is refused, never
skipped.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import unquote

from cripy.errors import CripyError, NotFound
from cripy.images import http
from cripy.images.distribution import build_ssl_context
from cripy.images.manifest import DOCKER_MANIFEST_V2, OCI_MANIFEST, ImageManifest, parse_manifest
from cripy.images.reference import Reference
from cripy.images.registry import RegistryClient
from cripy.images.trust.evaluate import Found
from cripy.images.trust.registries_d import SignatureLocations
from cripy.images.trust.sigstore import SIGNATURE_MEDIA_TYPE, SigstoreSignature

MAX_SIGNATURES = 64
MAX_SIGNATURE_SIZE = 4 * 1024 * 1024  # containers/image's limit for one signature
LOOKASIDE_TIMEOUT = 30.0


class _Missing(Exception):
    """No signature with this index: the list ends."""


async def lookaside_signatures(locations: SignatureLocations, physical: Reference, digest: str,
                               session: http.Client, certs_dir: Path | None) -> Found:
    base = locations.lookaside.rstrip("/")
    algorithm, _, encoded = digest.partition(":")
    directory = f"{base}/{physical.path}@{algorithm}={encoded}"
    where = f"lookaside {directory}/signature-1 (configured by {locations.lookaside_origin})"
    signatures: list[bytes] = []
    context: ssl.SSLContext | None = None  # every signature of the list is on one server: one context for all
    try:
        for index in range(1, MAX_SIGNATURES + 1):
            location = http.URL(f"{directory}/signature-{index}")
            if location.scheme == "file":
                data = await asyncio.to_thread(_read_file, Path(unquote(location.path)))
                signatures.append(data)
                continue
            if location.scheme == "https" and context is None:
                endpoint = f"{location.host}:{location.port}" if location.explicit_port else location.host
                context = await asyncio.to_thread(build_ssl_context, endpoint, certs_dir, True)
            data = await _http_get(session, location, context)
            signatures.append(data)
    except _Missing:
        pass
    except (OSError, http.HTTPError, TimeoutError, ValueError) as exc:
        return Found(where, error=f"reading signature {len(signatures) + 1} failed: {type(exc).__name__}: {exc}")
    return Found(where, tuple(signatures))


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGNATURE_SIZE + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise _Missing() from None
    if len(data) > MAX_SIGNATURE_SIZE:
        raise ValueError(f"{path} is larger than {MAX_SIGNATURE_SIZE} bytes")
    return data


async def _http_get(session: http.Client, url: http.URL, context: ssl.SSLContext | None) -> bytes:
    async with asyncio.timeout(LOOKASIDE_TIMEOUT):
        resp = await http.get_following_redirects(session, url, ssl_context=context)
        try:
            if resp.status == 404:
                raise _Missing()
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status} from {url}")
            body = bytearray()
            while chunk := await resp.read(64 * 1024):
                body += chunk
                if len(body) > MAX_SIGNATURE_SIZE:
                    raise ValueError(f"{url} is larger than {MAX_SIGNATURE_SIZE} bytes")
        finally:
            resp.release()
        return bytes(body)


async def sigstore_signatures(locations: SignatureLocations, client: RegistryClient, physical: Reference,
                              digest: str) -> Found:
    algorithm, _, encoded = digest.partition(":")
    tag = f"{algorithm}-{encoded}.sig"
    where = f"sigstore attachment {physical.domain}/{physical.path}:{tag}"
    if not locations.use_sigstore_attachments:
        return Found(where, note=f"use-sigstore-attachments is not enabled for {physical.name} in registries.d "
                                 f"({locations.sigstore_origin})")
    try:
        media_type, body, _ = await client.get_manifest(physical.path, tag, accept=(OCI_MANIFEST, DOCKER_MANIFEST_V2))
    except NotFound:
        return Found(where)
    except CripyError as exc:
        return Found(where, error=str(exc))
    try:
        manifest = parse_manifest(media_type, body)
    except CripyError as exc:
        return Found(where, error=f"the attachment manifest is malformed: {exc}")
    if not isinstance(manifest, ImageManifest):
        return Found(where, error="the attachment is an index, not a signature manifest")
    layers = [layer for layer in manifest.layers if layer.media_type == SIGNATURE_MEDIA_TYPE][:MAX_SIGNATURES]
    signatures = []
    for layer in layers:
        if layer.size > MAX_SIGNATURE_SIZE:
            return Found(where, error=f"signature {layer.digest} is larger than {MAX_SIGNATURE_SIZE} bytes")
        parts: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            parts.append(chunk)

        try:
            await client.stream_blob(physical.path, layer, collect, reset=parts.clear)
        except CripyError as exc:
            return Found(where, error=f"fetching signature {layer.digest}: {exc}")
        signatures.append(SigstoreSignature(b"".join(parts), dict(layer.annotations)))
    skipped = len(manifest.layers) - len(layers)
    note = f"{skipped} attachment(s) of other types ignored" if skipped and not signatures else ""
    return Found(where, tuple(signatures), note=note)
