"""The signed JSON payload of simple-signing and cosign signatures, parsed strictly."""

import json

import pytest

from cripy.images.trust.payload import ATOMIC_TYPE, COSIGN_TYPE, Claim, PayloadError, parse_payload

DIGEST = "sha256:" + "12" * 32


def payload(kind: str = ATOMIC_TYPE, optional: object = None, **critical: object) -> bytes:
    body = {"type": kind, "image": {"docker-manifest-digest": DIGEST},
            "identity": {"docker-reference": "quay.io/a/b:1"}}
    body.update(critical)
    return json.dumps({"critical": body, "optional": {} if optional is None else optional}).encode()


def test_atomic_and_cosign_payloads() -> None:
    assert parse_payload(payload(), ATOMIC_TYPE) == Claim(DIGEST, "quay.io/a/b:1")
    cosign = json.loads(payload(COSIGN_TYPE))
    cosign["optional"] = None  # cosign writes null when it has no annotations
    assert parse_payload(json.dumps(cosign).encode(), COSIGN_TYPE).manifest_digest == DIGEST
    assert parse_payload(payload(optional={"creator": "x", "timestamp": 1700000000, "custom": [1]}),
                         ATOMIC_TYPE).docker_reference == "quay.io/a/b:1"


@pytest.mark.parametrize(("data", "reason"), [
    (b"not json", "not JSON"),
    (b"[]", "exactly"),
    (b'{"critical": {}, "optional": {}, "extra": 1}', "exactly"),
    (payload(COSIGN_TYPE), "expected 'atomic container signature'"),
    (payload(extra="x"), "unexpected member 'extra'"),
    (payload(image={"docker-manifest-digest": DIGEST, "size": 1}), "unexpected member 'size'"),
    (payload(identity={}), "lacks the member 'docker-reference'"),
    (payload(image={"docker-manifest-digest": "md5:abc"}), "not a sha256/sha512 digest"),
    (payload(identity={"docker-reference": 7}), "non-empty string"),
    (payload(optional={"timestamp": 1.5}), "integer"),
    (payload(optional={"creator": 3}), "creator"),
    (b'{"critical": {"type": "a", "type": "b"}, "optional": {}}', "twice"),
])
def test_malformed_payloads_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_payload(data, ATOMIC_TYPE)


def test_atomic_payload_may_not_have_null_optional() -> None:
    document = json.loads(payload())
    document["optional"] = None
    with pytest.raises(PayloadError):
        parse_payload(json.dumps(document).encode(), ATOMIC_TYPE)
