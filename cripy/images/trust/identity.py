"""signedIdentity: which image identity a signature may claim for the image being pulled.

A signature names an image ("critical.identity.docker-reference"); the policy's identity rule says how that claim
must relate to the reference the image is pulled as (the logical reference, before mirror rewrites). The rules
follow containers-policy.json(5):

    matchRepoDigestOrExact  (default) pulled by digest: same repository; pulled by tag: the identical reference
    matchExact              the identical reference (a signature for a tag never matches a pull by digest)
    matchRepository         same repository, any tag or digest
    exactReference          the signature names exactly the given reference, whatever is pulled
    exactRepository         the signature names the given repository, whatever is pulled
    remapIdentity           the pulled reference with `prefix` replaced by `signedPrefix`, then matchRepoDigestOrExact
"""

from __future__ import annotations

from dataclasses import dataclass

from cripy.errors import InvalidArgument
from cripy.images.reference import DOCKER_DOMAIN, Reference, is_short_name, parse_location, parse_reference


@dataclass(frozen=True)
class MatchRepoDigestOrExact:
    def matches(self, image: Reference, signed: Reference) -> bool:
        if image.digest is not None:
            return signed.name == image.name
        return _exact(image, signed)

    def describe(self) -> str:
        return "matchRepoDigestOrExact"


@dataclass(frozen=True)
class MatchExact:
    def matches(self, image: Reference, signed: Reference) -> bool:
        return _exact(image, signed)

    def describe(self) -> str:
        return "matchExact"


@dataclass(frozen=True)
class MatchRepository:
    def matches(self, image: Reference, signed: Reference) -> bool:
        return signed.name == image.name

    def describe(self) -> str:
        return "matchRepository"


@dataclass(frozen=True)
class ExactReference:
    reference: Reference

    def matches(self, image: Reference, signed: Reference) -> bool:
        return _exact(self.reference, signed)

    def describe(self) -> str:
        return f"exactReference {self.reference}"


@dataclass(frozen=True)
class ExactRepository:
    repository: Reference  # name only

    def matches(self, image: Reference, signed: Reference) -> bool:
        return signed.name == self.repository.name

    def describe(self) -> str:
        return f"exactRepository {self.repository.name}"


@dataclass(frozen=True)
class RemapIdentity:
    prefix: str
    signed_prefix: str

    def matches(self, image: Reference, signed: Reference) -> bool:
        try:
            remapped = self.remap(image)
        except InvalidArgument:  # the remapped name is not a valid reference: nothing can claim it
            return False
        return MatchRepoDigestOrExact().matches(remapped, signed)

    def remap(self, image: Reference) -> Reference:
        """`image` with the prefix replaced, or unchanged when the prefix does not cover it."""
        if not _name_has_prefix(image.name, self.prefix):
            return image
        renamed = self.signed_prefix + image.name[len(self.prefix):]
        domain, _, path = renamed.partition("/")
        return image.with_domain_and_path(domain, path)

    def describe(self) -> str:
        return f"remapIdentity {self.prefix} -> {self.signed_prefix}"


IdentityRule = (
    MatchRepoDigestOrExact | MatchExact | MatchRepository | ExactReference | ExactRepository | RemapIdentity
)
DEFAULT_IDENTITY = MatchRepoDigestOrExact()


def expected_identity(rule: IdentityRule, image: Reference) -> str:
    """What a signature must claim, in words, for error messages."""
    if isinstance(rule, ExactReference):
        return str(rule.reference)
    if isinstance(rule, ExactRepository):
        return f"{rule.repository.name} (any tag)"
    target = rule.remap(image) if isinstance(rule, RemapIdentity) else image
    if isinstance(rule, MatchRepository) or (not isinstance(rule, MatchExact) and target.digest is not None):
        return f"{target.name} (any tag)"
    return str(target)


def parse_signed_reference(text: str) -> Reference:
    """A signature's docker-reference, normalized like docker does ("busybox" -> docker.io/library/busybox) but
    without adding a tag: a name-only claim must not pass for ":latest"."""
    return parse_reference(f"{DOCKER_DOMAIN}/{text}" if is_short_name(text) else text)


def parse_identity_reference(text: str, what: str) -> Reference:
    """exactReference's dockerReference: fully qualified, with a tag or digest."""
    ref = parse_reference(text)
    if ref.tag is None and ref.digest is None:
        raise InvalidArgument(f"{what}: {text!r} names no tag or digest")
    return ref


def parse_identity_repository(text: str, what: str) -> Reference:
    """exactRepository's dockerRepository: a fully qualified repository, without tag or digest."""
    ref = parse_reference(text)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidArgument(f"{what}: {text!r} must be a repository, without tag or digest")
    return ref


def parse_identity_prefix(text: str, what: str) -> str:
    """remapIdentity's prefix/signedPrefix: host[:port], a namespace or a repository, without tag or digest."""
    cleaned = parse_location(text)
    if cleaned != text or "@" in text or ":" in text.partition("/")[2]:
        raise InvalidArgument(f"{what}: {text!r} must be host[:port][/namespace...], without tag, digest or "
                              "trailing \"/\"")
    return text


def _exact(expected: Reference, signed: Reference) -> bool:
    if signed.tag is None and signed.digest is None:
        return False
    return str(signed) == str(expected)


def _name_has_prefix(name: str, prefix: str) -> bool:
    return name == prefix or (name.startswith(prefix) and name[len(prefix)] == "/")
