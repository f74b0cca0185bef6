"""CRI auth configs and containers-auth.json / docker config.json lookups."""

import base64
import json
from pathlib import Path

import pytest

from cripy.errors import InvalidArgument
from cripy.images.auth import (
    AuthStore,
    Credentials,
    default_auth_paths,
    load_auth_files,
    parse_cri_auth,
)
from cripy.images.reference import parse_normalized


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def auth_file(path: Path, auths: dict, **extra) -> Path:
    path.write_text(json.dumps({"auths": auths, **extra}))
    return path


def entry(user: str, password: str = "pw") -> dict:
    return {"auth": b64(f"{user}:{password}")}


def user_for(store: AuthStore, image: str) -> str | None:
    credentials = store.lookup(parse_normalized(image))
    return None if credentials is None else credentials.username


# --- CRI AuthConfig -------------------------------------------------------------------------------------------


def test_cri_auth_all_empty_is_none() -> None:
    assert parse_cri_auth("", "", "", "", "", "") is None
    assert parse_cri_auth("", "", "", "", "", "registry.example.com") is None


def test_cri_auth_username_password() -> None:
    assert parse_cri_auth("alice", "s3cret", "", "", "", "quay.io") == Credentials("alice", "s3cret")


def test_cri_auth_b64_wins_over_username_password() -> None:
    credentials = parse_cri_auth("ignored", "ignored", b64("bob:pa:ss"), "", "", "quay.io")
    assert credentials == Credentials("bob", "pa:ss")  # only the first ":" separates


def test_cri_auth_b64_without_padding_and_tokens() -> None:
    encoded = b64("carol:x").rstrip("=")
    assert parse_cri_auth("", "", encoded, "", "", "") == Credentials("carol", "x")
    assert parse_cri_auth("", "", "", "id-token", "", "") == Credentials(identity_token="id-token")
    assert parse_cri_auth("", "", "", "", "bearer", "") == Credentials(registry_token="bearer")


@pytest.mark.parametrize("bad", ["!!!not base64!!!", b64("no-colon-here"), base64.b64encode(b"\xff\xfe:x").decode()])
def test_cri_auth_malformed(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="quay.io") as info:
        parse_cri_auth("", "", bad, "", "", "quay.io")
    assert '"auth"' in str(info.value)


def test_credentials_repr_hides_secrets() -> None:
    text = repr(Credentials("alice", "hunter2", "idtok", "regtok"))
    assert "alice" in text
    assert "hunter2" not in text and "idtok" not in text and "regtok" not in text


# --- auth files -----------------------------------------------------------------------------------------------


def test_most_specific_key_wins(tmp_path: Path) -> None:
    store = load_auth_files([auth_file(tmp_path / "auth.json", {
        "my-registry.local/foo/bar/image": entry("image"),
        "my-registry.local/foo": entry("foo"),
        "my-registry.local": entry("host"),
    })])
    assert user_for(store, "my-registry.local/foo/bar/image:1") == "image"
    assert user_for(store, "my-registry.local/foo/bar/other") == "foo"
    assert user_for(store, "my-registry.local/foo/image") == "foo"
    assert user_for(store, "my-registry.local/foobar/image") == "host"
    assert user_for(store, "my-registry.local/image") == "host"
    assert user_for(store, "my-registry.local:5000/foo/image") is None
    assert user_for(store, "other.local/foo") is None


def test_docker_io_keys(tmp_path: Path) -> None:
    store = load_auth_files([auth_file(tmp_path / "a.json", {"docker.io": entry("hub")})])
    assert user_for(store, "busybox") == "hub"
    assert user_for(store, "index.docker.io/foo/bar") == "hub"
    store = load_auth_files([auth_file(tmp_path / "b.json", {"https://index.docker.io/v1/": entry("legacy")})])
    assert user_for(store, "busybox") == "legacy"
    store = load_auth_files([auth_file(tmp_path / "c.json", {"index.docker.io": entry("idx")})])
    assert user_for(store, "docker.io/foo/bar") == "idx"
    store = load_auth_files([auth_file(tmp_path / "d.json", {"docker.io/library": entry("lib"),
                                                              "docker.io": entry("hub")})])
    assert user_for(store, "busybox") == "lib"
    assert user_for(store, "foo/bar") == "hub"


