"""containers-policy.json(5): which images may be pulled, and whose signatures they need. Parsing only: the file's
text in, a Policy out; no key file is read here (keys.py does that when a requirement is checked).

Scope lookup for docker references, most specific first (only the most specific match applies):
    host/ns/repo:tag or host/ns/repo@digest, host/ns/repo, host/ns, host, *.sub.domain, *.domain, ...,
    "" (the transport default), then the global "default".
Every requirement of that scope must hold. The file is parsed strictly, as containers/image does: unknown keys,
duplicated keys, unknown requirement or identity types, conflicting key sources and empty requirement lists make
the whole file invalid, and the error names the file and the key. Requirements of other transports (dir, oci,
atomic, ...) are checked for syntax but never apply to registry pulls.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cripy.errors import FailedPrecondition, InvalidArgument
from cripy.images.reference import Reference
from cripy.images.trust.identity import (
    DEFAULT_IDENTITY,
    ExactReference,
    ExactRepository,
    IdentityRule,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
    parse_identity_prefix,
    parse_identity_reference,
    parse_identity_repository,
)

ACCEPT_ANYTHING = "insecureAcceptAnything"
REJECT = "reject"
SIGNED_BY = "signedBy"
SIGSTORE_SIGNED = "sigstoreSigned"
REQUIREMENT_TYPES = (ACCEPT_ANYTHING, REJECT, SIGNED_BY, SIGSTORE_SIGNED)
GPG_KEYS = "GPGKeys"
DOCKER_TRANSPORT = "docker"
TRANSPORT_DEFAULT_SCOPE = ""


# --- requirements ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySource:
    """Trust material named by a policy: a file (`path`) or inline bytes (`data`), and the key that named it."""

    key: str  # "keyPath", "keyPaths[1]", "keyData", "fulcio.caPath", ...
    path: Path | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.key} (inline)"


@dataclass(frozen=True)
class AcceptAnything:
    def describe(self) -> str:
        return ACCEPT_ANYTHING


@dataclass(frozen=True)
class Reject:
    def describe(self) -> str:
        return REJECT


@dataclass(frozen=True)
class SignedBy:
    """A simple-signing (OpenPGP) signature by one of the keys in the keyrings."""

    keyrings: tuple[KeySource, ...]
    identity: IdentityRule = DEFAULT_IDENTITY

    def describe(self) -> str:
        return (f"{SIGNED_BY} (GPG keys from {', '.join(k.describe() for k in self.keyrings)}; "
                f"signedIdentity {self.identity.describe()})")


@dataclass(frozen=True)
class Fulcio:
    """Keyless signing: a certificate from this CA, issued for this OIDC issuer and e-mail address."""

    ca: KeySource
    oidc_issuer: str
    subject_email: str

    def describe(self) -> str:
        return f"Fulcio CA {self.ca.describe()}, OIDC issuer {self.oidc_issuer}, subject {self.subject_email}"


@dataclass(frozen=True)
class SigstoreSigned:
    """A sigstore (cosign) signature by one of `keys`, or by a Fulcio certificate; with Rekor keys, also a
    signed entry timestamp from one of them."""

    keys: tuple[KeySource, ...] = ()
    fulcio: Fulcio | None = None
    rekor_keys: tuple[KeySource, ...] = ()
    identity: IdentityRule = DEFAULT_IDENTITY

    def describe(self) -> str:
        signer = self.fulcio.describe() if self.fulcio else f"key {', '.join(k.describe() for k in self.keys)}"
        rekor = f"; Rekor key {', '.join(k.describe() for k in self.rekor_keys)}" if self.rekor_keys else ""
        return f"{SIGSTORE_SIGNED} ({signer}{rekor}; signedIdentity {self.identity.describe()})"


Requirement = AcceptAnything | Reject | SignedBy | SigstoreSigned


# --- the policy -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScopeMatch:
    """The requirements that apply to one reference, and where they come from."""

    source: Path | None  # None: the built-in accept-anything policy (no policy file)
    scope: str | None  # the docker scope; None for the global "default"
    requirements: tuple[Requirement, ...]

    def describe_scope(self) -> str:
        if self.scope is None:
            return "the global default"
        if self.scope == TRANSPORT_DEFAULT_SCOPE:
            return "the docker transport default \"\""
        return f"docker {self.scope!r}"

    def describe_source(self) -> str:
        return str(self.source) if self.source is not None else "(built-in: no policy file)"

    def needs_signatures(self) -> bool:
        return any(isinstance(r, (SignedBy, SigstoreSigned)) for r in self.requirements)

    def rejects(self) -> bool:
        return any(isinstance(r, Reject) for r in self.requirements)


@dataclass(frozen=True)
class Policy:
    """A parsed policy file. `docker_scopes` maps docker-transport scopes ("" is the transport default) to their
    requirements. `source` is the file it came from, None for the built-in accept-anything policy."""

    default: tuple[Requirement, ...] = (AcceptAnything(),)
    docker_scopes: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)
    source: Path | None = None

    def requirements_for(self, ref: Reference) -> ScopeMatch:
        """The most specific matching scope for `ref` (the logical name, before mirror rewrites)."""
        for scope in docker_scope_candidates(ref):
            requirements = self.docker_scopes.get(scope)
            if requirements is not None:
                return ScopeMatch(self.source, scope, requirements)
        return ScopeMatch(self.source, None, self.default)


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
    """Read the node's policy file. None (the operator configured no policy file at all) gives the accept-anything
    policy with source=None; a configured file that is missing refuses, as containers/image does: a policy deleted
    by accident must not quietly let every image through."""
    if path is None:
        return Policy()
    policy = read_policy_file(path)
    if policy is None:
        raise FailedPrecondition(f"trust policy {path} does not exist: no image is pulled without one (a policy of "
                                 '{"default": [{"type": "insecureAcceptAnything"}]} accepts every image; an empty '
                                 "images.signature_policy setting turns the check off)")
    return policy


def read_policy_file(path: Path) -> Policy | None:
    """The policy in `path`, or None if there is no such file (read once: no window between a check and a read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"trust policy {path}: cannot read: {exc}") from exc
    return parse_policy(text, path)


