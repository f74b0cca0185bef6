"""Deciding whether an image is trusted: the requirements of its scope, its manifest, the signatures found for it
and the loaded trust material in; a Verdict out, with one Outcome per requirement that says why.

Nothing here fetches: signatures come in as `Found` (fetch.py gets them), keys as `Material` (keys.py reads
them). A requirement accepts the image when at least one of the signatures passes all of: made by a trusted key
or certificate, for this manifest digest, claiming an identity the signedIdentity rule accepts. The image is
trusted when every requirement accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cripy.errors import InvalidArgument
from cripy.images.manifest import digest_of
from cripy.images.reference import Reference
from cripy.images.trust.identity import IdentityRule, expected_identity, parse_signed_reference
from cripy.images.trust.openpgp import verify_signed_message
from cripy.images.trust.payload import ATOMIC_TYPE, COSIGN_TYPE, PayloadError, parse_payload
from cripy.images.trust.policy import (
    AcceptAnything,
    Reject,
    Requirement,
    ScopeMatch,
    SignedBy,
    SigstoreSigned,
)
from cripy.images.trust.reasons import Reason, Refused
from cripy.images.trust.sigstore import SigstoreSignature, SigstoreTrust, verify_signature

GpgKeyrings = list[tuple[str, bytes]]
Material = GpgKeyrings | SigstoreTrust | Refused | None  # None: the requirement needs none


@dataclass(frozen=True)
class SignedImage:
    """The image as resolved: the reference it is pulled as and its top-level manifest."""

    reference: Reference
    manifest: bytes
    manifest_digest: str


@dataclass(frozen=True)
class Found:
    """The signatures of one kind found for the image, where they were looked for, and a note for the operator
    (why none could be found, or a fetch failure in `error`)."""

    where: str
    signatures: tuple[bytes, ...] | tuple[SigstoreSignature, ...] = ()
    note: str = ""
    error: str = ""


@dataclass(frozen=True)
class Outcome:
    requirement: Requirement
    accepted: bool
    detail: str
    reason: Reason | None = None  # set when refused


@dataclass(frozen=True)
class Verdict:
    image: SignedImage
    match: ScopeMatch
    outcomes: tuple[Outcome, ...]

    @property
    def accepted(self) -> bool:
        return all(o.accepted for o in self.outcomes)

    def refusal(self) -> str:
        """One line for a pull error: the image, the policy and scope, and every failing requirement's reason."""
        failing = [(i, o) for i, o in enumerate(self.outcomes, 1) if not o.accepted]
        parts = [f"requirement {i} of {len(self.outcomes)}, {o.requirement.describe()}: {o.reason}: {o.detail}"
                 for i, o in failing]
        return (f"image {self.image.reference} (manifest {self.image.manifest_digest}) is not trusted by policy "
                f"{self.match.describe_source()}, scope {self.match.describe_scope()}: {'; '.join(parts)}")

    def summary(self) -> str:
        return (f"image {self.image.reference} (manifest {self.image.manifest_digest}) accepted by policy "
                f"{self.match.describe_source()}, scope {self.match.describe_scope()}: "
                + "; ".join(o.detail for o in self.outcomes))


def evaluate(match: ScopeMatch, image: SignedImage, material: Sequence[Material], simple: Found | None,
             sigstore: Found | None) -> Verdict:
    """Judge every requirement of `match`; `material[i]` is what requirement i trusts (see keys.load_material)."""
    outcomes = []
    for requirement, loaded in zip(match.requirements, material):
        if isinstance(loaded, Refused):
            outcomes.append(Outcome(requirement, False, loaded.detail, loaded.reason))
        elif isinstance(requirement, AcceptAnything):
            outcomes.append(Outcome(requirement, True, "accepted without a signature (insecureAcceptAnything)"))
        elif isinstance(requirement, Reject):
            outcomes.append(Outcome(requirement, False, "every image in this scope is refused", Reason.REJECTED))
        elif isinstance(requirement, SignedBy):
            assert isinstance(loaded, list) and simple is not None
            outcomes.append(_judge_signatures(requirement, simple, "simple-signing",
                                              lambda sig: _check_simple(sig, loaded, requirement.identity, image)))
        else:
            assert isinstance(requirement, SigstoreSigned) and isinstance(loaded, SigstoreTrust)
            assert sigstore is not None
            outcomes.append(_judge_signatures(requirement, sigstore, "sigstore",
                                              lambda sig: _check_sigstore(sig, loaded, requirement.identity, image)))
    return Verdict(image, match, tuple(outcomes))


