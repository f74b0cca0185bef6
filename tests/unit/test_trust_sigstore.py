"""sigstore signature verification, offline: keys, Rekor signed entry timestamps, Fulcio certificates."""

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives import hashes, serialization

from cripy.images.trust.reasons import Reason, Refused
from cripy.images.trust.sigstore import (
    BUNDLE_ANNOTATION,
    CERTIFICATE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    FulcioRoots,
    SigstoreSignature,
    SigstoreTrust,
    TrustedKey,
    load_public_key,
    verify_signature,
)
from tests.support.signing import CosignKey, FulcioCA, RekorLog, cosign_payload, key_signature, keyless_signature

PAYLOAD = cosign_payload("sha256:" + "ab" * 32, "quay.io/team/app:1")
ISSUER, EMAIL = "https://issuer.example", "dev@example.com"


def trusted(pem: bytes, name: str = "key") -> TrustedKey:
    return TrustedKey(name, load_public_key(pem, name))


def refusal(signature: SigstoreSignature, trust: SigstoreTrust) -> Refused:
    with pytest.raises(Refused) as info:
        verify_signature(signature, trust)
    return info.value


@pytest.fixture(scope="module")
def key() -> CosignKey:
    return CosignKey.generate()


@pytest.fixture(scope="module")
def rekor() -> RekorLog:
    return RekorLog()


@pytest.fixture(scope="module")
def fulcio() -> FulcioCA:
    return FulcioCA()


def keyless_trust(fulcio: FulcioCA, rekor: RekorLog, email: str = EMAIL, issuer: str = ISSUER) -> SigstoreTrust:
    return SigstoreTrust(fulcio=FulcioRoots("test CA", (fulcio.root,), issuer, email),
                         rekor_keys=(trusted(rekor.public_pem, "rekor"),))


def test_key_signature(key: CosignKey) -> None:
    trust = SigstoreTrust(keys=(trusted(key.public_pem),))
    assert verify_signature(SigstoreSignature(PAYLOAD, key_signature(key, PAYLOAD)), trust) == PAYLOAD


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_rsa_and_ed25519_keys(kind: str) -> None:
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        raw = private.sign(PAYLOAD, padding.PKCS1v15(), hashes.SHA256())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.sign(PAYLOAD)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = SigstoreSignature(PAYLOAD, {SIGNATURE_ANNOTATION: base64.b64encode(raw).decode()})
    assert verify_signature(signature, SigstoreTrust(keys=(trusted(pem),))) == PAYLOAD


def test_any_of_several_keys(key: CosignKey) -> None:
    other = CosignKey.generate()
    trust = SigstoreTrust(keys=(trusted(other.public_pem, "other"), trusted(key.public_pem)))
    assert verify_signature(SigstoreSignature(PAYLOAD, key_signature(key, PAYLOAD)), trust) == PAYLOAD


def test_other_key_or_altered_payload(key: CosignKey) -> None:
    trust = SigstoreTrust(keys=(trusted(key.public_pem, "key /etc/cosign.pub"),))
    by_other = key_signature(CosignKey.generate(), PAYLOAD)
    assert refusal(SigstoreSignature(PAYLOAD, by_other), trust).reason == Reason.OTHER_KEY_OR_ALTERED
    altered = SigstoreSignature(PAYLOAD.replace(b"app:1", b"app:2"), key_signature(key, PAYLOAD))
    refused = refusal(altered, trust)
    assert refused.reason == Reason.OTHER_KEY_OR_ALTERED and "/etc/cosign.pub" in refused.detail


def test_missing_or_garbled_signature_annotation(key: CosignKey) -> None:
    trust = SigstoreTrust(keys=(trusted(key.public_pem),))
    assert "no dev.cosignproject.cosign/signature" in refusal(SigstoreSignature(PAYLOAD, {}), trust).detail
    garbled = SigstoreSignature(PAYLOAD, {SIGNATURE_ANNOTATION: "***"})
    assert refusal(garbled, trust).reason == Reason.BAD_SIGNATURE


def test_key_with_rekor(key: CosignKey, rekor: RekorLog) -> None:
    trust = SigstoreTrust(keys=(trusted(key.public_pem),), rekor_keys=(trusted(rekor.public_pem, "rekor"),))
    assert verify_signature(SigstoreSignature(PAYLOAD, key_signature(key, PAYLOAD, rekor)), trust) == PAYLOAD
    unlogged = SigstoreSignature(PAYLOAD, key_signature(key, PAYLOAD))
    assert BUNDLE_ANNOTATION in refusal(unlogged, trust).detail
    other_log = SigstoreSignature(PAYLOAD, key_signature(key, PAYLOAD, RekorLog()))
    assert "SignedEntryTimestamp does not verify" in refusal(other_log, trust).detail


