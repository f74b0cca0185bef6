"""The trust material a requirement names, read and parsed: GPG keyrings for signedBy, public keys, Fulcio CA
certificates and Rekor keys for sigstoreSigned. Files are read at every check, so a rotated key applies at the
next pull. A file that is missing or holds the wrong thing refuses the requirement (never accepts), naming it.
"""

from __future__ import annotations

from typing import Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from cripy.images.trust.evaluate import Material
from cripy.images.trust.openpgp import KeyringError, binary_keyring
from cripy.images.trust.policy import KeySource, Requirement, SignedBy, SigstoreSigned
from cripy.images.trust.reasons import Reason, Refused
from cripy.images.trust.sigstore import (
    FulcioRoots,
    SigstoreTrust,
    TrustedKey,
    load_certificates,
    load_public_key,
)

MAX_KEY_FILE = 1024 * 1024


def load_material(requirements: Sequence[Requirement]) -> list[Material]:
    """What each requirement trusts (None for those without keys); a Refused where the material is unusable."""
    material: list[Material] = []
    for requirement in requirements:
        try:
            if isinstance(requirement, SignedBy):
                material.append(gpg_keyrings(requirement))
            elif isinstance(requirement, SigstoreSigned):
                material.append(sigstore_trust(requirement))
            else:
                material.append(None)
        except Refused as refused:
            material.append(refused)
    return material


def gpg_keyrings(requirement: SignedBy) -> list[tuple[str, bytes]]:
    """(description, binary keyring) for each keyring of a signedBy requirement."""
    keyrings = []
    for source in requirement.keyrings:
        data = _read(source)
        try:
            keyrings.append((source.describe(), binary_keyring(data, source.describe())))
        except KeyringError as exc:
            raise Refused(Reason.TRUST_MATERIAL, str(exc)) from None
    return keyrings


def sigstore_trust(requirement: SigstoreSigned) -> SigstoreTrust:
    keys = tuple(_public_key(source) for source in requirement.keys)
    rekor_keys = tuple(_public_key(source) for source in requirement.rekor_keys)
    for rekor in rekor_keys:
        if not isinstance(rekor.key, ec.EllipticCurvePublicKey):
            raise Refused(Reason.TRUST_MATERIAL, f"Rekor key {rekor.description} is not an ECDSA key")
    fulcio = None
    if requirement.fulcio is not None:
        ca = requirement.fulcio.ca
        try:
            certificates = load_certificates(_read(ca), f"Fulcio CA {ca.describe()}")
        except ValueError as exc:
            raise Refused(Reason.TRUST_MATERIAL, str(exc)) from None
        fulcio = FulcioRoots(f"Fulcio CA {ca.describe()}", certificates, requirement.fulcio.oidc_issuer,
                             requirement.fulcio.subject_email)
    return SigstoreTrust(keys, fulcio, rekor_keys)


def _public_key(source: KeySource) -> TrustedKey:
    try:
        return TrustedKey(f"key {source.describe()}", load_public_key(_read(source), f"key {source.describe()}"))
    except ValueError as exc:
        raise Refused(Reason.TRUST_MATERIAL, str(exc)) from None


def _read(source: KeySource) -> bytes:
    if source.data is not None:
        return source.data
    assert source.path is not None
    try:
        with open(source.path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise Refused(Reason.TRUST_MATERIAL, f"{source.key} {source.path} cannot be read: "
                                             f"{exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise Refused(Reason.TRUST_MATERIAL, f"{source.key} {source.path} is larger than {MAX_KEY_FILE} bytes")
    if not data.strip():
        raise Refused(Reason.TRUST_MATERIAL, f"{source.key} {source.path} is empty")
    return data
