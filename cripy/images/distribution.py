"""The sans-IO pieces of the OCI distribution protocol, apart from the client that does the I/O.

Owns what can be decided from bytes and headers alone: registry names (endpoint, repository, manifest reference),
WWW-Authenticate challenges and the credentials that answer them, registry error bodies, the response headers a
pull reads (Content-Type, Retry-After, Content-Range), the throughput floor (fed with bytes and times, no clock of
its own), the TLS context built from a certs.d directory, and which failures are worth a retry (Transient).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import string
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

from cripy.errors import DeadlineExceeded, InvalidArgument
from cripy.images.auth import Credentials
from cripy.images.manifest import is_digest

MAX_RETRY_AFTER = 60.0

_REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9.\-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

MAX_ERROR_BODY = 64 * 1024  # an error body is read for its message; more is not a message


class Transient(Exception):
    """A failure worth retrying (connection trouble, 429, 5xx); becomes Unavailable when retries run out."""

    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


def describe(e: BaseException) -> str:
    """An exception as an error message's cause: its type named once."""
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


# --- names -----------------------------------------------------------------------------------------------------


def check_endpoint(endpoint: str) -> None:
    if not _ENDPOINT_RE.match(endpoint):
        raise InvalidArgument(f"registry endpoint {endpoint!r} is not host[:port]")


def check_repository(repository: str) -> None:
    if len(repository) > 255 or not _REPOSITORY_RE.match(repository):
        raise InvalidArgument(
            f"repository name {repository!r} is invalid: lowercase path components of [a-z0-9] "
            f"separated by '.', '_', '__' or '-'"
        )


def check_manifest_reference(reference: str) -> None:
    if not is_digest(reference) and not _TAG_RE.match(reference):
        raise InvalidArgument(f"manifest reference {reference!r} is neither a tag nor a sha256/sha512 digest")


# --- WWW-Authenticate -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One auth challenge: scheme lowercased ('bearer', 'basic'), parameter names lowercased."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)


_TCHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] in _TCHARS:
        j += 1
    return text[i:j], j


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """text[i] is the opening quote; returns the unescaped content and the index after the closing quote."""
    out: list[str] = []
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text):
            out.append(text[j + 1])
            j += 2
        elif c == '"':
            return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    return "".join(out), j  # unterminated: take the rest rather than fail the pull


def _read_bare_value(text: str, i: int) -> tuple[str, int]:
    # Lenient: some servers send unquoted URLs (realm=https://x/token), which are not RFC tokens.
    j = i
    while j < len(text) and text[j] not in ", \t":
        j += 1
    return text[i:j], j


def _parse_challenge_header(value: str) -> list[Challenge]:
    found: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(value):
        i = _skip(value, i, " \t,")
        if i >= len(value):
            break
        name, j = _read_token(value, i)
        if not name:
            i += 1  # junk character: skip it rather than give up on the whole header
            continue
        k = _skip(value, j, " \t")
        if k < len(value) and value[k] == "=":
            k = _skip(value, k + 1, " \t")
            if k < len(value) and value[k] == '"':
                param_value, i = _read_quoted(value, k)
            else:
                param_value, i = _read_bare_value(value, k)
            if found:
                found[-1][1][name.lower()] = param_value
        else:
            found.append((name.lower(), {}))
            i = j
    return [Challenge(scheme, params) for scheme, params in found]


def parse_www_authenticate(headers: str | Iterable[str]) -> list[Challenge]:
    """All challenges in one or several WWW-Authenticate header values, in order."""
    values = [headers] if isinstance(headers, str) else list(headers)
    return [c for v in values for c in _parse_challenge_header(v)]


