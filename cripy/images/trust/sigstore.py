"""sigstore (cosign) signature verification, offline, from what the signature carries.

A cosign signature is a payload (the simple-signing JSON of payload.py) plus OCI annotations:
    dev.cosignproject.cosign/signature   base64 signature of the payload
    dev.sigstore.cosign/certificate      PEM signing certificate (keyless: issued by Fulcio for an OIDC identity)
    dev.sigstore.cosign/chain            PEM intermediates up to the Fulcio root
    dev.sigstore.cosign/bundle           JSON {"SignedEntryTimestamp", "Payload": {body, integratedTime, logIndex,
                                         logID}}: Rekor's signed promise that it logged `body`
Verification, in this order (the payload is parsed only once its signature holds):
  1. With a Rekor key: the SignedEntryTimestamp is Rekor's ECDSA signature over the RFC 8785 canonical JSON of
     "Payload"; its body (a hashedrekord 0.0.1 entry) must record this very signature, this key or certificate
     and the SHA-256 of this payload. The integrated time it vouches for is when the signature existed.
  2. Keyless: the certificate must chain to the Fulcio CA at that integrated time, allow code signing, and name
     the expected OIDC issuer and e-mail address; its key is then the signing key.
  3. The signature over the payload must verify with a trusted key (ECDSA/RSA PKCS#1 v1.5 with SHA-256, Ed25519).
Cryptography is `cryptography`'s; canonical JSON is `rfc8785`'s.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeAlias

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from cripy.images.trust.reasons import Reason, Refused

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
# Fulcio's OIDC issuer extensions: the original (raw string) and its DER-encoded successor.
OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
HASHEDREKORD_KIND = "hashedrekord"
HASHEDREKORD_VERSION = "0.0.1"

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class SigstoreSignature:
    """One signature as fetched: the payload blob and its descriptor's annotations."""

    payload: bytes
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class TrustedKey:
    description: str
    key: PublicKey


@dataclass(frozen=True)
class FulcioRoots:
    description: str
    certificates: tuple[x509.Certificate, ...]
    oidc_issuer: str
    subject_email: str


@dataclass(frozen=True)
class SigstoreTrust:
    """What a sigstoreSigned requirement trusts: keys, or a Fulcio CA with an identity; maybe Rekor keys."""

    keys: tuple[TrustedKey, ...] = ()
    fulcio: FulcioRoots | None = None
    rekor_keys: tuple[TrustedKey, ...] = ()


def load_public_key(pem: bytes, what: str) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo) of a kind cosign signs with."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{what} is not a PEM public key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise ValueError(f"{what} is a {type(key).__name__}; sigstore keys are ECDSA, RSA or Ed25519")
    return key


def load_certificates(pem: bytes, what: str) -> tuple[x509.Certificate, ...]:
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise ValueError(f"{what} holds no PEM certificate: {exc}") from None
    return certificates


def verify_signature(signature: SigstoreSignature, trust: SigstoreTrust) -> bytes:
    """The payload, once `signature` is proven made by a trusted signer; Refused otherwise."""
    annotations = signature.annotations
    raw = _signature_bytes(annotations)
    if trust.fulcio is not None:
        key = _fulcio_signing_key(signature, raw, trust)
        if not _verifies(key, raw, signature.payload):
            raise Refused(Reason.BAD_SIGNATURE, "the signature does not verify with the key of its certificate "
                                                "(the payload or the signature was altered)")
        return signature.payload
    signer = next((k for k in trust.keys if _verifies(k.key, raw, signature.payload)), None)
    if signer is None:
        raise Refused(Reason.OTHER_KEY_OR_ALTERED,
                      f"the signature does not verify with {', '.join(k.description for k in trust.keys)}")
    if trust.rekor_keys:
        key_der = signer.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        verify_rekor_bundle(_annotation(annotations, BUNDLE_ANNOTATION), trust.rekor_keys, key_der, raw,
                            signature.payload)
    return signature.payload


