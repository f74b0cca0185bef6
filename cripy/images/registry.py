"""OCI distribution registry client: manifests and blobs over HTTP(S), with auth, retries, resume and a throughput floor.

Owns the I/O side of a pull for one registry endpoint: scheme selection (https, or https-then-http for insecure
registries), answering WWW-Authenticate challenges (with registryauth.py's Authorization), manual redirect
handling (credentials never leave the registry's origin), retries with exponential backoff, resumable blob
downloads verified against their descriptor, and stall detection. What can be decided without a socket (challenge
parsing, error bodies, headers, names, the throughput monitor, TLS from certs.d) is in distribution.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Sequence, TypeVar

from cripy.errors import (
    AlreadyExists,
    DataLoss,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from cripy.images import http
from cripy.images.auth import Credentials
from cripy.images.distribution import (
    MAX_ERROR_BODY,
    MAX_RETRY_AFTER,
    ThroughputMonitor,
    Transient,
    build_ssl_context,
    check_endpoint,
    check_manifest_reference,
    check_repository,
    clean_media_type,
    content_range_start,
    describe,
    parse_www_authenticate,
    pick_challenge,
    registry_error_text,
    retry_after_seconds,
)
from cripy.images.manifest import ALL_MANIFEST_TYPES, Descriptor, digest_of, hasher_for, is_digest
from cripy.images.registryauth import Authorizer

T = TypeVar("T")

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # same limit as containerd: a manifest larger than this is abuse, not an image
MAX_REDIRECTS = 10
CHUNK_SIZE = 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# --- the client ------------------------------------------------------------------------------------------------


# Receives one verified-as-it-goes blob chunk; awaiting it is how a slow consumer holds the download back.
BlobSink = Callable[[bytes], Awaitable[None]]


class _BlobReceiver:
    """What a blob download has handed on so far: byte count, running hash, and the sink the bytes go to.

    Bytes reach the sink in order and exactly once. Resuming after a cut continues the same stream; only a sink
    that can start over (`reset`) allows a download to restart from byte 0.
    """

    def __init__(self, sink: BlobSink, reset: Callable[[], None] | None, digest: str, size: int, what: str) -> None:
        self._sink = sink
        self._reset = reset
        self._digest = digest
        self._size = size
        self._what = what
        self.hasher = hasher_for(digest)
        self.received = 0
        self.sink_wait = 0.0  # seconds spent waiting for the sink: not the network's fault

    async def write(self, chunk: bytes) -> None:
        if self.received + len(chunk) > self._size:
            raise DataLoss(
                f"{self._what}: the server sent more than the {self._size} bytes the descriptor declares"
            )
        self.hasher.update(chunk)
        self.received += len(chunk)
        started = time.monotonic()
        await self._sink(chunk)
        self.sink_wait += time.monotonic() - started

    def restart(self, why: str) -> None:
        """Start over from byte 0 (the sink permitting), after a server answered a resume unusably."""
        if self._reset is None:
            raise Unavailable(f"{why}; the download cannot start over because its bytes were already consumed")
        self._reset()
        self.hasher = hasher_for(self._digest)
        self.received = 0


class _PartialFile:
    """The "<dest>.partial" file of fetch_blob, as a sink that can start over."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb")

    async def write(self, chunk: bytes) -> None:
        # Plain writes from the event loop: they land in the page cache.
        self._file.write(chunk)

    def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def close(self) -> None:
        self._file.close()



