"""Image references in the docker/containers form: parsing, validation, docker.io normalization, short names,
digests and bare image ids.

Grammar (distribution reference):
    reference := name [":" tag] ["@" digest]
    name      := [domain "/"] path-component ["/" path-component]*
    domain    := host [":" port]           (host: DNS name, IPv4, or [IPv6])
    path-component := [a-z0-9]+ ((separator) [a-z0-9]+)*   separator: "." | "_" | "__" | "-"+
    tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest    := algorithm ":" hex         (sha256: 64 lowercase hex, sha384: 96, sha512: 128)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from cripy.errors import InvalidArgument

DOCKER_DOMAIN = "docker.io"
LEGACY_DOCKER_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})
DOCKER_OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
NAME_MAX_LENGTH = 255
LOCALHOST = "localhost"

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:.]+\])"
_DOMAIN_RE = re.compile(rf"{_HOST}(?::(?P<port>[0-9]+))?", re.ASCII)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<encoded>.*)", re.ASCII | re.DOTALL)
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_IMAGE_ID_HEX_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_MAX_SHOWN = 300  # long enough for any valid reference; keeps error messages about garbage input short


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. `domain` and `path` are always set; tag and digest are optional."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str | None) -> Reference:
        if tag is not None:
            _check_tag(str(self), tag)
        return replace(self, tag=tag)

    def with_digest(self, digest: str | None) -> Reference:
        if digest is not None:
            _check_digest(str(self), digest)
        return replace(self, digest=digest)

    def with_domain_and_path(self, domain: str, path: str) -> Reference:
        candidate = replace(self, domain=domain, path=path)
        _check_domain(str(candidate), domain)
        _check_path(str(candidate), path)
        _check_name_length(str(candidate), candidate.name)
        return candidate


@dataclass(frozen=True)
class ShortName:
    """A reference without a registry domain, as a user wrote it: "busybox", "foo/bar:1", "app@sha256:..."."""

    name: str
    tag: str | None = None
    digest: str | None = None


def parse_reference(s: str) -> Reference:
    """Parse a fully qualified reference (the domain must be present). docker.io names are normalized
    (index.docker.io -> docker.io, "docker.io/busybox" -> "docker.io/library/busybox"); no default tag is added."""
    name, tag, digest = _split_tag_and_digest(s)
    domain, path = _split_domain(name)
    if domain is None:
        raise _invalid(s, "it is not fully qualified (no registry domain such as docker.io or quay.io)")
    return _build(s, domain, path, tag, digest)


def parse_normalized(s: str) -> Reference:
    """Parse a reference with docker's normalization: "busybox" -> docker.io/library/busybox:latest,
    "foo/bar" -> docker.io/foo/bar:latest. The tag "latest" is added when neither tag nor digest is given."""
    name, tag, digest = _split_tag_and_digest(s)
    domain, path = _split_domain(name)
    if domain is None:
        if _IMAGE_ID_HEX_RE.fullmatch(path):
            raise _invalid(s, "a 64-character hexadecimal string is an image id, not a repository name")
        domain = DOCKER_DOMAIN
    ref = _build(s, domain, path, tag, digest)
    if ref.tag is None and ref.digest is None:
        ref = replace(ref, tag=DEFAULT_TAG)
    return ref


def parse_short_name(s: str) -> ShortName:
    """Split and validate a short name (see is_short_name) into its name, tag and digest."""
    name, tag, digest = _split_tag_and_digest(s)
    domain, path = _split_domain(name)
    if domain is not None:
        raise _invalid(s, f"it is not a short name: {domain!r} is a registry domain")
    if _IMAGE_ID_HEX_RE.fullmatch(path):
        raise _invalid(s, "a 64-character hexadecimal string is an image id, not a repository name")
    _check_path(s, path)
    return ShortName(name=path, tag=tag, digest=digest)


def parse_location(s: str) -> str:
    """Validate a registries.conf location or prefix: host[:port][/path][:tag|@digest] (a trailing "/" is
    dropped). Returns the cleaned string; no docker.io normalization, the value is matched textually."""
    cleaned = s.rstrip("/")
    if not cleaned:
        raise _invalid(s, "it is empty")
    domain, _, rest = cleaned.partition("/")
    _check_domain(s, domain)
    if rest:
        path, _tag, _digest = _split_tag_and_digest(rest)
        _check_path(s, path)
    return cleaned


def is_short_name(s: str) -> bool:
    """True when the reference names no registry: the part before the first "/" is not a domain."""
    name = s.partition("@")[0]
    domain, _ = _split_domain(name)
    return domain is None


def is_digest(s: str) -> bool:
    return _digest_problem(s) is None


def parse_image_id(s: str) -> str | None:
    """A bare image id ("sha256:<64 hex>" or just the 64 hex) in its "sha256:<hex>" form, else None."""
    hex_part = s[len("sha256:"):] if s.startswith("sha256:") else s
    if _IMAGE_ID_HEX_RE.fullmatch(hex_part):
        return f"sha256:{hex_part}"
    return None


def looks_like_domain(component: str) -> bool:
    """Docker's rule for telling a registry domain from the first path component of a repository."""
    return "." in component or ":" in component or component == LOCALHOST or component != component.lower()


