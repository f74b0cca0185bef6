"""containers-registries.d(5): where an image's signatures are found.

Every `*.yaml` file of the directory is read (in name order) and merged; a scope may be configured in one file
only. Each file holds `docker:` (scopes: host[:port], host/namespace..., host/repo, host/repo:tag or @digest) and
`default-docker:`, each a section with
    lookaside                 base URL (file://, http://, https://) of simple-signing signatures
    use-sigstore-attachments  whether sigstore signatures are read from the registry ("sha256-<hex>.sig" tags)
    lookaside-staging         where signers write (ignored when reading); sigstore / sigstore-staging: old names
For each setting, the most specific scope that sets it wins, then default-docker, then the built-in default (the
lookaside directory /var/lib/containers/sigstore; no sigstore attachments), as containers/image does. Unknown keys
and malformed values make the whole configuration invalid, naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cripy.errors import InvalidArgument
from cripy.images.reference import Reference, parse_location

DEFAULT_LOOKASIDE = "file:///var/lib/containers/sigstore"
LOOKASIDE_SCHEMES = ("file", "http", "https")
_SECTION_KEYS = {"lookaside", "lookaside-staging", "sigstore", "sigstore-staging", "use-sigstore-attachments"}


@dataclass(frozen=True)
class Section:
    """One configuration section, and where it was written (for messages)."""

    origin: str  # "file.yaml: docker 'quay.io/ns'" or "file.yaml: default-docker"
    lookaside: str | None = None
    use_sigstore_attachments: bool | None = None


@dataclass(frozen=True)
class SignatureLocations:
    """Where to look for one image's signatures, and which configuration said so."""

    lookaside: str
    lookaside_origin: str
    use_sigstore_attachments: bool
    sigstore_origin: str


@dataclass(frozen=True)
class RegistriesD:
    docker: dict[str, Section] = field(default_factory=dict)
    default_docker: Section | None = None

    def locations(self, ref: Reference) -> SignatureLocations:
        """The settings for `ref` (the physical reference: the registry or mirror the image is pulled from)."""
        chain = [self.docker[s] for s in _scopes(ref) if s in self.docker]
        if self.default_docker is not None:
            chain.append(self.default_docker)
        lookaside = next((s for s in chain if s.lookaside is not None), None)
        sigstore = next((s for s in chain if s.use_sigstore_attachments is not None), None)
        return SignatureLocations(
            lookaside=lookaside.lookaside if lookaside and lookaside.lookaside else DEFAULT_LOOKASIDE,
            lookaside_origin=lookaside.origin if lookaside else "the built-in default",
            use_sigstore_attachments=bool(sigstore and sigstore.use_sigstore_attachments),
            sigstore_origin=sigstore.origin if sigstore else "the built-in default",
        )


def load_registries_d(directory: Path) -> RegistriesD:
    """Read and merge every *.yaml in `directory`; a missing directory is an empty configuration."""
    if not directory.is_dir():
        return RegistriesD()
    docker: dict[str, Section] = {}
    default: Section | None = None
    for path in sorted(directory.glob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue  # removed while we listed the directory
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"registries.d file {path}: cannot read: {exc}") from exc
        file_docker, file_default = parse_registries_d_file(text, path)
        for scope, section in file_docker.items():
            if scope in docker:
                raise InvalidArgument(f"registries.d: docker scope {scope!r} is configured in both "
                                      f"{docker[scope].origin.partition(':')[0]} and {path}")
            docker[scope] = section
        if file_default is not None:
            if default is not None:
                raise InvalidArgument(f"registries.d: default-docker is configured in both "
                                      f"{default.origin.partition(':')[0]} and {path}")
            default = file_default
    return RegistriesD(docker, default)


def parse_registries_d_file(text: str, path: Path) -> tuple[dict[str, Section], Section | None]:
    where = f"registries.d file {path}"
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{where}: invalid YAML: {exc}") from exc
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where}: the top level must be a mapping")
    unknown = sorted(set(map(str, data)) - {"docker", "default-docker"})
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {unknown[0]!r}")
    default = None
    if data.get("default-docker") is not None:
        default = _section(where, "default-docker", data["default-docker"], f"{path}: default-docker")
    docker: dict[str, Section] = {}
    scopes = data.get("docker") or {}
    if not isinstance(scopes, dict):
        raise InvalidArgument(f"{where}: \"docker\" must be a mapping of scopes")
    for scope, value in scopes.items():
        if not isinstance(scope, str):
            raise InvalidArgument(f"{where}: docker scope {scope!r} must be a string")
        try:
            parse_location(scope)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: docker scope {scope!r}: {exc}") from exc
        docker[scope] = _section(where, f"docker.{scope}", value or {}, f"{path}: docker {scope!r}")
    return docker, default


def _section(where: str, key: str, value: Any, origin: str) -> Section:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: {key} must be a mapping")
    unknown = sorted(set(map(str, value)) - _SECTION_KEYS)
    if unknown:
        raise InvalidArgument(f"{where}: {key}: unknown key {unknown[0]!r}")
    lookaside = value.get("lookaside") or value.get("sigstore")
    if lookaside is not None:
        _check_lookaside(where, key, lookaside)
    use = value.get("use-sigstore-attachments")
    if use is not None and not isinstance(use, bool):
        raise InvalidArgument(f"{where}: {key}.use-sigstore-attachments must be true or false")
    return Section(origin, lookaside, use)


def _check_lookaside(where: str, key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: {key}.lookaside must be a URL string")
    url = urlsplit(value)
    if url.scheme not in LOOKASIDE_SCHEMES or (url.scheme != "file" and not url.hostname) or \
            not (url.path or "/").startswith("/"):
        raise InvalidArgument(f"{where}: {key}.lookaside {value!r} is not a file://, http:// or https:// URL")


def _scopes(ref: Reference) -> list[str]:
    """Scopes for `ref`, most specific first: with digest, with tag, the repository, its namespaces, the host.
    (Unlike policy.json, no wildcards and no port-less host.)"""
    scopes = []
    if ref.digest is not None:
        scopes.append(f"{ref.name}@{ref.digest}")
    if ref.tag is not None:
        scopes.append(f"{ref.name}:{ref.tag}")
    components = ref.path.split("/")
    scopes.extend(f"{ref.domain}/{'/'.join(components[:n])}" for n in range(len(components), 0, -1))
    scopes.append(ref.domain)
    return scopes


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
