"""Registry credentials: the CRI AuthConfig sent with PullImage, and auth files in the containers-auth.json(5)
format (also docker's config.json). Loading is blocking file I/O; lookups are pure.

Lookup order (containers-auth.json(5)): files are searched in the order given and the first file holding
credentials for the image wins; inside a file the most specific key wins ("host/ns/repo", "host/ns", "host").
docker.io, index.docker.io and registry-1.docker.io are the same registry, and keys written by old docker
versions as URLs ("https://index.docker.io/v1/") count as host-only keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cripy.errors import InvalidArgument
from cripy.images.reference import DOCKER_DOMAIN, LEGACY_DOCKER_DOMAINS, Reference

AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"
DEFAULT_AUTH_PATHS = (
    Path("/run/containers/0/auth.json"),
    Path("/root/.config/containers/auth.json"),
    Path("/root/.docker/config.json"),
)


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def is_empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:
        # Secrets must not end up in logs through a stray repr().
        return f"Credentials(username={self.username!r}, password=<{'set' if self.password else 'empty'}>, " \
               f"identity_token=<{'set' if self.identity_token else 'empty'}>, " \
               f"registry_token=<{'set' if self.registry_token else 'empty'}>)"


def parse_cri_auth(
    username: str,
    password: str,
    auth_b64: str,
    identity_token: str,
    registry_token: str,
    server_address: str,
) -> Credentials | None:
    """Credentials from the CRI AuthConfig fields; None when nothing is set. A non-empty `auth` ("user:pass" in
    base64) takes precedence over username/password. `server_address` only names the registry in errors: the
    kubelet already picked these credentials for the image being pulled."""
    if auth_b64:
        where = f"the CRI auth config for {server_address}" if server_address else "the CRI auth config"
        username, password = decode_auth(auth_b64, where)
    credentials = Credentials(username=username, password=password, identity_token=identity_token,
                              registry_token=registry_token)
    return None if credentials.is_empty() else credentials


def decode_auth(auth_b64: str, where: str) -> tuple[str, str]:
    """Split base64("user:password"); `where` names the source in the error."""
    text = "".join(auth_b64.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"{where}: \"auth\" is not valid base64 of \"username:password\" ({exc})") from exc
    username, colon, password = decoded.partition(":")
    if not colon:
        raise InvalidArgument(f"{where}: \"auth\" decodes to a value without \":\" (expected \"username:password\")")
    return username, password


class AuthStore:
    """Credentials from auth files, in search order."""

    def __init__(self, files: Sequence[tuple[Path, Mapping[str, Credentials]]] = ()) -> None:
        self._files = [(path, dict(entries)) for path, entries in files]

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self._files]

    def lookup(self, ref: Reference) -> Credentials | None:
        keys = _lookup_keys(ref)
        for _, entries in self._files:
            for key in keys:
                credentials = entries.get(key)
                if credentials is not None:
                    return credentials
        return None


def load_auth_files(paths: Sequence[Path]) -> AuthStore:
    """Read the auth files that exist (missing ones are skipped). Malformed files raise InvalidArgument."""
    loaded: list[tuple[Path, dict[str, Credentials]]] = []
    for path in paths:
        if not path.exists():
            continue
        loaded.append((path, _parse_auth_file(path)))
    return AuthStore(loaded)


def default_auth_paths() -> list[Path]:
    """The auth files to search, in order: $REGISTRY_AUTH_FILE, then root's containers and docker files."""
    paths: list[Path] = []
    override = os.environ.get(AUTH_FILE_ENV)
    if override:
        paths.append(Path(override))
    paths.extend(p for p in DEFAULT_AUTH_PATHS if p not in paths)
    return paths


def _parse_auth_file(path: Path) -> dict[str, Credentials]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgument(f"auth file {path}: cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"auth file {path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"auth file {path}: the top level must be a JSON object")
    auths = data.get("auths", {})
    if not isinstance(auths, dict):
        raise InvalidArgument(f"auth file {path}: \"auths\" must be an object")

    # Keys that need normalizing (URLs, legacy docker hosts) go first so that an exact key for the same
    # registry, written by a current tool, wins over them.
    entries: dict[str, Credentials] = {}
    ordered = sorted(auths.items(), key=lambda item: _normalize_key(item[0]) == item[0])
    for key, value in ordered:
        credentials = _parse_entry(path, key, value)
        if credentials is not None:
            entries[_normalize_key(key)] = credentials
    return entries


def _parse_entry(path: Path, key: str, value: Any) -> Credentials | None:
    where = f"auth file {path}: auths[{key!r}]"
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object")
    fields: dict[str, str] = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        field_value = value.get(name, "")
        if not isinstance(field_value, str):
            raise InvalidArgument(f"{where}.{name} must be a string")
        fields[name] = field_value
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        username, password = decode_auth(fields["auth"], where)
    credentials = Credentials(username=username, password=password, identity_token=fields["identitytoken"],
                              registry_token=fields["registrytoken"])
    # Entries like "localhost:5001": {} only point at credential helpers; they hold nothing for us.
    return None if credentials.is_empty() else credentials


def _normalize_key(key: str) -> str:
    """"https://index.docker.io/v1/" -> "docker.io"; "registry-1.docker.io/ns" -> "docker.io/ns"; "host/ns/" ->
    "host/ns". A key given as a URL names a host only (docker stored API endpoints, not repositories)."""
    stripped = key
    for scheme in ("https://", "http://"):
        if stripped.startswith(scheme):
            stripped = stripped[len(scheme):].partition("/")[0]
            break
    stripped = stripped.rstrip("/")
    host, slash, rest = stripped.partition("/")
    return _canonical_host(host) + slash + rest


def _canonical_host(host: str) -> str:
    return DOCKER_DOMAIN if host in LEGACY_DOCKER_DOMAINS else host


def _lookup_keys(ref: Reference) -> list[str]:
    host = _canonical_host(ref.domain)
    components = ref.path.split("/")
    keys = [f"{host}/{'/'.join(components[:n])}" for n in range(len(components), 0, -1)]
    keys.append(host)
    return keys