def _split_tag_and_digest(s: str) -> tuple[str, str | None, str | None]:
    if not s:
        raise _invalid(s, "it is empty")
    name_and_tag, at, digest_text = s.partition("@")
    digest: str | None = None
    if at:
        _check_digest(s, digest_text)
        digest = digest_text
    tag: str | None = None
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        tag = name_and_tag[colon + 1:]
        _check_tag(s, tag)
        name_and_tag = name_and_tag[:colon]
    if not name_and_tag:
        raise _invalid(s, "the repository name is empty")
    return name_and_tag, tag, digest


def _split_domain(name: str) -> tuple[str | None, str]:
    first, slash, rest = name.partition("/")
    if slash and looks_like_domain(first):
        return first, rest
    return None, name


def _build(original: str, domain: str, path: str, tag: str | None, digest: str | None) -> Reference:
    if domain in LEGACY_DOCKER_DOMAINS:
        domain = DOCKER_DOMAIN
    _check_domain(original, domain)
    _check_path(original, path)
    if domain == DOCKER_DOMAIN and "/" not in path:
        path = f"{DOCKER_OFFICIAL_NAMESPACE}/{path}"
    ref = Reference(domain=domain, path=path, tag=tag, digest=digest)
    _check_name_length(original, ref.name)
    return ref


def _check_domain(original: str, domain: str) -> None:
    match = _DOMAIN_RE.fullmatch(domain)
    if match is None:
        raise _invalid(original, f"{domain!r} is not a valid registry domain (host[:port])")
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise _invalid(original, f"port {port} of registry domain {domain!r} is out of range")


def _check_path(original: str, path: str) -> None:
    if not path:
        raise _invalid(original, "the repository path is empty")
    for component in path.split("/"):
        if not component:
            raise _invalid(original, "the repository path has an empty component (\"//\" or a leading/trailing \"/\")")
        if _PATH_COMPONENT_RE.fullmatch(component):
            continue
        if _PATH_COMPONENT_RE.fullmatch(component.lower()):
            raise _invalid(original, f"repository name must be lowercase (component {component!r})")
        raise _invalid(
            original,
            f"repository path component {component!r} is invalid: lowercase letters and digits separated by "
            "'.', '_', '__' or dashes",
        )


def _check_name_length(original: str, name: str) -> None:
    if len(name) > NAME_MAX_LENGTH:
        raise _invalid(original, f"the repository name is {len(name)} characters long, the limit is {NAME_MAX_LENGTH}")


def _check_tag(original: str, tag: str) -> None:
    if not _TAG_RE.fullmatch(tag):
        if len(tag) > 128:
            raise _invalid(original, f"the tag is {len(tag)} characters long, the limit is 128")
        raise _invalid(original, f"tag {tag!r} is invalid: it must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")


def _check_digest(original: str, digest: str) -> None:
    problem = _digest_problem(digest)
    if problem is not None:
        raise _invalid(original, problem)


def _digest_problem(digest: str) -> str | None:
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        return f"digest {digest!r} is not of the form algorithm:hex"
    algorithm, encoded = match.group("algorithm"), match.group("encoded")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return f"digest algorithm {algorithm!r} is not supported (use one of {', '.join(sorted(_DIGEST_HEX_LENGTHS))})"
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]*", encoded, re.ASCII):
        return f"{algorithm} digest {digest!r} must have exactly {length} lowercase hex characters"
    return None


def _invalid(reference: str, reason: str) -> InvalidArgument:
    shown = reference if len(reference) <= _MAX_SHOWN else reference[:_MAX_SHOWN] + "..."
    return InvalidArgument(f"invalid image reference {shown!r}: {reason}")