def test_rekor_entry_must_be_this_signature(key: CosignKey, rekor: RekorLog) -> None:
    trust = SigstoreTrust(keys=(trusted(key.public_pem),), rekor_keys=(trusted(rekor.public_pem, "rekor"),))
    annotations = key_signature(key, PAYLOAD)
    # Rekor vouches for another signature of the same payload by the same key (ECDSA signatures differ).
    annotations[BUNDLE_ANNOTATION] = rekor.bundle(key.public_pem, key.sign(PAYLOAD), PAYLOAD)
    assert "records another signature" in refusal(SigstoreSignature(PAYLOAD, annotations), trust).detail
    annotations = key_signature(key, PAYLOAD)
    raw = base64.b64decode(annotations[SIGNATURE_ANNOTATION])
    annotations[BUNDLE_ANNOTATION] = rekor.bundle(CosignKey.generate().public_pem, raw, PAYLOAD)
    assert "another public key" in refusal(SigstoreSignature(PAYLOAD, annotations), trust).detail


def test_tampered_bundle_is_refused(key: CosignKey, rekor: RekorLog) -> None:
    trust = SigstoreTrust(keys=(trusted(key.public_pem),), rekor_keys=(trusted(rekor.public_pem, "rekor"),))
    annotations = key_signature(key, PAYLOAD, rekor)
    bundle = json.loads(annotations[BUNDLE_ANNOTATION])
    bundle["Payload"]["integratedTime"] += 3600  # backdating (or postdating) the log entry breaks the SET
    annotations[BUNDLE_ANNOTATION] = json.dumps(bundle)
    assert refusal(SigstoreSignature(PAYLOAD, annotations), trust).reason == Reason.BAD_SIGNATURE
    bundle["extra"] = 1
    annotations[BUNDLE_ANNOTATION] = json.dumps(bundle)
    assert "exactly" in refusal(SigstoreSignature(PAYLOAD, annotations), trust).detail


def test_keyless(fulcio: FulcioCA, rekor: RekorLog) -> None:
    annotations = keyless_signature(fulcio, rekor, PAYLOAD, email=EMAIL, issuer=ISSUER)
    assert verify_signature(SigstoreSignature(PAYLOAD, annotations), keyless_trust(fulcio, rekor)) == PAYLOAD


@pytest.mark.parametrize(("change", "reason", "text"), [
    ("other-email", Reason.UNTRUSTED_CERTIFICATE, "issued to dev@example.com"),
    ("other-issuer", Reason.UNTRUSTED_CERTIFICATE, "OIDC issuer"),
    ("other-ca", Reason.UNTRUSTED_CERTIFICATE, "does not chain"),
    ("not-code-signing", Reason.UNTRUSTED_CERTIFICATE, "code signing"),
    ("altered-payload", Reason.BAD_SIGNATURE, "another payload"),
    ("no-certificate", Reason.BAD_SIGNATURE, CERTIFICATE_ANNOTATION),
])
def test_keyless_refusals(fulcio: FulcioCA, rekor: RekorLog, change: str, reason: Reason, text: str) -> None:
    trust = keyless_trust(fulcio, rekor)
    payload = PAYLOAD
    annotations = keyless_signature(fulcio, rekor, PAYLOAD, email=EMAIL, issuer=ISSUER)
    if change == "other-email":
        trust = keyless_trust(fulcio, rekor, email="ops@example.com")
    elif change == "other-issuer":
        trust = keyless_trust(fulcio, rekor, issuer="https://elsewhere.example")
    elif change == "other-ca":
        annotations = keyless_signature(FulcioCA("rogue"), rekor, PAYLOAD, email=EMAIL, issuer=ISSUER)
    elif change == "not-code-signing":
        annotations = keyless_signature(fulcio, rekor, PAYLOAD, email=EMAIL, issuer=ISSUER, code_signing=False)
    elif change == "altered-payload":
        payload = PAYLOAD.replace(b"app:1", b"app:2")
    else:
        del annotations[CERTIFICATE_ANNOTATION]
    refused = refusal(SigstoreSignature(payload, annotations), trust)
    assert refused.reason == reason and text in refused.detail


def test_certificate_must_be_valid_at_the_rekor_time(fulcio: FulcioCA, rekor: RekorLog) -> None:
    """The certificate lives ten minutes; a log entry from an hour later does not vouch for it."""
    certificate, private = fulcio.issue(EMAIL, ISSUER)
    raw = private.sign(PAYLOAD, ec.ECDSA(hashes.SHA256()))
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    late = int(certificate.not_valid_after_utc.timestamp()) + 3600
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(raw).decode(), CERTIFICATE_ANNOTATION: pem.decode(),
                   "dev.sigstore.cosign/chain": fulcio.chain_pem,
                   BUNDLE_ANNOTATION: rekor.bundle(pem, raw, PAYLOAD, integrated_time=late)}
    refused = refusal(SigstoreSignature(PAYLOAD, annotations), keyless_trust(fulcio, rekor))
    assert refused.reason == Reason.UNTRUSTED_CERTIFICATE
