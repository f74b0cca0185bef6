"""Judging an image: every requirement of the scope against the signatures found, with the reason in words."""

import hashlib
from pathlib import Path

import pytest

from cripy.config import ImagesConfig
from cripy.errors import InvalidArgument
from cripy.images.reference import parse_normalized
from cripy.images.trust.evaluate import Found, SignedImage, evaluate
from cripy.images.trust.gate import load_pull_policy
from cripy.images.trust.identity import MatchRepository
from cripy.images.trust.policy import AcceptAnything, KeySource, ScopeMatch, SignedBy, SigstoreSigned
from cripy.images.trust.reasons import Reason, Refused
from cripy.images.trust.sigstore import SigstoreSignature, SigstoreTrust, TrustedKey, load_public_key
from tests.support.signing import CosignKey, GpgKey, atomic_payload, cosign_payload, key_signature

MANIFEST = b'{"schemaVersion": 2, "note": "the manifest under test"}'
OTHER_MANIFEST = b'{"schemaVersion": 2, "note": "another"}'
REF = "quay.io/team/app:1"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


IMAGE = SignedImage(parse_normalized(REF), MANIFEST, digest(MANIFEST))
SIGNED_BY = SignedBy((KeySource("keyPath", path=Path("/etc/pki/key.gpg")),))
SIGSTORE = SigstoreSigned((KeySource("keyPath", path=Path("/etc/pki/cosign.pub")),))


def match(*requirements) -> ScopeMatch:
    return ScopeMatch(Path("/etc/containers/policy.json"), "quay.io/team", tuple(requirements))


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory):
    key = GpgKey(tmp_path_factory.mktemp("gpg") / "home")
    yield key
    key.close()


@pytest.fixture(scope="module")
def cosign() -> CosignKey:
    return CosignKey.generate()


def sigstore_trust(key: CosignKey) -> SigstoreTrust:
    return SigstoreTrust(keys=(TrustedKey("key /etc/pki/cosign.pub", load_public_key(key.public_pem, "k")),))


def test_accepted_with_every_requirement_holding(gpg: GpgKey, cosign: CosignKey) -> None:
    payload = cosign_payload(IMAGE.manifest_digest, REF)
    verdict = evaluate(match(AcceptAnything(), SIGNED_BY, SIGSTORE), IMAGE,
                       [None, [("k", gpg.public_key())], sigstore_trust(cosign)],
                       Found("lookaside x", (gpg.sign(atomic_payload(IMAGE.manifest_digest, REF)),)),
                       Found("attachment y", (SigstoreSignature(payload, key_signature(cosign, payload)),)))
    assert verdict.accepted
    assert gpg.fingerprint in verdict.summary() and "policy /etc/containers/policy.json" in verdict.summary()


def test_refusal_names_only_the_failing_requirement(gpg: GpgKey) -> None:
    verdict = evaluate(match(AcceptAnything(), SIGNED_BY), IMAGE, [None, [("k", gpg.public_key())]],
                       Found("lookaside http://sigs/team/app@sha256=x/signature-1", note="a hint"), None)
    assert not verdict.accepted
    text = verdict.refusal()
    assert text.startswith(f"image {REF} (manifest {IMAGE.manifest_digest}) is not trusted by policy "
                           "/etc/containers/policy.json, scope docker 'quay.io/team'")
    assert "requirement 2 of 2, signedBy (GPG keys from /etc/pki/key.gpg" in text
    assert "no signature found: no simple-signing signature at lookaside http://sigs" in text and "a hint" in text
    assert "requirement 1 of 2" not in text


def test_one_good_signature_among_bad_ones_is_enough(gpg: GpgKey, tmp_path: Path) -> None:
    stranger = GpgKey(tmp_path / "stranger", "stranger")
    try:
        bad = stranger.sign(atomic_payload(IMAGE.manifest_digest, REF))
        good = gpg.sign(atomic_payload(IMAGE.manifest_digest, REF))
        keyrings = [("k", gpg.public_key())]
        assert evaluate(match(SIGNED_BY), IMAGE, [keyrings], Found("l", (bad, good)), None).accepted
        refused = evaluate(match(SIGNED_BY), IMAGE, [keyrings], Found("l", (bad, bad)), None)
        outcome = refused.outcomes[0]
        assert outcome.reason == Reason.OTHER_KEY and "none of the 2 signatures" in outcome.detail
        assert "signature 2: signed by another key" in outcome.detail
    finally:
        stranger.close()


@pytest.mark.parametrize(("claimed_digest", "claimed_ref", "reason"), [
    (digest(OTHER_MANIFEST), REF, Reason.MANIFEST_MISMATCH),
    (digest(MANIFEST), "quay.io/team/app:2", Reason.IDENTITY_MISMATCH),
    (digest(MANIFEST), "quay.io/team/other:1", Reason.IDENTITY_MISMATCH),
    (digest(MANIFEST), "Not A Reference", Reason.IDENTITY_MISMATCH),
])
def test_claims_must_fit_the_image(cosign: CosignKey, claimed_digest: str, claimed_ref: str, reason: Reason) -> None:
    payload = cosign_payload(claimed_digest, claimed_ref)
    found = Found("attachment", (SigstoreSignature(payload, key_signature(cosign, payload)),))
    outcome = evaluate(match(SIGSTORE), IMAGE, [sigstore_trust(cosign)], None, found).outcomes[0]
    assert not outcome.accepted and outcome.reason == reason


def test_identity_rule_of_the_requirement_applies(cosign: CosignKey) -> None:
    payload = cosign_payload(IMAGE.manifest_digest, "quay.io/team/app:2")
    found = Found("attachment", (SigstoreSignature(payload, key_signature(cosign, payload)),))
    loose = SigstoreSigned(SIGSTORE.keys, identity=MatchRepository())
    assert evaluate(match(loose), IMAGE, [sigstore_trust(cosign)], None, found).accepted
    outcome = evaluate(match(SIGSTORE), IMAGE, [sigstore_trust(cosign)], None, found).outcomes[0]
    assert "claims quay.io/team/app:2" in outcome.detail and f"wants {REF}" in outcome.detail


def test_unusable_material_and_unreachable_signatures_refuse() -> None:
    broken = Refused(Reason.TRUST_MATERIAL, "keyPath /etc/pki/key.gpg cannot be read: No such file")
    outcome = evaluate(match(SIGNED_BY), IMAGE, [broken], Found("l", (b"sig",)), None).outcomes[0]
    assert outcome.reason == Reason.TRUST_MATERIAL and "cannot be read" in outcome.detail
    outcome = evaluate(match(SIGSTORE), IMAGE, [SigstoreTrust()], None,
                       Found("attachment", error="registry unavailable")).outcomes[0]
    assert outcome.reason == Reason.UNAVAILABLE and "registry unavailable" in outcome.detail


def test_policy_file_per_namespace(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "team-a.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (tmp_path / "policy.json").write_text('{"default": [{"type": "reject"}]}')
    settings = ImagesConfig(signature_policy=str(tmp_path / "policy.json"), signature_policy_dir=str(policies))
    assert load_pull_policy(settings, "team-a").source == policies / "team-a.json"
    assert load_pull_policy(settings, "team-b").source == tmp_path / "policy.json"
    assert load_pull_policy(settings, "").source == tmp_path / "policy.json"
    for hostile in ("../etc", "a/b", "A", "-x", "x" * 64, "team-a.json"):
        with pytest.raises(InvalidArgument, match="namespace"):
            load_pull_policy(settings, hostile)
    unset = ImagesConfig(signature_policy="", signature_policy_dir="")
    assert load_pull_policy(unset, "team-a").source is None