def _judge_signatures(requirement: Requirement, found: Found, kind: str, check: Callable[[Any], str]) -> Outcome:
    if found.error:
        return Outcome(requirement, False, f"{found.where}: {found.error}", Reason.UNAVAILABLE)
    if not found.signatures:
        note = f"; {found.note}" if found.note else ""
        return Outcome(requirement, False, f"no {kind} signature at {found.where}{note}", Reason.NO_SIGNATURE)
    refusals: list[Refused] = []
    for signature in found.signatures:
        try:
            return Outcome(requirement, True, check(signature))  # type: ignore[arg-type]
        except Refused as refused:
            refusals.append(refused)
    if len(refusals) == 1:
        return Outcome(requirement, False, f"{refusals[0].detail}; signature from {found.where}", refusals[0].reason)
    listed = "; ".join(f"signature {i}: {r}" for i, r in enumerate(refusals, 1))
    return Outcome(requirement, False, f"none of the {len(refusals)} signatures at {found.where} is accepted: "
                                       f"{listed}", refusals[0].reason)


def _check_simple(message: bytes, keyrings: GpgKeyrings, rule: IdentityRule, image: SignedImage) -> str:
    verified = verify_signed_message(message, keyrings)
    claimed = _check_claim(verified.payload, ATOMIC_TYPE, rule, image)
    return f"signed by GPG key {verified.fingerprint} as {claimed}"


def _check_sigstore(signature: SigstoreSignature, trust: SigstoreTrust, rule: IdentityRule,
                    image: SignedImage) -> str:
    payload = verify_signature(signature, trust)
    claimed = _check_claim(payload, COSIGN_TYPE, rule, image)
    signer = trust.fulcio.subject_email if trust.fulcio else "a trusted key"
    return f"sigstore signature by {signer} as {claimed}"


def _check_claim(payload: bytes, signature_type: str, rule: IdentityRule, image: SignedImage) -> str:
    """The claim of a cryptographically verified payload must be about this manifest and an accepted identity."""
    try:
        claim = parse_payload(payload, signature_type)
    except PayloadError as exc:
        raise Refused(Reason.BAD_SIGNATURE, f"the signed payload is malformed: {exc}") from None
    algorithm = claim.manifest_digest.split(":", 1)[0]
    if digest_of(image.manifest, algorithm) != claim.manifest_digest:
        raise Refused(Reason.MANIFEST_MISMATCH, f"it signs manifest {claim.manifest_digest}, but the registry "
                                                f"serves {image.manifest_digest} (the manifest was changed)")
    try:
        signed = parse_signed_reference(claim.docker_reference)
    except InvalidArgument as exc:
        raise Refused(Reason.IDENTITY_MISMATCH, f"it claims an invalid identity: {exc}") from None
    if not rule.matches(image.reference, signed):
        raise Refused(Reason.IDENTITY_MISMATCH, f"it claims {claim.docker_reference}, and signedIdentity "
                                                f"{rule.describe()} wants {_expected(rule, image.reference)}")
    return claim.docker_reference


def _expected(rule: IdentityRule, image: Reference) -> str:
    try:
        return expected_identity(rule, image)
    except InvalidArgument:
        return "an identity the remapped name cannot form"
