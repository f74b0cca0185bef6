"""containers-policy.json(5) trust policy, the subset a node runtime needs: which images may be pulled from the
"docker" transport. Signature verification is not implemented, so a scope that requires signatures (signedBy,
sigstoreSigned) refuses the pull with an explanation instead of silently accepting it.

Scope lookup for docker references, most specific first (only the most specific match applies):
    host/ns/repo:tag or host/ns/repo@digest, host/ns/repo, host/ns, host, *.sub.domain, *.domain, ...,
    "" (the transport default), then the global "default".
The file is parsed strictly, as containers/image does: unknown keys, duplicated keys, unknown requirement types
and empty requirement lists make the whole file invalid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cripy.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cripy.images.reference import Reference

ACCEPT_ANYTHING = "insecureAcceptAnything"
REJECT = "reject"
SIGNED_BY = "signedBy"
SIGSTORE_SIGNED = "sigstoreSigned"
SIGNATURE_TYPES = frozenset({SIGNED_BY, SIGSTORE_SIGNED})
REQUIREMENT_TYPES = frozenset({ACCEPT_ANYTHING, REJECT}) | SIGNATURE_TYPES
DOCKER_TRANSPORT = "docker"
TRANSPORT_DEFAULT_SCOPE = ""


@dataclass(frozen=True)
class Requirement:
    type: str


@dataclass(frozen=True)
class Policy:
    """A loaded policy. `docker_scopes` maps docker-transport scopes ("" is the transport default) to their
    requirements. `source` is the file it came from, None for the built-in accept-anything policy."""

    default: tuple[Requirement, ...] = (Requirement(ACCEPT_ANYTHING),)
    docker_scopes: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)
    source: Path | None = None

    def check(self, ref: Reference) -> None:
        """Raise if the policy does not allow pulling `ref` (use the logical name, before mirror rewrites)."""
        scope, requirements = self.requirements_for(ref)
        for requirement in requirements:
            if requirement.type == REJECT:
                raise PermissionDenied(f"trust policy {self._source_text()} rejects {ref} ({_describe(scope)})")
            if requirement.type in SIGNATURE_TYPES:
                raise FailedPrecondition(
                    f"trust policy {self._source_text()} requires signature verification ({requirement.type}) "
                    f"for {ref} ({_describe(scope)}), which cripy does not perform; allow this scope with "
                    f"{{\"type\": \"{ACCEPT_ANYTHING}\"}} to pull it unverified"
                )

    def requirements_for(self, ref: Reference) -> tuple[str | None, tuple[Requirement, ...]]:
        """The most specific matching docker scope (None for the global default) and its requirements."""
        for scope in docker_scope_candidates(ref):
            requirements = self.docker_scopes.get(scope)
            if requirements is not None:
                return scope, requirements
        return None, self.default

    def _source_text(self) -> str:
        return str(self.source) if self.source is not None else "(built-in)"


def docker_scope_candidates(ref: Reference) -> list[str]:
    """The docker-transport scopes that can match `ref`, most specific first."""
    candidates: list[str] = []
    if ref.digest is not None:
        candidates.append(f"{ref.name}@{ref.digest}")
    if ref.tag is not None:
        candidates.append(f"{ref.name}:{ref.tag}")
    components = ref.path.split("/")
    candidates.extend(f"{ref.domain}/{'/'.join(components[:n])}" for n in range(len(components), 0, -1))
    candidates.append(ref.domain)
    # Wildcard scopes name hosts without a port.
    host = ref.domain.rpartition(":")[0] if _has_port(ref.domain) else ref.domain
    while "." in host:
        host = host.partition(".")[2]
        candidates.append(f"*.{host}")
    candidates.append(TRANSPORT_DEFAULT_SCOPE)
    return candidates


def load_policy(path: Path | None) -> Policy:
    """Read a policy file; None or a missing file gives the accept-anything policy with source=None."""
    if path is None or not path.exists():
        return Policy()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"trust policy {path}: cannot read: {exc}") from exc
    return parse_policy(text, path)


def parse_policy(text: str, source: Path | None) -> Policy:
    where = f"trust policy {source if source is not None else '(inline)'}"
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as exc:
        raise InvalidArgument(f"{where}: key {exc.key!r} appears twice in one object") from exc
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where}: the top level must be a JSON object")
    unknown = sorted(set(data) - {"default", "transports"})
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {unknown[0]!r}")
    if "default" not in data:
        raise InvalidArgument(f"{where}: the mandatory \"default\" requirement list is missing")
    default = _parse_requirements(where, "default", data["default"])

    transports = data.get("transports", {})
    if not isinstance(transports, dict):
        raise InvalidArgument(f"{where}: \"transports\" must be an object")
    docker_scopes: dict[str, tuple[Requirement, ...]] = {}
    for transport, scopes in transports.items():
        if not isinstance(scopes, dict):
            raise InvalidArgument(f"{where}: transports.{transport} must be an object of scopes")
        for scope, requirements in scopes.items():
            parsed = _parse_requirements(where, f"transports.{transport}[{scope!r}]", requirements)
            # Other transports (docker-daemon, dir, oci, atomic, ...) never apply to registry pulls.
            if transport == DOCKER_TRANSPORT:
                _check_docker_scope(where, scope)
                docker_scopes[scope] = parsed
    return Policy(default=default, docker_scopes=docker_scopes, source=source)


def _parse_requirements(where: str, key: str, value: Any) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: {key} must be a list of requirements")
    if not value:
        raise InvalidArgument(f"{where}: {key} is an empty requirement list (use "
                              f"[{{\"type\": \"{ACCEPT_ANYTHING}\"}}] to accept anything)")
    return tuple(_parse_requirement(where, f"{key}[{i}]", item) for i, item in enumerate(value))


def _parse_requirement(where: str, key: str, value: Any) -> Requirement:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: {key} must be an object with a \"type\"")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in REQUIREMENT_TYPES:
        raise InvalidArgument(f"{where}: {key} has unknown requirement type {kind!r} (known: "
                              f"{', '.join(sorted(REQUIREMENT_TYPES))})")
    if kind in (ACCEPT_ANYTHING, REJECT) and set(value) != {"type"}:
        extra = sorted(set(value) - {"type"})
        raise InvalidArgument(f"{where}: {key} ({kind}) has unexpected key {extra[0]!r}")
    return Requirement(kind)


def _check_docker_scope(where: str, scope: str) -> None:
    if scope.startswith("*."):
        host = scope[2:]
        if not host or any(c in host for c in "*/:@"):
            raise InvalidArgument(f"{where}: docker scope {scope!r} is not a valid wildcard (form: *.example.com)")
    elif "*" in scope:
        raise InvalidArgument(f"{where}: docker scope {scope!r}: a wildcard is only allowed as a leading \"*.\"")


def _describe(scope: str | None) -> str:
    if scope is None:
        return "scope: the global default"
    if scope == TRANSPORT_DEFAULT_SCOPE:
        return "scope: the docker transport default \"\""
    return f"scope: docker {scope!r}"


def _has_port(domain: str) -> bool:
    head, colon, tail = domain.rpartition(":")
    return bool(colon) and tail.isdigit() and not head.endswith(":")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result