def verify_rekor_bundle(bundle_text: str, rekor_keys: Sequence[TrustedKey], signer_der: bytes,
                        raw_signature: bytes, payload: bytes) -> datetime.datetime:
    """Check a cosign bundle's SignedEntryTimestamp and that the logged entry is this signature; returns the time
    Rekor integrated it."""
    bundle = _strict_json(bundle_text, "the Rekor bundle")
    if not isinstance(bundle, dict) or set(bundle) != {"SignedEntryTimestamp", "Payload"}:
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor bundle must hold exactly SignedEntryTimestamp and Payload")
    entry = bundle["Payload"]
    if not isinstance(entry, dict) or set(entry) != {"body", "integratedTime", "logIndex", "logID"}:
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor bundle's Payload must hold exactly body, integratedTime, "
                                            "logIndex and logID")
    if not all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in ("integratedTime", "logIndex")) \
            or not isinstance(entry["body"], str) or not isinstance(entry["logID"], str):
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor bundle's Payload has members of the wrong type")
    timestamp = _b64(bundle["SignedEntryTimestamp"], "the Rekor SignedEntryTimestamp")
    digest = hashlib.sha256(rfc8785.dumps(entry)).digest()
    if not any(_verifies_prehashed(k.key, timestamp, digest) for k in rekor_keys):
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor SignedEntryTimestamp does not verify with "
                                            f"{', '.join(k.description for k in rekor_keys)}")
    _check_logged_entry(_b64(entry["body"], "the Rekor entry body"), signer_der, raw_signature, payload)
    return datetime.datetime.fromtimestamp(entry["integratedTime"], datetime.timezone.utc)


def _check_logged_entry(body: bytes, signer_der: bytes, raw_signature: bytes, payload: bytes) -> None:
    """The hashedrekord entry Rekor vouches for must be this signature, by this signer, over this payload."""
    record = _strict_json(body, "the Rekor entry")
    try:
        if record["kind"] != HASHEDREKORD_KIND or record["apiVersion"] != HASHEDREKORD_VERSION:
            raise Refused(Reason.BAD_SIGNATURE, f"the Rekor entry is {record['kind']!r} {record['apiVersion']!r}, "
                                                f"not {HASHEDREKORD_KIND} {HASHEDREKORD_VERSION}")
        spec = record["spec"]
        logged_signature = _b64(spec["signature"]["content"], "the logged signature")
        logged_signer = _b64(spec["signature"]["publicKey"]["content"], "the logged public key")
        hash_algorithm, hash_value = spec["data"]["hash"]["algorithm"], spec["data"]["hash"]["value"]
    except (KeyError, TypeError):
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor entry is not a complete hashedrekord") from None
    if _pem_body(logged_signer) != signer_der:
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor entry records another public key or certificate")
    if logged_signature != raw_signature:
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor entry records another signature")
    if hash_algorithm != "sha256" or hash_value != hashlib.sha256(payload).hexdigest():
        raise Refused(Reason.BAD_SIGNATURE, "the Rekor entry records another payload (the payload was altered)")


def _fulcio_signing_key(signature: SigstoreSignature, raw: bytes, trust: SigstoreTrust) -> PublicKey:
    fulcio = trust.fulcio
    assert fulcio is not None
    annotations = signature.annotations
    try:
        leaves = x509.load_pem_x509_certificates(_annotation(annotations, CERTIFICATE_ANNOTATION).encode())
        chain = (x509.load_pem_x509_certificates(annotations[CHAIN_ANNOTATION].encode())
                 if annotations.get(CHAIN_ANNOTATION) else [])
    except ValueError as exc:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, f"the certificate annotations are not PEM: {exc}") from None
    if len(leaves) != 1:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, f"expected one signing certificate, found {len(leaves)}")
    leaf = leaves[0]
    if not trust.rekor_keys:
        raise Refused(Reason.TRUST_MATERIAL, "keyless signatures need a Rekor public key")
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    signed_at = verify_rekor_bundle(_annotation(annotations, BUNDLE_ANNOTATION), trust.rekor_keys, leaf_der, raw,
                                    signature.payload)
    _verify_chain(leaf, chain, fulcio, signed_at)
    _check_certificate_identity(leaf, fulcio)
    key = leaf.public_key()
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, f"the certificate holds a {type(key).__name__} key")
    return key


def _verify_chain(leaf: x509.Certificate, chain: list[x509.Certificate], fulcio: FulcioRoots,
                  at: datetime.datetime) -> None:
    """Path validation at `at`. The Web PKI defaults of `cryptography` want TLS key usages on intermediates,
    which Fulcio's do not have (theirs say code signing), so the policies are spelled out here."""
    verifier = (PolicyBuilder().store(Store(list(fulcio.certificates))).time(at)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY)
                .build_client_verifier())
    try:
        verifier.verify(leaf, chain)
    except VerificationError as exc:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE,
                      f"the certificate {leaf.subject.rfc4514_string() or '(no subject)'} does not chain to "
                      f"{fulcio.description} at the Rekor time {at.isoformat()}: {exc}") from None


