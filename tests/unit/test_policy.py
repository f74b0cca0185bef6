"""containers-policy.json trust policy: scope lookup, requirement parsing, strictness."""

import base64
import json
from pathlib import Path

import pytest

from cripy.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cripy.images.reference import parse_normalized
from cripy.images.trust.gate import refuse_outright
from cripy.images.trust.identity import (
    ExactReference,
    ExactRepository,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
)
from cripy.images.trust.policy import (
    AcceptAnything,
    Policy,
    Reject,
    SignedBy,
    SigstoreSigned,
    docker_scope_candidates,
    load_policy,
    parse_policy,
)

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]
SIGNED = [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/key.gpg"}]
SIGSTORE = [{"type": "sigstoreSigned", "keyPath": "/etc/pki/cosign.pub"}]
DIGEST = "sha256:" + "cd" * 32


def write_policy(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    return path


def policy(tmp_path: Path, default: list, **docker_scopes: list) -> Policy:
    return load_policy(write_policy(tmp_path, {"default": default, "transports": {"docker": docker_scopes}}))


def allowed(p: Policy, image: str) -> bool:
    return not p.requirements_for(parse_normalized(image)).rejects()


def requirement(item: dict):
    """The one requirement a docker scope holding `item` parses to."""
    p = parse_policy(json.dumps({"default": REJECT, "transports": {"docker": {"x.example.com": [item]}}}), None)
    return p.docker_scopes["x.example.com"][0]


def test_no_policy_configured_accepts_everything() -> None:
    p = load_policy(None)
    assert p.source is None
    match = p.requirements_for(parse_normalized("anything.example.com/x/y:z"))
    assert match.requirements == (AcceptAnything(),) and not match.needs_signatures()


def test_a_configured_policy_file_that_is_missing_refuses(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"trust policy .*missing.json does not exist"):
        load_policy(tmp_path / "missing.json")


def test_accept_anything_default(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {"default": ACCEPT}))
    assert p.source == tmp_path / "policy.json"
    assert allowed(p, "busybox")


def test_reject_default_names_file_ref_and_scope(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {"default": REJECT}))
    ref = parse_normalized("busybox")
    with pytest.raises(PermissionDenied) as info:
        refuse_outright(p.requirements_for(ref), ref)
    message = str(info.value)
    assert f"image docker.io/library/busybox:latest is refused by policy {tmp_path / 'policy.json'}" in message
    assert "global default" in message


def test_most_specific_scope_wins(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        REJECT,
        **{
            "docker.io/library/busybox": ACCEPT,
            "docker.io/openshift": ACCEPT,
            "quay.io": ACCEPT,
            "quay.io/evil": REJECT,
            "quay.io/evil/but-fine": ACCEPT,
            "quay.io/app:bad": REJECT,
            f"quay.io/app@{DIGEST}": REJECT,
        },
    )
    assert allowed(p, "busybox:1.36")
    assert not allowed(p, "alpine")
    assert allowed(p, "docker.io/openshift/origin")
    assert not allowed(p, "docker.io/openshiftx/origin")
    assert allowed(p, "quay.io/anything/here")
    assert not allowed(p, "quay.io/evil/app")
    assert allowed(p, "quay.io/evil/but-fine:1")
    assert allowed(p, "quay.io/app:good")
    assert not allowed(p, "quay.io/app:bad")
    assert not allowed(p, f"quay.io/app@{DIGEST}")
    assert not allowed(p, "quay.io:5000/app")  # the host scope includes no port


def test_scope_in_message(tmp_path: Path) -> None:
    p = policy(tmp_path, ACCEPT, **{"quay.io/evil": REJECT})
    ref = parse_normalized("quay.io/evil/app")
    with pytest.raises(PermissionDenied, match="scope docker 'quay.io/evil'"):
        refuse_outright(p.requirements_for(ref), ref)