def parse_policy(text: str, source: Path | None) -> Policy:
    where = f"trust policy {source if source is not None else '(inline)'}"
    data = strict_json_loads(text, where)
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where}: the top level must be a JSON object")
    _no_unknown_keys(where, "", data, {"default", "transports"})
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
            if transport == DOCKER_TRANSPORT:
                _check_docker_scope(where, scope)
                docker_scopes[scope] = parsed
    return Policy(default=default, docker_scopes=docker_scopes, source=source)


def strict_json_loads(text: str | bytes, where: str) -> Any:
    """JSON where a key given twice in one object is an error, not a silent overwrite."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as exc:
        raise InvalidArgument(f"{where}: key {exc.key!r} appears twice in one object") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{where}: invalid JSON: {exc}") from exc


# --- requirement parsing --------------------------------------------------------------------------------------


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
    parser = _REQUIREMENT_PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise InvalidArgument(f"{where}: {key} has unknown requirement type {kind!r} (known: "
                              f"{', '.join(REQUIREMENT_TYPES)})")
    return parser(where, f"{key} ({kind})", value)


def _parse_accept(where: str, key: str, value: dict[str, Any]) -> Requirement:
    _no_unknown_keys(where, key, value, {"type"})
    return AcceptAnything()


def _parse_reject(where: str, key: str, value: dict[str, Any]) -> Requirement:
    _no_unknown_keys(where, key, value, {"type"})
    return Reject()


def _parse_signed_by(where: str, key: str, value: dict[str, Any]) -> Requirement:
    _no_unknown_keys(where, key, value, {"type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"})
    key_type = value.get("keyType")
    if key_type != GPG_KEYS:
        raise InvalidArgument(f"{where}: {key}: keyType {key_type!r} is not supported (the only key type is "
                              f"\"{GPG_KEYS}\")")
    keyrings = _key_sources(where, key, value, "keyPath", "keyPaths", "keyData", None)
    if not keyrings:
        raise InvalidArgument(f"{where}: {key}: one of keyPath, keyPaths or keyData is required")
    return SignedBy(keyrings, _parse_identity(where, key, value.get("signedIdentity")))


def _parse_sigstore_signed(where: str, key: str, value: dict[str, Any]) -> Requirement:
    if "pki" in value:
        raise InvalidArgument(f"{where}: {key}: \"pki\" (certificates from your own CA without Fulcio) is not "
                              "supported; use keyPath/keyData or fulcio")
    _no_unknown_keys(where, key, value, {
        "type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "signedIdentity",
        "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas",
    })
    keys = _key_sources(where, key, value, "keyPath", "keyPaths", "keyData", "keyDatas")
    rekor_keys = _key_sources(where, key, value, "rekorPublicKeyPath", "rekorPublicKeyPaths",
                              "rekorPublicKeyData", "rekorPublicKeyDatas")
    fulcio = _parse_fulcio(where, f"{key}.fulcio", value["fulcio"]) if "fulcio" in value else None
    if bool(keys) == bool(fulcio):
        raise InvalidArgument(f"{where}: {key}: exactly one of keyPath, keyPaths, keyData, keyDatas and fulcio "
                              "must be set")
    if fulcio is not None and not rekor_keys:
        raise InvalidArgument(f"{where}: {key}: fulcio needs a Rekor public key (rekorPublicKeyPath or "
                              "rekorPublicKeyData): a certificate is only trusted at the time Rekor recorded it")
    return SigstoreSigned(keys, fulcio, rekor_keys, _parse_identity(where, key, value.get("signedIdentity")))


def _parse_fulcio(where: str, key: str, value: Any) -> Fulcio:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: {key} must be an object")
    _no_unknown_keys(where, key, value, {"caPath", "caData", "oidcIssuer", "subjectEmail"})
    ca = _key_sources(where, key, value, "caPath", None, "caData", None)
    if len(ca) != 1:
        raise InvalidArgument(f"{where}: {key}: one of caPath or caData is required")
    issuer = _required_string(where, f"{key}.oidcIssuer", value.get("oidcIssuer"))
    email = _required_string(where, f"{key}.subjectEmail", value.get("subjectEmail"))
    return Fulcio(ca[0], issuer, email)


def _required_string(where: str, what: str, item: Any) -> str:
    if not isinstance(item, str) or not item:
        raise InvalidArgument(f"{where}: {what} is required (a non-empty string)")
    return item


def _key_sources(where: str, key: str, value: dict[str, Any], path_key: str, paths_key: str | None,
                 data_key: str, datas_key: str | None) -> tuple[KeySource, ...]:
    """The one key source form present among the given keys (several at once are an error)."""
    present = [k for k in (path_key, paths_key, data_key, datas_key) if k is not None and k in value]
    if len(present) > 1:
        raise InvalidArgument(f"{where}: {key}: {' and '.join(present)} are mutually exclusive")
    if not present:
        return ()
    name = present[0]
    item = value[name]
    if name == path_key:
        return (KeySource(name, path=_absolute_path(where, f"{key}.{name}", item)),)
    if name == data_key:
        return (KeySource(name, data=_base64(where, f"{key}.{name}", item)),)
    if not isinstance(item, list) or not item:
        raise InvalidArgument(f"{where}: {key}.{name} must be a non-empty list")
    if name == paths_key:
        return tuple(KeySource(f"{name}[{i}]", path=_absolute_path(where, f"{key}.{name}[{i}]", p))
                     for i, p in enumerate(item))
    return tuple(KeySource(f"{name}[{i}]", data=_base64(where, f"{key}.{name}[{i}]", d))
                 for i, d in enumerate(item))


def _absolute_path(where: str, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidArgument(f"{where}: {key} must be an absolute path, got {value!r}")
    return Path(value)


def _base64(where: str, key: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}: {key} must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(f"{where}: {key} is not valid base64: {exc}") from exc


def _parse_identity(where: str, key: str, value: Any) -> IdentityRule:
    if value is None:
        return DEFAULT_IDENTITY
    key = f"{key}.signedIdentity"
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: {key} must be an object with a \"type\"")
    kind = value.get("type")
    fields = _IDENTITY_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise InvalidArgument(f"{where}: {key} has unknown type {kind!r} (known: {', '.join(_IDENTITY_FIELDS)})")
    _no_unknown_keys(where, key, value, {"type", *fields})
    for name in fields:
        if not isinstance(value.get(name), str) or not value[name]:
            raise InvalidArgument(f"{where}: {key} ({kind}) needs {name!r} (a string)")
    what = f"{where}: {key}"
    try:
        if kind == "exactReference":
            return ExactReference(parse_identity_reference(value["dockerReference"], f"{what}.dockerReference"))
        if kind == "exactRepository":
            return ExactRepository(parse_identity_repository(value["dockerRepository"], f"{what}.dockerRepository"))
        if kind == "remapIdentity":
            return RemapIdentity(parse_identity_prefix(value["prefix"], f"{what}.prefix"),
                                 parse_identity_prefix(value["signedPrefix"], f"{what}.signedPrefix"))
    except InvalidArgument as exc:
        message = str(exc)
        raise InvalidArgument(message if message.startswith(where) else f"{what}: {message}") from exc
    plain: dict[str, IdentityRule] = {"matchExact": MatchExact(), "matchRepoDigestOrExact": MatchRepoDigestOrExact(),
                                      "matchRepository": MatchRepository()}
    return plain[str(kind)]


_IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "matchRepoDigestOrExact": (),
    "matchExact": (),
    "matchRepository": (),
    "exactReference": ("dockerReference",),
    "exactRepository": ("dockerRepository",),
    "remapIdentity": ("prefix", "signedPrefix"),
}

_REQUIREMENT_PARSERS: dict[str, Callable[[str, str, dict[str, Any]], Requirement]] = {
    ACCEPT_ANYTHING: _parse_accept,
    REJECT: _parse_reject,
    SIGNED_BY: _parse_signed_by,
    SIGSTORE_SIGNED: _parse_sigstore_signed,
}


# --- small helpers --------------------------------------------------------------------------------------------


def _no_unknown_keys(where: str, key: str, value: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        prefix = f"{key}: " if key else ""
        raise InvalidArgument(f"{where}: {prefix}unknown key {unknown[0]!r}")


def _check_docker_scope(where: str, scope: str) -> None:
    if scope.startswith("*."):
        host = scope[2:]
        if not host or any(c in host for c in "*/:@"):
            raise InvalidArgument(f"{where}: docker scope {scope!r} is not a valid wildcard (form: *.example.com)")
    elif "*" in scope:
        raise InvalidArgument(f"{where}: docker scope {scope!r}: a wildcard is only allowed as a leading \"*.\"")


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
