"""PullImage: from a reference as kubelet writes it to an image in the store.

Resolution (short names, registry rewrites, mirrors, blocked registries) comes from registries.conf, credentials
from the CRI request or auth.json; then the manifest, which the trust gate (trust/gate.py: policy.json and
signatures) must accept before anything else is fetched; then the config (an index first picks this node's
platform) and the layers, several at a time. Two pulls of the same image at the same moment are one pull. Which
source failed and why is kept, so that a failed pull says what was tried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cripy import timing
from cripy.config import ImagesConfig
from cripy.errors import (
    CripyError,
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cripy.images.auth import AuthStore, Credentials, default_auth_paths, load_auth_files
from cripy.images.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    check_config_matches,
    host_platform,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from cripy.images.reference import Reference, is_short_name
from cripy.images.registries import PullSource, RegistriesConf, load_registries_conf
from cripy.images import progress
from cripy.images.progress import LayerProgress, ProgressBoard, PullCounts
from cripy.images.store import Image, ImageStore, LayerSource, LayerStream
from cripy.linux.memory import release_free_heap
from cripy.timing import step

if TYPE_CHECKING:
    # The registry client and its HTTP stack are imported at the first pull, not at start-up.
    from cripy.images.http import Client as HTTPClient
    from cripy.images.registry import BlobSink, RegistryClient
    from cripy.images.trust.gate import SignatureCheck

log = logging.getLogger(__name__)

PROGRESS_LOG_INTERVAL = 5.0
# docker.io is a name; the registry API behind it answers at this host.
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
MIRROR_RETRIES = 1
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# Errors after which the next mirror or search registry is worth trying; others (bad credentials, a refused
# policy) are the answer.
_TRY_NEXT = (NotFound, Unavailable, DataLoss, DeadlineExceeded)


@dataclass(frozen=True)
class PullRequest:
    image: str
    credentials: Credentials | None = None
    credentials_server: str = ""
    # The Kubernetes namespace of the pod the image is pulled for ("" if none): picks a per-namespace policy.
    namespace: str = ""


class Puller:
    """Pulls images into one ImageStore, with the pull settings of the config."""

    def __init__(self, store: ImageStore, settings: ImagesConfig, board: ProgressBoard | None = None) -> None:
        self._store = store
        self._settings = settings
        self.board = board or ProgressBoard()
        # Each pull in flight, with the call that started it (a joining call is timed under it).
        self._in_flight: dict[tuple[str, str, str], tuple[asyncio.Task[Image], timing.Call | None]] = {}
        self._layer_slots = asyncio.Semaphore(settings.max_parallel_layers)
        self._session: HTTPClient | None = None

    def reconfigure(self, settings: ImagesConfig) -> None:
        """Apply settings changed by a reload; pulls in flight finish with the old ones."""
        self._settings = settings
        self._layer_slots = asyncio.Semaphore(settings.max_parallel_layers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def registries(self) -> RegistriesConf:
        """registries.conf as it is now: read on every use, so edits apply without a restart."""
        return load_registries_conf(
            Path(self._settings.registries_conf), Path(self._settings.registries_conf_d)
        )

    def platform(self) -> Platform:
        if not self._settings.platform:
            return host_platform()
        parts = self._settings.platform.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(f"images.platform {self._settings.platform!r} is not os/arch[/variant]")
        return Platform(*parts)

    async def pull(self, request: PullRequest) -> Image:
        """Pull, or join the identical pull already running. The pull is a task of its own, so a client that
        gives up does not waste the work: its retry joins the same pull."""
        # Pulls for different namespaces may be judged by different policies: they never share a pull.
        key = (request.image, _credentials_key(request.credentials), request.namespace)
        if key in self._in_flight:
            running, caller = self._in_flight[key]
            log.info("pull of %s already in progress: waiting for it", request.image)
            timing.join(caller)
        else:
            running = asyncio.get_running_loop().create_task(self._tracked_pull(request), name=f"pull {request.image}")
            self._in_flight[key] = (running, timing.current())
            running.add_done_callback(lambda _: self._pull_done(key))
        return await asyncio.shield(running)

    async def _tracked_pull(self, request: PullRequest) -> Image:
        """The pull, with its progress on the board and its outcome counted; its call stays listed in flight
        until it ends, even if the client gave up."""
        operation = self.board.begin(progress.PULL, request.image)
        with timing.hold(), step("image.pull"):
            try:
                image = await self._pull(request, operation)
            except BaseException as e:
                self.board.finish(operation, e)
                reason = _reason(e)
                self.board.pulls.failed[reason] = self.board.pulls.failed.get(reason, 0) + 1
                raise
        self.board.finish(operation, image_id=image.id)
        self.board.pulls.succeeded += 1
        return image

    def _pull_done(self, key: tuple[str, str, str]) -> None:
        self._in_flight.pop(key, None)
        if not self._in_flight:
            # The last pull's buffers are free now; without this the daemon keeps its peak RSS.
            asyncio.get_running_loop().run_in_executor(None, release_free_heap)

    async def _pull(self, request: PullRequest, operation: progress.Operation) -> Image:
        # Like the HTTP stack, the trust gate (YAML, URL parsing, signature formats) loads at the first pull.
        from cripy.images.trust.gate import SignatureCheck, load_pull_policy, refuse_outright

        # File reads and parsing: in a thread, not on the event loop that serves every other CRI call.
        settings = self._settings
        with step("image.resolve"):
            conf, policy, auth_store = await asyncio.to_thread(
                lambda: (self.registries(), load_pull_policy(settings, request.namespace), self._auth_store())
            )
        failures: list[tuple[str, CripyError]] = []
        for candidate in conf.candidates(request.image):
            match = policy.requirements_for(candidate)
            refuse_outright(match, candidate)
            check = SignatureCheck(match, Path(settings.registries_d), _certs_dir(settings))
            for source in conf.pull_sources(candidate):
                where = f"{source.reference}" + (" (mirror)" if source.is_mirror else "")
                credentials = self._credentials_for(source, request, auth_store)
                try:
                    return await self._pull_from(candidate, source, credentials, check, operation)
                except _TRY_NEXT as e:
                    log.warning("pull of %s from %s failed: %s", candidate, where, e)
                    failures.append((where, e))
        raise _summarize(request.image, failures)

    def _auth_store(self) -> AuthStore:
        paths = [Path(self._settings.auth_file)] if self._settings.auth_file else []
        return load_auth_files(paths + default_auth_paths())

    @staticmethod
    def _credentials_for(source: PullSource, request: PullRequest, auth_store: AuthStore) -> Credentials | None:
        """CRI credentials go only where they belong: to the registry their server_address names, or, when it
        names none, to the primary location of a fully qualified image. Never to a mirror or to another search
        registry of a short name. Everything else is looked up in auth.json."""
        if request.credentials is not None:
            server = _registry_host(request.credentials_server)
            if server:
                if server == _registry_host(source.reference.domain):
                    return request.credentials
            elif not source.is_mirror and not is_short_name(request.image):
                return request.credentials
        return auth_store.lookup(source.reference)

    async def _pull_from(self, wanted: Reference, source: PullSource, credentials: Credentials | None,
                         check: SignatureCheck, operation: progress.Operation) -> Image:
        ref = source.reference
        client = registry_client(self._settings, source, credentials, self._http())
        started = time.monotonic()
        with step("image.manifest"):
            media_type, body, digest = await client.get_manifest(ref.path, ref.digest or ref.tag or "latest")
            # The trust gate: signatures of the manifest the reference resolves to, before anything else is fetched.
            from cripy.images.trust.gate import enforce

            await enforce(check, wanted, ref, body, digest, client, self._http())
            document = parse_manifest(media_type, body)
            if isinstance(document, ImageIndex):
                chosen = select_platform(document, self.platform())
                log.info("pull %s: index %s, platform %s -> %s", wanted, digest, self.platform(), chosen.digest)
                media_type, body, digest = await client.get_manifest(ref.path, chosen.digest)
                document = parse_manifest(media_type, body)
                if not isinstance(document, ImageManifest):
                    raise InvalidArgument(f"manifest {chosen.digest} of {ref} is an index inside an index")
        manifest = document
        with step("image.config"):
            config_bytes = await self._fetch_small_blob(client, ref, manifest.config)
        config = parse_image_config(config_bytes)
        check_config_matches(manifest, config)
        shown = [LayerProgress(desc.digest, desc.size) for desc in manifest.layers]
        operation.set_layers(shown)
        layers = [
            LayerSource(
                diff_id=diff_id,
                media_type=desc.media_type,
                fetch=None,
                label=desc.digest,
                stream=self._layer_streamer(client, ref, desc, wanted, layer),
                progress=layer,
            )
            for desc, diff_id, layer in zip(manifest.layers, config.diff_ids, shown)
        ]
        image = await self._store.add_image(
            manifest=body,
            manifest_type=media_type,
            manifest_digest=digest,
            config=config_bytes,
            config_digest=manifest.config.digest,
            layers=layers,
            names=[wanted if wanted.digest or wanted.tag else wanted.with_tag("latest")],
        )
        log.info("pulled %s from %s in %.2fs: image %s", wanted, ref.domain, time.monotonic() - started, image.id)
        return image

    async def _fetch_small_blob(self, client: RegistryClient, ref: Reference, desc: Descriptor) -> bytes:
        """A small blob (the config) into memory, verified like any download."""
        parts: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            parts.append(chunk)

        await client.stream_blob(ref.path, desc, collect, _ByteCount(self.board.pulls), reset=parts.clear)
        return b"".join(parts)

    def _layer_streamer(self, client: RegistryClient, ref: Reference, desc: Descriptor, wanted: Reference,
                        shown: LayerProgress) -> LayerStream:
        """Download straight into the store's unpacker: no blob file written and read back, and the unpacking
        of a layer overlaps its own download. The slot is held until the last byte is handed on."""
        async def stream(sink: BlobSink) -> None:
            slots = self._layer_slots  # a reload may replace it meanwhile: release the one acquired
            with step("layer.wait", desc.digest):
                await slots.acquire()
            try:
                log.info("pull %s: downloading layer %s (%d bytes) from %s", wanted, desc.digest, desc.size, ref.domain)
                shown.begin()
                with step("layer.download", desc.digest):
                    await client.stream_blob(ref.path, desc, sink, _LayerFeed(str(wanted), shown, self.board.pulls))
                self.board.pulls.layers += 1
            finally:
                slots.release()

        return stream

    def _http(self) -> HTTPClient:
        from cripy.images.http import Client

        if self._session is None or self._session.closed:
            self._session = Client(user_agent="cripy/0.1")
        return self._session


def registry_client(settings: ImagesConfig, source: PullSource, credentials: Credentials | None,
                    session: HTTPClient) -> RegistryClient:
    """The client for one pull source, with the pull settings of the config."""
    from cripy.images.registry import RegistryClient

    ref = source.reference
    return RegistryClient(
        DOCKER_HUB_ENDPOINT if ref.domain == "docker.io" else ref.domain,
        insecure=source.insecure,
        credentials=credentials,
        session=session,
        certs_dir=_certs_dir(settings),
        # A mirror is an optimisation: one that is down costs one retry, not the primary's full backoff.
        retries=min(settings.pull_retries, MIRROR_RETRIES) if source.is_mirror else settings.pull_retries,
        backoff=settings.pull_retry_backoff_seconds,
        min_throughput=settings.pull_min_throughput_bytes,
        throughput_window=settings.pull_throughput_window_seconds,
    )


def _certs_dir(settings: ImagesConfig) -> Path | None:
    return Path(settings.certs_dir) if settings.certs_dir else None


class _ByteCount:
    """Counts the bytes a blob download receives (a download that starts over counts its bytes again)."""

    def __init__(self, counts: PullCounts) -> None:
        self._counts = counts
        self._last = 0

    def __call__(self, done: int, total: int) -> None:
        self._counts.bytes += done - self._last if done >= self._last else done
        self._last = done


class _LayerFeed(_ByteCount):
    """A layer download's progress: counted, shown (progress board) and logged every few seconds."""

    def __init__(self, image: str, shown: LayerProgress, counts: PullCounts) -> None:
        super().__init__(counts)
        self._image = image
        self._shown = shown
        self._logged = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        super().__call__(done, total)
        self._shown.advance(done)
        now = time.monotonic()
        if now - self._logged >= PROGRESS_LOG_INTERVAL or (done == total and total > 0):
            self._logged = now
            percent = 100.0 * done / total if total else 0.0
            log.info("pull %s: layer %s %d/%d bytes (%.0f%%)", self._image, self._shown.digest, done, total, percent)