def _is_ca(_policy: Any, _cert: x509.Certificate, constraints: x509.BasicConstraints) -> None:
    if not constraints.ca:
        raise ValueError("an issuer that is not a CA")


def _may_sign_certificates(_policy: Any, _cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("an issuer whose key usage excludes signing certificates")


def _ca_for_code_signing(_policy: Any, _cert: x509.Certificate, usage: x509.ExtendedKeyUsage | None) -> None:
    if usage is not None and not {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(usage):
        raise ValueError("an issuer restricted to other uses than code signing")


def _signs_code(_policy: Any, _cert: x509.Certificate, usage: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CODE_SIGNING not in usage:
        raise ValueError("the certificate does not allow code signing")


def _signs_digitally(_policy: Any, _cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.digital_signature:
        raise ValueError("the certificate's key usage excludes digital signatures")


_CA_POLICY = (ExtensionPolicy.permit_all()
              .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _is_ca)
              .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _may_sign_certificates)
              .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ca_for_code_signing))
_LEAF_POLICY = (ExtensionPolicy.permit_all()
                .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _signs_code)
                .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _signs_digitally))


def _check_certificate_identity(leaf: x509.Certificate, fulcio: FulcioRoots) -> None:
    issuer = _oidc_issuer(leaf)
    if issuer != fulcio.oidc_issuer:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE,
                      f"the certificate was issued for OIDC issuer {issuer!r}, the policy wants {fulcio.oidc_issuer!r}")
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = names.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        emails = []
    if fulcio.subject_email not in emails:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, f"the certificate was issued to {', '.join(emails) or 'no e-mail'}, "
                                                    f"the policy wants {fulcio.subject_email}")


def _oidc_issuer(leaf: x509.Certificate) -> str:
    """The issuer Fulcio recorded: the v2 extension (a DER UTF8String) or the v1 one (raw text); both must agree."""
    found: list[str] = []
    for ext in leaf.extensions:
        if ext.oid == OIDC_ISSUER_V1 and isinstance(ext.value, x509.UnrecognizedExtension):
            found.append(ext.value.value.decode("utf-8", "replace"))
        elif ext.oid == OIDC_ISSUER_V2 and isinstance(ext.value, x509.UnrecognizedExtension):
            found.append(_der_utf8_string(ext.value.value))
    if not found:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, "the certificate records no OIDC issuer (not issued by Fulcio)")
    if len(set(found)) != 1:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, f"the certificate records conflicting OIDC issuers {found}")
    return found[0]


def _der_utf8_string(value: bytes) -> str:
    """Decode a DER UTF8String (tag 12); lengths up to 65535 bytes, in short or long form."""
    if len(value) < 2 or value[0] != 0x0C:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, "the OIDC issuer extension is not a UTF8String")
    length, start = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count not in (1, 2) or len(value) < 2 + count:
            raise Refused(Reason.UNTRUSTED_CERTIFICATE, "the OIDC issuer extension has a bad length")
        length, start = int.from_bytes(value[2:2 + count], "big"), 2 + count
    if len(value) != start + length:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, "the OIDC issuer extension has a bad length")
    try:
        return value[start:].decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(Reason.UNTRUSTED_CERTIFICATE, "the OIDC issuer extension is not UTF-8") from None


# --- primitives -----------------------------------------------------------------------------------------------


def _verifies(key: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _verifies_prehashed(key: PublicKey, signature: bytes, digest: bytes) -> bool:
    """Rekor signs the SHA-256 of its canonical entry with ECDSA."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def _signature_bytes(annotations: Mapping[str, str]) -> bytes:
    return _b64(_annotation(annotations, SIGNATURE_ANNOTATION), f"the {SIGNATURE_ANNOTATION} annotation")


def _annotation(annotations: Mapping[str, str], name: str) -> str:
    value = annotations.get(name)
    if not value:
        raise Refused(Reason.BAD_SIGNATURE, f"the signature has no {name} annotation")
    return value


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise Refused(Reason.BAD_SIGNATURE, f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise Refused(Reason.BAD_SIGNATURE, f"{what} is not valid base64") from None


def _strict_json(text: str | bytes, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicated key")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(Reason.BAD_SIGNATURE, f"{what} is not valid JSON: {exc}") from None


def _pem_body(pem: bytes) -> bytes:
    """The DER of the certificate or public key in a PEM text, or b"" when it holds neither."""
    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        pass
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