class RegistryClient:
    """Talks to one registry endpoint ("host[:port]") on behalf of pulls; holds its scheme and token cache."""

    def __init__(
        self,
        endpoint: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        session: http.Client,
        certs_dir: Path | None = Path("/etc/containers/certs.d"),
        retries: int = 4,
        backoff: float = 0.5,
        max_retry_after: float = MAX_RETRY_AFTER,
        min_throughput: int = 0,
        throughput_window: float = 30.0,
        user_agent: str = "cripy/0.1",
    ) -> None:
        check_endpoint(endpoint)
        if retries < 0 or backoff < 0 or min_throughput < 0 or throughput_window <= 0:
            raise InvalidArgument(
                f"invalid registry client settings for {endpoint}: retries={retries} backoff={backoff} "
                f"min_throughput={min_throughput} throughput_window={throughput_window}"
            )
        self.endpoint = endpoint
        self.insecure = insecure
        self._session = session
        self._retries = retries
        self._backoff = backoff
        self._max_retry_after = max_retry_after  # the longest Retry-After a registry may make a retry wait
        self._min_throughput = min_throughput
        self._throughput_window = throughput_window
        self._user_agent = user_agent
        self._ssl = build_ssl_context(endpoint, certs_dir, verify=not insecure)
        self._scheme: str | None = None if insecure else "https"
        self._https_error = ""  # why an insecure registry fell back to http, for error messages
        self._scheme_lock = asyncio.Lock()
        self._auth = Authorizer(endpoint, credentials, user_agent, self._send)

    @property
    def scheme(self) -> str | None:
        """The scheme in use ('https' or 'http'), None until an insecure registry has been probed."""
        return self._scheme

    # --- public operations ---------------------------------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, accept: Sequence[str] = ALL_MANIFEST_TYPES
    ) -> tuple[str, bytes, str]:
        """(media type from Content-Type, body, digest). A digest reference is verified against the body."""
        check_repository(repository)
        check_manifest_reference(reference)
        by_digest = is_digest(reference)
        what = f"manifest {repository}{'@' if by_digest else ':'}{reference}"
        headers = {"Accept": ", ".join(accept)}

        async def attempt() -> tuple[str, str, bytes]:
            resp = await self._registry_request("GET", repository, f"manifests/{reference}", headers, what)
            try:
                body = await http.read_limited(resp, MAX_MANIFEST_SIZE, what, truncate=False)
            except (http.HTTPError, TimeoutError) as e:
                raise Transient(f"reading {what}: {describe(e)}") from None
            finally:
                resp.release()
            return resp.headers.get("Content-Type", ""), resp.headers.get("Docker-Content-Digest", ""), body

        content_type, header_digest, body = await self._with_retries(attempt, what)
        if by_digest:
            got = digest_of(body, reference.split(":", 1)[0])
            if got != reference:
                raise DataLoss(f"{what} from {self.endpoint}: digest mismatch, got {got}")
            digest = reference
        else:
            digest = digest_of(body)
            if is_digest(header_digest):
                got = digest_of(body, header_digest.split(":", 1)[0])
                if got != header_digest:
                    raise DataLoss(
                        f"{what} from {self.endpoint}: Docker-Content-Digest says {header_digest} "
                        f"but the body hashes to {got}"
                    )
        return clean_media_type(content_type), body, digest

    async def fetch_blob(
        self,
        repository: str,
        desc: Descriptor,
        dest: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Download desc into dest, verified by size and digest; nothing is left at dest or beside it on failure.

        Writes to "<dest>.partial" (created exclusively) and renames it over dest when complete.
        """
        check_repository(repository)
        hasher_for(desc.digest)  # validates the digest before anything touches the disk
        partial = dest.with_name(dest.name + ".partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise AlreadyExists(
                f"{partial} exists: another download of {desc.digest} is running or a stale partial file "
                f"was left behind"
            ) from None
        file = _PartialFile(fd)
        try:
            await self._receive_blob(repository, desc, file.write, file.reset, progress)
            file.close()
            os.replace(partial, dest)
        except BaseException:
            # Also on cancellation: a partial file must never be mistaken for content.
            file.close()
            partial.unlink(missing_ok=True)
            raise

    async def stream_blob(
        self,
        repository: str,
        desc: Descriptor,
        sink: BlobSink,
        progress: Callable[[int, int], None] | None = None,
        *,
        reset: Callable[[], None] | None = None,
    ) -> None:
        """Download desc and hand its bytes to `sink` as they arrive, in order and each exactly once.

        Returns only when all desc.size bytes were delivered and their digest matched; raises otherwise (DataLoss
        for a wrong size or digest), so the consumer must treat what it got as unverified until then. A cut
        download resumes where it stopped; a server that cannot resume fails the download (Unavailable), unless
        `reset` is given: it makes the sink forget what it got, and the download starts over from byte 0.
        Whatever `sink` raises ends the download and is raised as is.
        """
        check_repository(repository)
        hasher_for(desc.digest)
        await self._receive_blob(repository, desc, sink, reset, progress)

    async def _receive_blob(
        self,
        repository: str,
        desc: Descriptor,
        sink: BlobSink,
        reset: Callable[[], None] | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        what = f"blob {desc.digest} from {self.endpoint}/{repository}"
        blob = _BlobReceiver(sink, reset, desc.digest, desc.size, what)
        monitor = None
        if self._min_throughput > 0:
            monitor = ThroughputMonitor(
                self._min_throughput,
                self._throughput_window,
                f"pull of layer {desc.digest} from {self.endpoint}/{repository}",
                start=time.monotonic(),
            )
        await self._download(repository, desc, blob, monitor, progress, what)
        got = f"{desc.digest.split(':', 1)[0]}:{blob.hasher.hexdigest()}"
        if got != desc.digest:
            raise DataLoss(f"{what}: digest mismatch, got {got}")

    # --- blob download -------------------------------------------------------------------------------------

    async def _download(
        self,
        repository: str,
        desc: Descriptor,
        blob: _BlobReceiver,
        monitor: ThroughputMonitor | None,
        progress: Callable[[int, int], None] | None,
        what: str,
    ) -> None:
        failures = 0
        while True:
            before = blob.received
            try:
                await self._download_attempt(repository, desc, blob, monitor, progress, what)
                if blob.received == desc.size:
                    return
                raise Transient(f"connection closed after {blob.received} of {desc.size} bytes")
            except Transient as e:
                last, retry_after = e.description, e.retry_after
            # A resume that made progress is not a failure: long layers on flaky links must still finish.
            failures = 0 if blob.received > before else failures + 1
            if failures > self._retries:
                raise self._unavailable(what, self._retries + 1, last)
            if failures:
                await asyncio.sleep(self._delay(failures - 1, retry_after))

    async def _download_attempt(
        self,
        repository: str,
        desc: Descriptor,
        blob: _BlobReceiver,
        monitor: ThroughputMonitor | None,
        progress: Callable[[int, int], None] | None,
        what: str,
    ) -> None:
        offset = blob.received
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._guarded(monitor, self._open_blob(repository, desc, headers, what), what)
        try:
            skip = self._position_for_response(resp, blob, offset, desc, what)
            while True:
                chunk = await self._guarded(monitor, resp.read(CHUNK_SIZE), what)
                if not chunk:
                    break
                if skip:  # bytes we already have, sent again by a server that ignored (part of) the Range
                    dropped = min(skip, len(chunk))
                    skip -= dropped
                    chunk = chunk[dropped:]
                    if not chunk:
                        continue
                await blob.write(chunk)
                if monitor is not None:
                    # The monitor's clock stops while the consumer holds the download back.
                    monitor.feed(len(chunk), time.monotonic() - blob.sink_wait)
                if progress is not None:
                    progress(blob.received, desc.size)
        except BaseException:
            resp.close()  # do not return a half-read connection to the pool
            raise
        resp.release()

    def _position_for_response(
        self, resp: http.Response, blob: _BlobReceiver, offset: int, desc: Descriptor, what: str
    ) -> int:
        """How many leading bytes of this response the receiver already has (and must skip)."""
        if resp.status == 416:
            why = f"{what}: the server refused the range request from byte {offset}"
            blob.restart(why)
            raise Transient(why)
        if resp.status == 206:
            start = content_range_start(resp.headers.get("Content-Range", ""))
            if start is None or start > offset:
                why = (f"{what}: asked for bytes from {offset}, got Content-Range "
                       f"{resp.headers.get('Content-Range')!r}")
                blob.restart(why)
                raise Transient(f"{why}; restarting from 0")
            return offset - start
        length = resp.content_length
        if length is not None and length != desc.size:
            raise DataLoss(f"{what}: the server announces {length} bytes but the descriptor says {desc.size}")
        return offset  # the server ignored Range and sends the whole blob again

    async def _guarded(self, monitor: ThroughputMonitor | None, aw: Awaitable[T], what: str) -> T:
        """Await one network step; stalls beyond the throughput window raise DeadlineExceeded."""
        try:
            if monitor is None:
                return await aw
            async with asyncio.timeout(monitor.window) as deadline:
                return await aw
        except TimeoutError as e:
            if monitor is not None and deadline.expired():
                now = time.monotonic()
                monitor.feed(0, now)
                raise monitor.stalled(now) from None
            raise Transient(f"{what}: {describe(e)}") from None
        except http.HTTPError as e:
            raise Transient(f"{what}: {describe(e)}") from None

    async def _open_blob(
        self, repository: str, desc: Descriptor, headers: dict[str, str], what: str
    ) -> http.Response:
        try:
            return await self._registry_request(
                "GET", repository, f"blobs/{desc.digest}", headers, what, passthrough=frozenset({416})
            )
        except NotFound as not_found:
            # Foreign (non-distributable) layers may live only at the URLs the manifest lists.
            problems = []
            for raw in desc.urls:
                try:
                    url = http.URL(raw)
                except ValueError:
                    continue
                if url.scheme not in ("http", "https"):
                    continue
                resp = await self._send("GET", url, {"User-Agent": self._user_agent, **headers})
                if resp.status in (200, 206, 416):
                    return resp
                problems.append(f"{raw}: HTTP {resp.status}")
                resp.release()
            if problems:
                raise NotFound(f"{not_found}; also not at its URLs: {', '.join(problems)}") from None
            raise

    # --- request machinery ---------------------------------------------------------------------------------

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        last = ""
        for n in range(self._retries + 1):
            try:
                return await attempt()
            except Transient as e:
                last, retry_after = e.description, e.retry_after
            if n < self._retries:
                await asyncio.sleep(self._delay(n, retry_after))
        raise self._unavailable(what, self._retries + 1, last)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        return max(self._backoff * (2**attempt), min(retry_after or 0.0, self._max_retry_after))

    def _unavailable(self, what: str, attempts: int, last: str) -> Unavailable:
        fallback = f" (https failed first: {self._https_error})" if self._https_error else ""
        return Unavailable(
            f"registry {self.endpoint} unavailable for {what} after {attempts} attempts; last error: {last}{fallback}"
        )

    async def _base_url(self) -> str:
        if self._scheme is None:
            async with self._scheme_lock:
                if self._scheme is None:
                    self._scheme = await self._probe_scheme()
        return f"{self._scheme}://{self.endpoint}"

    async def _probe_scheme(self) -> str:
        """Insecure registries: https without verification if it answers at all, else plain http."""
        url = http.URL(f"https://{self.endpoint}/v2/")
        try:
            resp = await self._exchange("GET", url, {"User-Agent": self._user_agent})
        except (http.HTTPError, TimeoutError) as e:
            self._https_error = describe(e)
            return "http"
        if resp.status == 401:
            self._auth.challenge = pick_challenge(parse_www_authenticate(resp.headers.getall("WWW-Authenticate")))
        resp.release()
        return "https"

    async def _registry_request(
        self,
        method: str,
        repository: str,
        path: str,
        headers: Mapping[str, str],
        what: str,
        passthrough: frozenset[int] = frozenset(),
    ) -> http.Response:
        """One authorized attempt at /v2/<repository>/<path>; a 2xx (or passthrough) response the caller releases."""
        url = http.URL(f"{await self._base_url()}/v2/{repository}/{path}")
        resp = await self._authorized_exchange(method, repository, url, dict(headers), what)
        if 200 <= resp.status < 300 or resp.status in passthrough:
            return resp
        body = await http.read_limited(resp, MAX_ERROR_BODY, what, truncate=True)
        resp.release()
        raise self._status_error(resp.status, body, what)

    def _status_error(self, status: int, body: bytes, what: str) -> Exception:
        details = registry_error_text(body)
        if status == 401:
            return Unauthenticated(
                f"registry {self.endpoint} refused {self._auth.credential_kind()} for {what}: {details}")
        if status == 403:
            return PermissionDenied(f"registry {self.endpoint} denied access to {what}: {details}")
        if status == 404:
            return NotFound(f"{what} not found on registry {self.endpoint}: {details}")
        if status == 400:
            return InvalidArgument(f"registry {self.endpoint} rejected the request for {what}: {details}")
        return Internal(f"registry {self.endpoint} answered HTTP {status} for {what}: {details}")

    async def _authorized_exchange(
        self, method: str, repository: str, url: http.URL, headers: dict[str, str], what: str
    ) -> http.Response:
        """Anonymous (or cached token) first; on 401 answer the challenge once; a second 401 is final."""
        headers = {"User-Agent": self._user_agent, **headers}
        for round_ in (1, 2):
            auth = await self._auth.authorization(repository, what)
            sent = dict(headers)
            if auth.header:
                sent["Authorization"] = auth.header
            resp = await self._send(method, url, sent)
            if resp.status != 401:
                return resp
            body = await http.read_limited(resp, MAX_ERROR_BODY, what, truncate=True)
            challenge = pick_challenge(parse_www_authenticate(resp.headers.getall("WWW-Authenticate")))
            resp.release()
            if challenge is not None:
                self._auth.challenge = challenge
            self._auth.forget(repository)
            if round_ == 2 or auth.static or challenge is None:
                if challenge is not None and challenge.params.get("error") == "insufficient_scope" \
                        and self._auth.has_credentials():
                    # The credentials were accepted; they just do not reach this repository.
                    raise PermissionDenied(
                        f"registry {self.endpoint} denied {self._auth.credential_kind()} access to {what} "
                        f"(insufficient_scope): {registry_error_text(body)}"
                    )
                raise self._status_error(401, body, what)
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, url: http.URL, headers: Mapping[str, str], body: bytes | None = None
    ) -> http.Response:
        """One exchange with transport failures, 429 and 5xx turned into Transient."""
        try:
            resp = await self._exchange(method, url, headers, body)
        except http.TLSError as e:
            if e.verification:
                raise Unavailable(
                    f"TLS certificate of registry {url.host}:{url.port} could not be verified ({e.verification}); "
                    f"add its CA as a *.crt file under the certs.d directory for {self.endpoint}, "
                    f"or configure the registry as insecure"
                ) from None
            raise Unavailable(f"TLS handshake with {url.host}:{url.port} failed: {describe(e)}") from None
        except (http.HTTPError, TimeoutError) as e:
            raise Transient(f"{method} {url.without_query()}: {describe(e)}") from None
        status = resp.status
        if status == 429 or (500 <= status < 600 and status not in (501, 505)):
            body = await http.read_limited(resp, MAX_ERROR_BODY, str(url), truncate=True)
            retry_after = retry_after_seconds(resp.headers)
            resp.release()
            raise Transient(f"HTTP {status} from {url.without_query()}: {registry_error_text(body)}", retry_after)
        return resp

    async def _exchange(
        self, method: str, url: http.URL, headers: Mapping[str, str], body: bytes | None = None
    ) -> http.Response:
        """One request, following redirects by hand so that Authorization never leaves the registry's origin."""
        registry_origin = http.URL(f"{self._scheme or 'https'}://{self.endpoint}").origin()
        current = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            same_origin = url.origin()[1:] == registry_origin[1:]
            resp = await self._session.request(method, url, current, body,
                                               ssl_context=self._ssl if same_origin else None)
            location = resp.headers.get("Location")
            if resp.status not in REDIRECT_STATUSES or not location:
                return resp
            resp.close()  # its body is not wanted
            try:
                target = url.join(location)
            except ValueError:
                raise Unavailable(f"{url.without_query()} redirected to an unusable location {location!r}") from None
            if target.scheme not in ("http", "https"):
                raise Unavailable(f"{url.without_query()} redirected to an unsupported URL scheme {target.scheme!r}")
            if target.origin()[1:] != registry_origin[1:]:
                current = {k: v for k, v in current.items() if k.lower() != "authorization"}
            if resp.status == 303:
                method, body = "GET", None
            url = target
        raise Unavailable(f"{method} {url.without_query()}: more than {MAX_REDIRECTS} redirects")