def _reason(error: BaseException) -> str:
    """A failed pull's reason as a metric label: its error kind in snake case (not_found, unavailable, ...)."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    # The kind is the cripy.errors class the error is (or derives from): a fixed set, whatever subclass raised it.
    kind = next((k.__name__ for k in type(error).__mro__ if k.__module__ == CripyError.__module__
                 and k is not CripyError and issubclass(k, CripyError)), "Internal")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in kind).lstrip("_")


def _registry_host(server: str) -> str:
    """"https://index.docker.io/v1/" -> "docker.io": the registry a server address or domain names."""
    host = server.strip().removeprefix("https://").removeprefix("http://").split("/")[0].lower()
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def _credentials_key(credentials: Credentials | None) -> str:
    if credentials is None:
        return ""
    return f"{credentials.username}\0{hash((credentials.password, credentials.identity_token, credentials.registry_token))}"


def _summarize(image: str, failures: list[tuple[str, CripyError]]) -> CripyError:
    """One error for a pull that failed everywhere: the kind of the last telling failure, every source named."""
    if not failures:
        return NotFound(f"image {image}: no registry to pull it from")
    if len(failures) == 1:
        return failures[0][1]
    detail = "; ".join(f"{where}: {error}" for where, error in failures)
    telling = [error for _, error in failures if not isinstance(error, NotFound)]
    if not telling:
        return NotFound(f"image {image} not found in any source: {detail}")
    return type(telling[-1])(f"pulling {image} failed from every source: {detail}")
