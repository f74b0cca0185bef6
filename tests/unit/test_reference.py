"""Image reference parsing, normalization and validation."""

import pytest

from cripy.errors import InvalidArgument
from cripy.images.reference import (
    Reference,
    is_digest,
    is_short_name,
    parse_image_id,
    parse_location,
    parse_normalized,
    parse_reference,
    parse_short_name,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4
HEX = "fedcba9876543210" * 4


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("foo/bar", "docker.io", "foo/bar", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/foo/bar:v1", "docker.io", "foo/bar", "v1", None),
        ("registry-1.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("quay.io/ns/sub/app:1.0", "quay.io", "ns/sub/app", "1.0", None),
        ("127.0.0.1:5000/test/app", "127.0.0.1:5000", "test/app", "latest", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/app:tag", "localhost:5000", "app", "tag", None),
        (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST),
        (f"quay.io/a/b:t@{DIGEST}", "quay.io", "a/b", "t", DIGEST),
        ("example.com/a.b/c_d/e__f/g-h/i---j:T_a.g-9", "example.com", "a.b/c_d/e__f/g-h/i---j", "T_a.g-9", None),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
        ("Registry.Example.COM/app", "Registry.Example.COM", "app", "latest", None),
    ],
)
def test_parse_normalized(text: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    assert parse_normalized(text) == Reference(domain, path, tag, digest)


def test_name_and_str() -> None:
    ref = parse_normalized(f"quay.io/a/b:t@{DIGEST}")
    assert ref.name == "quay.io/a/b"
    assert str(ref) == f"quay.io/a/b:t@{DIGEST}"
    assert str(parse_normalized("busybox")) == "docker.io/library/busybox:latest"
    assert str(Reference("quay.io", "x")) == "quay.io/x"


def test_parse_reference_requires_domain_and_adds_no_tag() -> None:
    assert parse_reference("quay.io/a/b") == Reference("quay.io", "a/b", None, None)
    assert parse_reference("docker.io/busybox") == Reference("docker.io", "library/busybox", None, None)
    assert parse_reference("index.docker.io/library/busybox:1") == Reference("docker.io", "library/busybox", "1")
    with pytest.raises(InvalidArgument, match="not fully qualified"):
        parse_reference("busybox")
    with pytest.raises(InvalidArgument, match="not fully qualified"):
        parse_reference("foo/bar:1")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("a//b", "empty component"),
        ("quay.io/a/", "empty component"),
        ("quay.io/", "path is empty"),
        ("busybox:", "tag ''"),
        ("busybox:" + "t" * 129, "129 characters long"),
        ("busybox:-bad", "tag '-bad'"),
        ("busybox:a+b", "tag 'a\\+b'"),
        ("busybox@sha256:abc", "64 lowercase hex"),
        ("busybox@sha256:" + "A" * 64, "64 lowercase hex"),
        ("busybox@sha256:" + "a" * 65, "64 lowercase hex"),
        ("busybox@md5:" + "a" * 32, "not supported"),
        ("busybox@", "not of the form"),
        ("busybox@nocolon", "not of the form"),
        ("a/-b", "invalid"),
        ("a/b_", "invalid"),
        ("a/b..c", "invalid"),
        ("a/b___c", "invalid"),
        ("my image", "invalid"),
        ("host:99999/app", "out of range"),
        ("-host.com/app", "not a valid registry domain"),
        ("ho_st.com/app", "not a valid registry domain"),
        (HEX, "image id"),
        ("example.com/" + "a" * 250, "limit is 255"),
        (":tag", "repository name is empty"),
    ],
)
def test_malformed_references(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as info:
        parse_normalized(text)
    assert "invalid image reference" in str(info.value)


def test_error_names_the_reference() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_normalized("quay.io/Foo/bar")
    assert "'quay.io/Foo/bar'" in str(info.value)


def test_64_hex_is_fine_below_a_namespace_and_as_a_tag() -> None:
    assert parse_normalized(f"foo/{HEX}").path == f"foo/{HEX}"
    assert parse_normalized(f"busybox:{HEX}").tag == HEX


def test_longest_valid_tag() -> None:
    tag = "t" * 128
    assert parse_normalized(f"busybox:{tag}").tag == tag


def test_with_tag_digest_domain_and_path() -> None:
    ref = parse_normalized("quay.io/a/b:1")
    assert ref.with_tag("2") == Reference("quay.io", "a/b", "2", None)
    assert ref.with_tag(None).with_digest(DIGEST) == Reference("quay.io", "a/b", None, DIGEST)
    assert ref.with_domain_and_path("127.0.0.1:5000", "mirror/a/b") == Reference("127.0.0.1:5000", "mirror/a/b", "1")
    with pytest.raises(InvalidArgument):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidArgument):
        ref.with_digest("sha256:short")
    with pytest.raises(InvalidArgument):
        ref.with_domain_and_path("bad_host", "a")
    with pytest.raises(InvalidArgument):
        ref.with_domain_and_path("quay.io", "A/b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", True),
        ("busybox:1", True),
        (f"busybox@{DIGEST}", True),
        ("foo/bar", True),
        ("foo/bar/baz:1", True),
        ("docker.io/busybox", False),
        ("quay.io/foo/bar", False),
        ("localhost/foo", False),
        ("localhost:5000/foo", False),
        ("127.0.0.1:5000/foo", False),
        ("registry/foo", True),
    ],
)
def test_is_short_name(text: str, expected: bool) -> None:
    assert is_short_name(text) is expected


def test_parse_short_name() -> None:
    assert parse_short_name("foo/bar:1").name == "foo/bar"
    assert parse_short_name("foo/bar:1").tag == "1"
    short = parse_short_name(f"app@{DIGEST}")
    assert (short.name, short.tag, short.digest) == ("app", None, DIGEST)
    with pytest.raises(InvalidArgument, match="not a short name"):
        parse_short_name("quay.io/app")
    with pytest.raises(InvalidArgument, match="lowercase"):
        parse_short_name("App")
    with pytest.raises(InvalidArgument, match="image id"):
        parse_short_name(HEX)


def test_is_digest() -> None:
    assert is_digest(DIGEST)
    assert is_digest("sha512:" + "a" * 128)
    assert not is_digest("sha256:" + "a" * 63)
    assert not is_digest("sha256:" + "G" * 64)
    assert not is_digest(HEX)
    assert not is_digest("")


def test_parse_image_id() -> None:
    assert parse_image_id(HEX) == f"sha256:{HEX}"
    assert parse_image_id(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert parse_image_id(HEX[:12]) is None
    assert parse_image_id(HEX.upper()) is None
    assert parse_image_id("busybox") is None
    assert parse_image_id(f"sha512:{HEX}") is None


def test_parse_location() -> None:
    assert parse_location("example.com") == "example.com"
    assert parse_location("example.com/foo/") == "example.com/foo"
    assert parse_location("127.0.0.1:5000/a/b:tag") == "127.0.0.1:5000/a/b:tag"
    with pytest.raises(InvalidArgument):
        parse_location("")
    with pytest.raises(InvalidArgument):
        parse_location("example.com//foo")
    with pytest.raises(InvalidArgument):
        parse_location("exa mple.com")