def test_wildcard_scopes(tmp_path: Path) -> None:
    p = policy(tmp_path, REJECT, **{"*.temporary.example.com": ACCEPT, "*.example.com": REJECT,
                                    "*.lan": ACCEPT})
    assert allowed(p, "a.temporary.example.com/x")
    assert allowed(p, "b.a.temporary.example.com:5000/x")
    assert not allowed(p, "temporary.example.com/x")
    assert not allowed(p, "other.example.com/x")
    assert allowed(p, "registry.lan/x")
    assert not allowed(p, "registry.lan.example.org/x")


def test_exact_host_beats_wildcard(tmp_path: Path) -> None:
    p = policy(tmp_path, ACCEPT, **{"*.example.com": REJECT, "good.example.com": ACCEPT})
    assert allowed(p, "good.example.com/x")
    assert not allowed(p, "bad.example.com/x")


def test_transport_default_beats_global_default(tmp_path: Path) -> None:
    p = policy(tmp_path, REJECT, **{"": ACCEPT})
    assert allowed(p, "anything.example.com/x")
    p = policy(tmp_path, ACCEPT, **{"": REJECT, "quay.io": ACCEPT})
    assert allowed(p, "quay.io/x")
    ref = parse_normalized("busybox")
    with pytest.raises(PermissionDenied, match="docker transport default"):
        refuse_outright(p.requirements_for(ref), ref)


def test_other_transports_are_ignored(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {
        "default": ACCEPT,
        "transports": {
            "docker-daemon": {"": REJECT},
            "dir": {"": REJECT},
            "atomic": {"quay.io": SIGNED},
        },
    }))
    assert allowed(p, "quay.io/x")
    assert p.docker_scopes == {}


def test_all_requirements_of_the_scope_apply(tmp_path: Path) -> None:
    p = policy(tmp_path, ACCEPT, **{"a.example.com": ACCEPT + REJECT, "b.example.com": ACCEPT + SIGNED,
                                    "c.example.com": ACCEPT + ACCEPT})
    assert not allowed(p, "a.example.com/x")
    b = p.requirements_for(parse_normalized("b.example.com/x"))
    assert b.needs_signatures() and not b.rejects() and len(b.requirements) == 2
    c = p.requirements_for(parse_normalized("c.example.com/x"))
    assert not c.needs_signatures() and not c.rejects()


def test_scope_candidates_order() -> None:
    assert docker_scope_candidates(parse_normalized(f"a.b.example.com:5000/ns/app:1@{DIGEST}")) == [
        f"a.b.example.com:5000/ns/app@{DIGEST}",
        "a.b.example.com:5000/ns/app:1",
        "a.b.example.com:5000/ns/app",
        "a.b.example.com:5000/ns",
        "a.b.example.com:5000",
        "*.b.example.com",
        "*.example.com",
        "*.com",
        "",
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "JSON object"),
        ('{"transports": {}}', "default"),
        ('{"default": []}', "empty requirement list"),
        ('{"default": {"type": "reject"}}', "must be a list"),
        ('{"default": [{"type": "acceptSometimes"}]}', "unknown requirement type 'acceptSometimes'"),
        ('{"default": [{"kind": "reject"}]}', "unknown requirement type None"),
        ('{"default": ["reject"]}', "must be an object"),
        ('{"default": [{"type": "reject", "why": "no"}]}', "unknown key 'why'"),
        ('{"default": [{"type": "reject"}], "extra": 1}', "unknown key 'extra'"),
        ('{"default": [{"type": "reject"}], "default": [{"type": "reject"}]}', "appears twice"),
        ('{"default": [{"type": "reject"}], "transports": []}', "transports"),
        ('{"default": [{"type": "reject"}], "transports": {"docker": []}}', "transports.docker"),
        ('{"default": [{"type": "reject"}], "transports": {"docker": {"x.io": []}}}', "empty requirement list"),
        ('{"default": [{"type": "reject"}], "transports": {"dir": {"": [{"type": "nope"}]}}}', "unknown requirement"),
        ('{"default": [{"type": "reject"}], "transports": {"docker": {"example*.com": [{"type": "reject"}]}}}',
         "wildcard"),
        ('{"default": [{"type": "reject"}], "transports": {"docker": {"*.example.com/x": [{"type": "reject"}]}}}',
         "wildcard"),
    ],
)
def test_malformed_policies_name_the_file(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=reason) as info:
        load_policy(path)
    assert str(path) in str(info.value)


