"""signedIdentity rules: which claimed identity each accepts for the reference an image is pulled as."""

import pytest

from cripy.errors import InvalidArgument
from cripy.images.reference import parse_normalized
from cripy.images.trust.identity import (
    ExactReference,
    ExactRepository,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
    expected_identity,
    parse_identity_prefix,
    parse_signed_reference,
)

DIGEST = "sha256:" + "ab" * 32
REPO = "registry.example.com/team/app"


def matches(rule, pulled: str, claimed: str) -> bool:
    return rule.matches(parse_normalized(pulled), parse_signed_reference(claimed))


@pytest.mark.parametrize(("pulled", "claimed", "expected"), [
    (f"{REPO}:1", f"{REPO}:1", True),
    (f"{REPO}:1", f"{REPO}:2", False),
    (f"{REPO}:1", REPO, False),  # a name-only claim never passes for a tag
    (f"{REPO}@{DIGEST}", f"{REPO}:1", True),
    (f"{REPO}@{DIGEST}", f"{REPO}-other:1", False),
    (f"{REPO}:1", "other.example.com/team/app:1", False),
])
def test_match_repo_digest_or_exact(pulled: str, claimed: str, expected: bool) -> None:
    assert matches(MatchRepoDigestOrExact(), pulled, claimed) is expected


def test_match_exact_needs_the_same_string() -> None:
    assert matches(MatchExact(), f"{REPO}:1", f"{REPO}:1")
    assert not matches(MatchExact(), f"{REPO}@{DIGEST}", f"{REPO}:1")
    assert matches(MatchExact(), f"{REPO}@{DIGEST}", f"{REPO}@{DIGEST}")


def test_match_repository_ignores_tags() -> None:
    assert matches(MatchRepository(), f"{REPO}:latest", f"{REPO}:1.2.3")
    assert matches(MatchRepository(), f"{REPO}@{DIGEST}", REPO)
    assert not matches(MatchRepository(), f"{REPO}:1", f"{REPO}/sub:1")


def test_exact_reference_and_repository_ignore_the_pulled_name() -> None:
    vendor = parse_normalized("vendor.example.com/app:1.0")
    assert matches(ExactReference(vendor), f"{REPO}:anything", "vendor.example.com/app:1.0")
    assert not matches(ExactReference(vendor), "vendor.example.com/app:1.0", f"{REPO}:anything")
    repository = ExactRepository(parse_normalized("vendor.example.com/app").with_tag(None))
    assert matches(repository, f"{REPO}:x", "vendor.example.com/app:7")
    assert not matches(repository, f"{REPO}:x", "vendor.example.com/app2:7")


def test_remap_identity_replaces_the_prefix_at_a_component_boundary() -> None:
    rule = RemapIdentity("mirror.local:5000/vendor", "vendor.example.com")
    assert matches(rule, "mirror.local:5000/vendor/product/app:1", "vendor.example.com/product/app:1")
    assert not matches(rule, "mirror.local:5000/vendor/product/app:1", "vendor.example.com/product/app:2")
    assert matches(rule, f"mirror.local:5000/vendor/app@{DIGEST}", "vendor.example.com/app:9")
    # "vendorx" does not start with the component "vendor": no remapping, so the mirror name itself must match.
    assert not matches(rule, "mirror.local:5000/vendorx/app:1", "vendor.example.comx/app:1")
    assert matches(rule, "mirror.local:5000/vendorx/app:1", "mirror.local:5000/vendorx/app:1")
    assert expected_identity(rule, parse_normalized("mirror.local:5000/vendor/a:1")) == "vendor.example.com/a:1"


def test_signed_references_normalize_like_docker() -> None:
    assert str(parse_signed_reference("busybox:1")) == "docker.io/library/busybox:1"
    assert parse_signed_reference("busybox").tag is None
    with pytest.raises(InvalidArgument):
        parse_signed_reference("quay.io/Team/app:1")


@pytest.mark.parametrize("bad", ["quay.io/", "quay.io/a:1", f"quay.io/a@{DIGEST}", "quay.io//a"])
def test_remap_prefixes_are_names_without_tags(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_identity_prefix(bad, "prefix")
