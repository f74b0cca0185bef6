"""The signed JSON payload of a container signature (containers-signature(5)): which manifest it signs and which
image identity it claims. GPG simple signing ("atomic container signature") and cosign ("cosign container image
signature") share the format.

Only ever parse a payload whose cryptographic signature has been verified. Parsing is strict, as the format asks:
anything unknown in "critical", a duplicated key or a wrong type rejects the signature; unknown members of
"optional" are allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cripy.images.manifest import is_digest

ATOMIC_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"


class PayloadError(ValueError):
    """The payload is not a valid container signature payload."""


@dataclass(frozen=True)
class Claim:
    """What a verified signature says: this manifest digest is this image identity."""

    manifest_digest: str
    docker_reference: str


def parse_payload(payload: bytes, signature_type: str) -> Claim:
    document = _load(payload)
    if not isinstance(document, dict) or set(document) != {"critical", "optional"}:
        raise PayloadError("the payload must be an object with exactly \"critical\" and \"optional\"")
    optional = document["optional"]
    # cosign writes "optional": null when it has no annotations to record.
    if not isinstance(optional, dict) and not (optional is None and signature_type == COSIGN_TYPE):
        raise PayloadError("\"optional\" must be an object")
    _check_optional(optional or {})
    critical = _exact_object(document["critical"], "critical", {"type", "image", "identity"})
    if critical["type"] != signature_type:
        raise PayloadError(f"critical.type is {critical['type']!r}, expected {signature_type!r}")
    image = _exact_object(critical["image"], "critical.image", {"docker-manifest-digest"})
    identity = _exact_object(critical["identity"], "critical.identity", {"docker-reference"})
    digest = image["docker-manifest-digest"]
    reference = identity["docker-reference"]
    if not isinstance(digest, str) or not is_digest(digest):
        raise PayloadError(f"critical.image.docker-manifest-digest {digest!r} is not a sha256/sha512 digest")
    if not isinstance(reference, str) or not reference:
        raise PayloadError("critical.identity.docker-reference must be a non-empty string")
    return Claim(digest, reference)


def _load(payload: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise PayloadError("a key appears twice in one object")
        return dict(pairs)

    try:
        return json.loads(payload, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"the payload is not JSON: {exc}") from None


def _exact_object(value: Any, name: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{name} must be an object")
    if set(value) != keys:
        extra, missing = sorted(set(value) - keys), sorted(keys - set(value))
        raise PayloadError(f"{name} has unexpected member {extra[0]!r}" if extra
                           else f"{name} lacks the member {missing[0]!r}")
    return value


def _check_optional(optional: dict[str, Any]) -> None:
    creator = optional.get("creator")
    if creator is not None and not isinstance(creator, str):
        raise PayloadError("optional.creator must be a string")
    timestamp = optional.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))
                                  or timestamp != int(timestamp)):
        raise PayloadError("optional.timestamp must be an integer")