# ---- signature requirements


def test_signed_by_forms() -> None:
    by_path = requirement(SIGNED[0])
    assert isinstance(by_path, SignedBy) and by_path.identity == MatchRepoDigestOrExact()
    assert [k.path for k in by_path.keyrings] == [Path("/etc/pki/key.gpg")]
    by_paths = requirement({"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["/a.gpg", "/b.gpg"]})
    assert [k.describe() for k in by_paths.keyrings] == ["/a.gpg", "/b.gpg"]
    by_data = requirement({"type": "signedBy", "keyType": "GPGKeys", "keyData": base64.b64encode(b"KEY").decode()})
    assert by_data.keyrings[0].data == b"KEY" and by_data.keyrings[0].describe() == "keyData (inline)"


def test_sigstore_forms() -> None:
    keyed = requirement({**SIGSTORE[0], "rekorPublicKeyPath": "/etc/pki/rekor.pub"})
    assert isinstance(keyed, SigstoreSigned) and keyed.fulcio is None
    assert [k.path for k in keyed.rekor_keys] == [Path("/etc/pki/rekor.pub")]
    many = requirement({"type": "sigstoreSigned", "keyDatas": [base64.b64encode(b"A").decode(),
                                                                base64.b64encode(b"B").decode()]})
    assert [k.data for k in many.keys] == [b"A", b"B"]
    keyless = requirement({"type": "sigstoreSigned", "rekorPublicKeyData": base64.b64encode(b"R").decode(),
                           "fulcio": {"caPath": "/ca.pem", "oidcIssuer": "https://issuer", "subjectEmail": "a@b"}})
    assert keyless.fulcio is not None and keyless.fulcio.subject_email == "a@b" and not keyless.keys
    assert "Fulcio CA /ca.pem" in keyless.describe() and "Rekor key rekorPublicKeyData" in keyless.describe()


@pytest.mark.parametrize(("identity", "expected"), [
    ({"type": "matchExact"}, MatchExact()),
    ({"type": "matchRepoDigestOrExact"}, MatchRepoDigestOrExact()),
    ({"type": "matchRepository"}, MatchRepository()),
    ({"type": "exactReference", "dockerReference": "quay.io/a/b:1"}, ExactReference(parse_normalized("quay.io/a/b:1"))),
    ({"type": "exactRepository", "dockerRepository": "docker.io/busybox"},
     ExactRepository(parse_normalized("docker.io/library/busybox").with_tag(None))),
    ({"type": "remapIdentity", "prefix": "mirror.local:5000/vendor", "signedPrefix": "vendor.example.com"},
     RemapIdentity("mirror.local:5000/vendor", "vendor.example.com")),
])
def test_signed_identity_forms(identity: dict, expected: object) -> None:
    assert requirement({**SIGNED[0], "signedIdentity": identity}).identity == expected


@pytest.mark.parametrize(("item", "reason"), [
    ({"type": "signedBy", "keyPath": "/k"}, "keyType None is not supported"),
    ({"type": "signedBy", "keyType": "X509Certificates", "keyPath": "/k"}, "keyType 'X509Certificates'"),
    ({"type": "signedBy", "keyType": "GPGKeys"}, "one of keyPath, keyPaths or keyData is required"),
    ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyData": "QQ=="}, "mutually exclusive"),
    ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "relative/k"}, "must be an absolute path"),
    ({"type": "signedBy", "keyType": "GPGKeys", "keyPaths": []}, "non-empty list"),
    ({"type": "signedBy", "keyType": "GPGKeys", "keyData": "not base64!"}, "not valid base64"),
    ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyring": "/x"}, "unknown key 'keyring'"),
    ({"type": "sigstoreSigned"}, "exactly one of keyPath"),
    ({"type": "sigstoreSigned", "keyPath": "/k", "fulcio": {"caPath": "/c", "oidcIssuer": "i",
                                                            "subjectEmail": "e"}}, "exactly one of keyPath"),
    ({"type": "sigstoreSigned", "fulcio": {"caPath": "/c", "oidcIssuer": "i", "subjectEmail": "e"}},
     "fulcio needs a Rekor public key"),
    ({"type": "sigstoreSigned", "rekorPublicKeyPath": "/r", "fulcio": {"caPath": "/c", "oidcIssuer": "i"}},
     "subjectEmail is required"),
    ({"type": "sigstoreSigned", "rekorPublicKeyPath": "/r",
      "fulcio": {"caPath": "/c", "caData": "QQ==", "oidcIssuer": "i", "subjectEmail": "e"}}, "mutually exclusive"),
    ({"type": "sigstoreSigned", "rekorPublicKeyPath": "/r",
      "fulcio": {"caPath": "/c", "oidcIssuer": "i", "subjectEmail": "e", "url": "x"}}, "unknown key 'url'"),
    ({"type": "sigstoreSigned", "keyPath": "/k", "rekorPublicKeyPath": "/r", "rekorPublicKeyData": "QQ=="},
     "mutually exclusive"),
    ({"type": "sigstoreSigned", "pki": {}}, "\"pki\""),
    ({**SIGNED[0], "signedIdentity": {"type": "matchSomething"}}, "unknown type 'matchSomething'"),
    ({**SIGNED[0], "signedIdentity": {"type": "matchExact", "dockerReference": "a.b/c:1"}},
     "unknown key 'dockerReference'"),
    ({**SIGNED[0], "signedIdentity": {"type": "exactReference"}}, "needs 'dockerReference'"),
    ({**SIGNED[0], "signedIdentity": {"type": "exactReference", "dockerReference": "quay.io/a/b"}},
     "names no tag or digest"),
    ({**SIGNED[0], "signedIdentity": {"type": "exactRepository", "dockerRepository": "quay.io/a/b:1"}},
     "without tag or digest"),
    ({**SIGNED[0], "signedIdentity": {"type": "remapIdentity", "prefix": "quay.io/a:1", "signedPrefix": "b.io"}},
     "without tag"),
    ({**SIGNED[0], "signedIdentity": {"type": "remapIdentity", "prefix": "quay.io/a"}}, "needs 'signedPrefix'"),
])
def test_malformed_signature_requirements_name_the_key(item: dict, reason: str) -> None:
    document = json.dumps({"default": REJECT, "transports": {"docker": {"x.example.com": [item]}}})
    with pytest.raises(InvalidArgument, match=reason) as info:
        parse_policy(document, Path("/etc/containers/policy.json"))
    message = str(info.value)
    assert "trust policy /etc/containers/policy.json" in message
    assert "transports.docker['x.example.com'][0]" in message


def test_signature_requirements_of_other_transports_are_checked_too() -> None:
    document = json.dumps({"default": REJECT, "transports": {"atomic": {"": [{"type": "signedBy"}]}}})
    with pytest.raises(InvalidArgument, match="transports.atomic"):
        parse_policy(document, None)


def test_reject_needs_no_manifest_but_signatures_do(tmp_path: Path) -> None:
    p = policy(tmp_path, REJECT, **{"quay.io/signed": SIGSTORE, "quay.io/open": ACCEPT})
    assert p.requirements_for(parse_normalized("quay.io/signed/app")).needs_signatures()
    assert not p.requirements_for(parse_normalized("quay.io/open/app")).needs_signatures()
    assert p.requirements_for(parse_normalized("quay.io/other/app")).requirements == (Reject(),)