def pick_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """The challenge cripy answers: Bearer preferred over Basic; None if neither is offered."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None

def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def basic_auth_header(creds: Credentials | None) -> str | None:
    """The Basic Authorization value for creds (an identity token stands in for the password); None if empty."""
    if creds is None:
        return None
    secret = creds.password or creds.identity_token
    if not creds.username and not secret:
        return None
    raw = f"{creds.username}:{secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


# --- registry error bodies -------------------------------------------------------------------------------------


def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def registry_error_codes(body: bytes) -> list[str]:
    """The errors[].code values of a distribution-spec error body (empty if it is not one)."""
    doc = json_or_none(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    return [str(e.get("code")) for e in doc["errors"] if isinstance(e, dict) and e.get("code")]


def registry_error_text(body: bytes) -> str:
    """A one-line human summary of an error body: distribution errors[], token-server or OAuth2 errors, or text."""
    doc = json_or_none(body)
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors:
            parts = []
            for e in errors:
                if not isinstance(e, dict):
                    continue
                part = ": ".join(str(e[k]) for k in ("code", "message") if e.get(k))
                if e.get("detail"):
                    part += f" ({json.dumps(e['detail'], sort_keys=True)})"
                parts.append(part)
            if parts:
                return "; ".join(parts)
        for key in ("details", "message", "error_description", "error"):
            if isinstance(doc.get(key), str) and doc[key]:
                return doc[key]
    text = body.decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return text[:200] if text else "no details in the response body"


# --- response headers ------------------------------------------------------------------------------------------


def clean_media_type(value: str) -> str:
    return value.split(";", 1)[0].strip()


class HeaderLookup(Protocol):
    """Response headers as the registry client reads them: a Mapping, or http.Headers."""

    def get(self, name: str, default: str) -> str: ...


def retry_after_seconds(headers: HeaderLookup) -> float | None:
    """Retry-After in seconds (capped at MAX_RETRY_AFTER); None unless it is a plain number of seconds."""
    value = headers.get("Retry-After", "")
    return min(float(value), MAX_RETRY_AFTER) if value.strip().isdigit() else None


def content_range_start(value: str) -> int | None:
    """The first byte of a "bytes first-last/size" Content-Range; None if the header is not one."""
    m = _CONTENT_RANGE_RE.match(value)
    return int(m.group(1)) if m is not None else None


# --- throughput floor ------------------------------------------------------------------------------------------


class ThroughputMonitor:
    """Raises DeadlineExceeded when the bytes received over the last full window fall under floor * window.

    Fed with (bytes, monotonic time) as data arrives; no clock of its own, so it is testable without sockets.
    """

    def __init__(self, floor: int, window: float, subject: str, start: float) -> None:
        if floor <= 0 or window <= 0:
            raise InvalidArgument(f"throughput floor and window must be positive, got {floor} B/s over {window}s")
        self.floor = floor
        self.window = window
        self.subject = subject
        self._start = start
        self._samples: deque[tuple[float, int]] = deque()
        self._in_window = 0

    def feed(self, nbytes: int, now: float) -> None:
        if nbytes:
            self._samples.append((now, nbytes))
            self._in_window += nbytes
        horizon = now - self.window
        while self._samples and self._samples[0][0] < horizon:
            self._in_window -= self._samples.popleft()[1]
        if now - self._start >= self.window and self._in_window < self.floor * self.window:
            raise self.stalled(now)

    def stalled(self, now: float) -> DeadlineExceeded:
        horizon = now - self.window
        recent = sum(n for t, n in self._samples if t >= horizon)
        rate = int(recent / self.window)
        return DeadlineExceeded(
            f"{self.subject} stalled: {rate} B/s over the last {self.window:g}s, "
            f"under the floor of {self.floor} B/s"
        )


# --- TLS -------------------------------------------------------------------------------------------------------


def build_ssl_context(endpoint: str, certs_dir: Path | None, verify: bool) -> ssl.SSLContext:
    """System trust plus certs_dir/<endpoint>/*.crt as CAs and *.cert/*.key pairs as client certificates."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    directory = certs_dir / endpoint if certs_dir is not None else None
    if directory is None or not directory.is_dir():
        return ctx
    for ca in sorted(directory.glob("*.crt")):
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as e:
            raise InvalidArgument(f"cannot load CA certificate {ca} for registry {endpoint}: {e}") from None
    for cert in sorted(directory.glob("*.cert")):
        key = cert.with_suffix(".key")
        if not key.exists():
            raise InvalidArgument(f"client certificate {cert} for registry {endpoint} has no key file {key}")
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as e:
            raise InvalidArgument(f"cannot load client certificate {cert} / {key} for {endpoint}: {e}") from None
    return ctx