def test_exact_key_beats_legacy_url_for_the_same_registry(tmp_path: Path) -> None:
    store = load_auth_files([auth_file(tmp_path / "a.json", {
        "docker.io": entry("current"),
        "https://index.docker.io/v1/": entry("legacy"),
    })])
    assert user_for(store, "busybox") == "current"
    store = load_auth_files([auth_file(tmp_path / "b.json", {
        "https://index.docker.io/v1/": entry("legacy"),
        "docker.io": entry("current"),
    })])
    assert user_for(store, "busybox") == "current"


def test_url_keys_name_hosts_only(tmp_path: Path) -> None:
    store = load_auth_files([auth_file(tmp_path / "a.json", {
        "https://registry.example.com/v2/": entry("https"),
        "http://127.0.0.1:5000": entry("http"),
        "quay.io/ns/": entry("trailing-slash"),
    })])
    assert user_for(store, "registry.example.com/any/thing") == "https"
    assert user_for(store, "127.0.0.1:5000/app") == "http"
    assert user_for(store, "quay.io/ns/app") == "trailing-slash"


def test_first_file_with_credentials_wins(tmp_path: Path) -> None:
    first = auth_file(tmp_path / "first.json", {"quay.io": entry("first-host")})
    second = auth_file(tmp_path / "second.json", {"quay.io/ns/app": entry("second-repo"),
                                                   "example.com": entry("second-host")})
    store = load_auth_files([tmp_path / "missing.json", first, second])
    assert store.paths == [first, second]
    assert user_for(store, "quay.io/ns/app") == "first-host"  # file order beats key specificity
    assert user_for(store, "example.com/app") == "second-host"


def test_entry_fields(tmp_path: Path) -> None:
    store = load_auth_files([auth_file(tmp_path / "a.json", {
        "token.example.com": {"identitytoken": "refresh-token"},
        "reg.example.com": {"registrytoken": "bearer-token"},
        "plain.example.com": {"username": "u", "password": "p"},
        "helper.example.com": {},
        "both.example.com": {"auth": b64("a:b"), "identitytoken": "t"},
    }, credHelpers={"helper.example.com": "secretservice"})])
    assert store.lookup(parse_normalized("token.example.com/x")) == Credentials(identity_token="refresh-token")
    assert store.lookup(parse_normalized("reg.example.com/x")) == Credentials(registry_token="bearer-token")
    assert store.lookup(parse_normalized("plain.example.com/x")) == Credentials("u", "p")
    assert store.lookup(parse_normalized("helper.example.com/x")) is None
    assert store.lookup(parse_normalized("both.example.com/x")) == Credentials("a", "b", identity_token="t")


def test_empty_entry_falls_through_to_less_specific_key(tmp_path: Path) -> None:
    store = load_auth_files([auth_file(tmp_path / "a.json", {"quay.io/ns": {}, "quay.io": entry("host")})])
    assert user_for(store, "quay.io/ns/app") == "host"


def test_file_without_auths_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"credsStore": "desktop"}')
    assert load_auth_files([path]).lookup(parse_normalized("busybox")) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "JSON object"),
        ('{"auths": []}', '"auths" must be an object'),
        ('{"auths": {"quay.io": "x"}}', "must be an object"),
        ('{"auths": {"quay.io": {"auth": 5}}}', "auth must be a string"),
        ('{"auths": {"quay.io": {"auth": "@@@@"}}}', "not valid base64"),
    ],
)
def test_malformed_auth_files(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "auth.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=reason) as info:
        load_auth_files([path])
    assert str(path) in str(info.value)


def test_default_auth_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    assert default_auth_paths() == [
        Path("/run/containers/0/auth.json"),
        Path("/root/.config/containers/auth.json"),
        Path("/root/.docker/config.json"),
    ]
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "override.json"))
    assert default_auth_paths()[0] == tmp_path / "override.json"
    assert len(default_auth_paths()) == 4
