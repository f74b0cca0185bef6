"""containers-policy.json trust policy: scope lookup and requirement semantics."""

import json
from pathlib import Path

import pytest

from cripy.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cripy.images.policy import Policy, docker_scope_candidates, load_policy
from cripy.images.reference import parse_normalized

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
    try:
        p.check(parse_normalized(image))
    except PermissionDenied:
        return False
    return True


def test_no_policy_file_accepts_everything(tmp_path: Path) -> None:
    for p in (load_policy(None), load_policy(tmp_path / "missing.json")):
        assert p.source is None
        p.check(parse_normalized("anything.example.com/x/y:z"))


def test_accept_anything_default(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {"default": ACCEPT}))
    assert p.source == tmp_path / "policy.json"
    p.check(parse_normalized("busybox"))


def test_reject_default_names_file_ref_and_scope(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {"default": REJECT}))
    with pytest.raises(PermissionDenied) as info:
        p.check(parse_normalized("busybox"))
    message = str(info.value)
    assert f"trust policy {tmp_path / 'policy.json'} rejects docker.io/library/busybox:latest" in message
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
    with pytest.raises(PermissionDenied, match="scope: docker 'quay.io/evil'"):
        p.check(parse_normalized("quay.io/evil/app"))


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
    with pytest.raises(PermissionDenied, match="docker transport default"):
        p.check(parse_normalized("busybox"))


def test_other_transports_are_ignored(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {
        "default": ACCEPT,
        "transports": {
            "docker-daemon": {"": REJECT},
            "dir": {"": REJECT},
            "atomic": {"quay.io": SIGNED},
        },
    }))
    p.check(parse_normalized("quay.io/x"))
    assert p.docker_scopes == {}


@pytest.mark.parametrize("requirements", [SIGNED, SIGSTORE])
def test_signature_requirements_fail_precondition(tmp_path: Path, requirements: list) -> None:
    p = policy(tmp_path, ACCEPT, **{"registry.example.com/signed": requirements})
    with pytest.raises(FailedPrecondition) as info:
        p.check(parse_normalized("registry.example.com/signed/app:1"))
    message = str(info.value)
    assert "signature verification" in message
    assert requirements[0]["type"] in message
    assert "cripy does not perform" in message
    assert "'registry.example.com/signed'" in message
    assert str(tmp_path / "policy.json") in message
    p.check(parse_normalized("registry.example.com/unsigned/app:1"))


def test_all_requirements_must_hold(tmp_path: Path) -> None:
    p = policy(tmp_path, ACCEPT, **{"a.example.com": ACCEPT + REJECT, "b.example.com": ACCEPT + SIGNED,
                                    "c.example.com": ACCEPT + ACCEPT})
    with pytest.raises(PermissionDenied):
        p.check(parse_normalized("a.example.com/x"))
    with pytest.raises(FailedPrecondition):
        p.check(parse_normalized("b.example.com/x"))
    p.check(parse_normalized("c.example.com/x"))


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
        ('{"default": [{"type": "reject", "why": "no"}]}', "unexpected key 'why'"),
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
