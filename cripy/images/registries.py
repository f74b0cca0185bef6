"""containers-registries.conf (v2) and its drop-ins: search registries for short names, aliases, and per-prefix
[[registry]] tables (location rewrites, mirrors, insecure, blocked). Loading is blocking file I/O; the resolution
methods are pure.

Semantics follow containers-registries.conf(5) and containers-registries.conf.d(5):
- the [[registry]] table with the longest matching prefix applies; "*.example.com" matches any subdomain;
- a matching prefix is replaced by the location of the endpoint being tried (mirrors in order, then the primary);
- a short name that has an alias resolves to that alias only, otherwise to each unqualified-search registry.
  We never prompt, so "enforcing" behaves like "permissive" (as CRI-O does for a daemon).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cripy.errors import InvalidArgument, PermissionDenied
from cripy.images.reference import (
    DEFAULT_TAG,
    Reference,
    ShortName,
    is_short_name,
    parse_location,
    parse_normalized,
    parse_reference,
    parse_short_name,
)

SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
DEFAULT_SHORT_NAME_MODE = "permissive"
PULL_FROM_MIRROR_ALL = "all"
PULL_FROM_MIRROR_DIGEST_ONLY = "digest-only"
PULL_FROM_MIRROR_TAG_ONLY = "tag-only"
PULL_FROM_MIRROR_VALUES = (PULL_FROM_MIRROR_ALL, PULL_FROM_MIRROR_DIGEST_ONLY, PULL_FROM_MIRROR_TAG_ONLY)
WILDCARD_PREFIX = "*."

_TOP_LEVEL_KEYS = frozenset({
    "unqualified-search-registries", "short-name-mode", "credential-helpers", "registry", "aliases",
    # Known to containers/image but irrelevant to a node runtime; accepted so shared configs keep loading.
    "additional-layer-store-auth-helper",
})
_REGISTRY_KEYS = frozenset({"prefix", "location", "insecure", "blocked", "mirror", "mirror-by-digest-only"})
_MIRROR_KEYS = frozenset({"location", "insecure", "pull-from-mirror"})


@dataclass(frozen=True)
class Endpoint:
    """A place to pull from: "host[:port][/path/prefix]"."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = PULL_FROM_MIRROR_ALL


@dataclass(frozen=True)
class RegistryEntry:
    """One [[registry]] table. `location` is "" only for a wildcard prefix that keeps references as they are."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Endpoint, ...] = ()
    mirror_by_digest_only: bool = False


@dataclass(frozen=True)
class PullSource:
    """One endpoint to try for a pull, with the reference rewritten for that endpoint."""

    reference: Reference
    insecure: bool
    is_mirror: bool


@dataclass(frozen=True)
class RegistriesConf:
    unqualified_search_registries: tuple[str, ...] = ()
    registries: tuple[RegistryEntry, ...] = ()
    short_name_mode: str = DEFAULT_SHORT_NAME_MODE
    aliases: dict[str, str] = field(default_factory=dict)
    credential_helpers: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()

    def find(self, ref: Reference) -> RegistryEntry | None:
        """The [[registry]] table whose prefix matches the reference and is the longest, or None."""
        return _find_entry(self.registries, str(ref))

    def candidates(self, image: str) -> list[Reference]:
        """The fully qualified references to try, in order, for an image name as a user or kubelet wrote it."""
        if not is_short_name(image):
            return [parse_normalized(image)]
        short = parse_short_name(image)
        alias = self.aliases.get(short.name)
        if alias:
            return [_complete(parse_reference(alias), short)]
        if not self.unqualified_search_registries:
            raise InvalidArgument(
                f"cannot resolve short image name {image!r}: {self._describe_sources()} configures no "
                f"unqualified-search-registries and no alias for {short.name!r}; use a fully qualified "
                f"reference such as docker.io/{image if '/' in short.name else 'library/' + image}"
            )
        resolved: list[Reference] = []
        for registry in self.unqualified_search_registries:
            ref = _complete(parse_normalized(f"{registry}/{short.name}"), short)
            if ref not in resolved:
                resolved.append(ref)
        return resolved

    def pull_sources(self, ref: Reference) -> list[PullSource]:
        """Endpoints to try for `ref`, in order: the applicable mirrors, then the primary location."""
        entry = self.find(ref)
        if entry is None:
            return [PullSource(reference=ref, insecure=False, is_mirror=False)]
        if entry.blocked:
            raise PermissionDenied(
                f"registry {entry.prefix} is blocked in registries.conf ({self._describe_sources()}); "
                f"refusing to pull {ref}"
            )
        sources = [
            PullSource(reference=_rewrite(ref, entry.prefix, mirror.location), insecure=mirror.insecure,
                       is_mirror=True)
            for mirror in entry.mirrors
            if _mirror_applies(entry, mirror, ref)
        ]
        sources.append(PullSource(reference=_rewrite(ref, entry.prefix, entry.location), insecure=entry.insecure,
                                  is_mirror=False))
        return sources

    def is_insecure(self, domain: str) -> bool:
        """Whether plain HTTP / unverified TLS is allowed for a registry host: its own [[registry]] table, or any
        primary or mirror endpoint on that host, marked insecure."""
        entry = _find_entry(self.registries, domain)
        if entry is not None and entry.insecure:
            return True
        for candidate in self.registries:
            if candidate.insecure and _location_domain(candidate.location) == domain:
                return True
            if any(m.insecure and _location_domain(m.location) == domain for m in candidate.mirrors):
                return True
        return False

    def _describe_sources(self) -> str:
        if not self.sources:
            return "registries.conf (no file loaded)"
        return ", ".join(str(p) for p in self.sources)


def load_registries_conf(path: Path | None, dropin_dir: Path | None) -> RegistriesConf:
    """Read the main file, then every *.conf in the drop-in directory in lexical order. Missing files are fine.
    Later files override top-level keys they set, replace [[registry]] tables with the same prefix, and
    override (or, with an empty value, erase) aliases."""
    files: list[Path] = []
    if path is not None and path.exists():
        files.append(path)
    if dropin_dir is not None and dropin_dir.is_dir():
        files.extend(sorted((p for p in dropin_dir.iterdir() if p.suffix == ".conf" and p.is_file()),
                            key=lambda p: p.name))

    search: tuple[str, ...] = ()
    mode = DEFAULT_SHORT_NAME_MODE
    helpers: tuple[str, ...] = ()
    registries: dict[str, RegistryEntry] = {}
    aliases: dict[str, str] = {}
    for file in files:
        parsed = _parse_file(file)
        if parsed.search is not None:
            search = parsed.search
        if parsed.short_name_mode is not None:
            mode = parsed.short_name_mode
        if parsed.credential_helpers is not None:
            helpers = parsed.credential_helpers
        for entry in parsed.registries:
            registries[entry.prefix] = entry
        for name, value in parsed.aliases.items():
            if value:
                aliases[name] = value
            else:
                aliases.pop(name, None)
    return RegistriesConf(
        unqualified_search_registries=search,
        registries=tuple(registries.values()),
        short_name_mode=mode,
        aliases=aliases,
        credential_helpers=helpers,
        sources=tuple(files),
    )


@dataclass
class _ParsedFile:
    search: tuple[str, ...] | None = None
    short_name_mode: str | None = None
    credential_helpers: tuple[str, ...] | None = None
    registries: list[RegistryEntry] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)


class _FileProblem:
    """Builds InvalidArgument errors that name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key: str, reason: str) -> InvalidArgument:
        return InvalidArgument(f"registries.conf {self.path}: {key}: {reason}")


def _parse_file(path: Path) -> _ParsedFile:
    problem = _FileProblem(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgument(f"registries.conf {path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"registries.conf {path}: invalid TOML: {exc}") from exc

    if "registries" in data:
        raise problem("registries", "the v1 format ([registries.search], [registries.insecure], "
                      "[registries.block]) is not supported; use unqualified-search-registries and "
                      "[[registry]] tables with insecure/blocked (containers-registries.conf(5), version 2)")
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise problem(unknown[0], "unknown key")

    parsed = _ParsedFile()
    if "unqualified-search-registries" in data:
        key = "unqualified-search-registries"
        values = _string_list(problem, key, data[key])
        parsed.search = tuple(_location(problem, f"{key}[{i}]", v, allow_tag=False) for i, v in enumerate(values))
    if "short-name-mode" in data:
        mode = _typed(problem, "short-name-mode", data["short-name-mode"], str)
        if mode == "":
            mode = DEFAULT_SHORT_NAME_MODE
        if mode not in SHORT_NAME_MODES:
            raise problem("short-name-mode", f"{mode!r} is not one of {', '.join(SHORT_NAME_MODES)}")
        parsed.short_name_mode = mode
    if "credential-helpers" in data:
        parsed.credential_helpers = tuple(_string_list(problem, "credential-helpers", data["credential-helpers"]))
    if "registry" in data:
        parsed.registries = _parse_registries(problem, data["registry"])
    if "aliases" in data:
        parsed.aliases = _parse_aliases(problem, data["aliases"])
    return parsed


def _parse_registries(problem: _FileProblem, value: Any) -> list[RegistryEntry]:
    if not isinstance(value, list):
        raise problem("registry", "must be an array of tables ([[registry]])")
    entries: list[RegistryEntry] = []
    seen: set[str] = set()
    for index, table in enumerate(value):
        entry = _parse_registry(problem, f"registry[{index}]", table)
        if entry.prefix in seen:
            raise problem(f"registry[{index}].prefix", f"prefix {entry.prefix!r} is defined twice in this file")
        seen.add(entry.prefix)
        entries.append(entry)
    return entries


def _parse_registry(problem: _FileProblem, key: str, table: Any) -> RegistryEntry:
    if not isinstance(table, dict):
        raise problem(key, "must be a table")
    unknown = sorted(set(table) - _REGISTRY_KEYS)
    if unknown:
        raise problem(f"{key}.{unknown[0]}", "unknown key")
    prefix_value = _typed(problem, f"{key}.prefix", table.get("prefix", ""), str)
    location_value = _typed(problem, f"{key}.location", table.get("location", ""), str)
    insecure = _typed(problem, f"{key}.insecure", table.get("insecure", False), bool)
    blocked = _typed(problem, f"{key}.blocked", table.get("blocked", False), bool)
    by_digest = _typed(problem, f"{key}.mirror-by-digest-only", table.get("mirror-by-digest-only", False), bool)

    location = _location(problem, f"{key}.location", location_value) if location_value else ""
    if not prefix_value:
        if not location:
            raise problem(key, "neither prefix nor location is set")
        prefix = location
    elif prefix_value.startswith(WILDCARD_PREFIX):
        prefix = _wildcard_prefix(problem, f"{key}.prefix", prefix_value)
    else:
        prefix = _location(problem, f"{key}.prefix", prefix_value)
        location = location or prefix

    mirrors_value = table.get("mirror", [])
    if not isinstance(mirrors_value, list):
        raise problem(f"{key}.mirror", "must be an array of tables ([[registry.mirror]])")
    mirrors = tuple(
        _parse_mirror(problem, f"{key}.mirror[{i}]", m, by_digest) for i, m in enumerate(mirrors_value)
    )
    return RegistryEntry(prefix=prefix, location=location, insecure=insecure, blocked=blocked, mirrors=mirrors,
                         mirror_by_digest_only=by_digest)


def _parse_mirror(problem: _FileProblem, key: str, table: Any, registry_by_digest_only: bool) -> Endpoint:
    if not isinstance(table, dict):
        raise problem(key, "must be a table")
    unknown = sorted(set(table) - _MIRROR_KEYS)
    if unknown:
        raise problem(f"{key}.{unknown[0]}", "unknown key")
    if "location" not in table:
        raise problem(f"{key}.location", "is required for a mirror")
    location = _location(problem, f"{key}.location", _typed(problem, f"{key}.location", table["location"], str))
    insecure = _typed(problem, f"{key}.insecure", table.get("insecure", False), bool)
    pull_from = _typed(problem, f"{key}.pull-from-mirror", table.get("pull-from-mirror", ""), str)
    if pull_from and registry_by_digest_only:
        raise problem(f"{key}.pull-from-mirror",
                      "cannot be combined with mirror-by-digest-only on the [[registry]] table")
    pull_from = pull_from or PULL_FROM_MIRROR_ALL
    if pull_from not in PULL_FROM_MIRROR_VALUES:
        raise problem(f"{key}.pull-from-mirror", f"{pull_from!r} is not one of {', '.join(PULL_FROM_MIRROR_VALUES)}")
    return Endpoint(location=location, insecure=insecure, pull_from_mirror=pull_from)


def _parse_aliases(problem: _FileProblem, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise problem("aliases", "must be a table of \"short-name\" = \"registry/repository\"")
    aliases: dict[str, str] = {}
    for name, target in value.items():
        key = f"aliases.{name!r}"
        target = _typed(problem, key, target, str)
        try:
            short = parse_short_name(name)
        except InvalidArgument as exc:
            raise problem(key, f"the alias name must be a short name: {exc}") from exc
        if short.tag is not None or short.digest is not None or name == "localhost":
            raise problem(key, "the alias name must not include a tag or digest or be localhost")
        if target:
            try:
                ref = parse_reference(target)
            except InvalidArgument as exc:
                raise problem(key, f"the alias value must be a fully qualified repository: {exc}") from exc
            if ref.tag is not None or ref.digest is not None:
                raise problem(key, f"the alias value {target!r} must not include a tag or digest")
            target = ref.name
        aliases[name] = target
    return aliases


def _location(problem: _FileProblem, key: str, value: str, *, allow_tag: bool = True) -> str:
    try:
        cleaned = parse_location(value)
    except InvalidArgument as exc:
        raise problem(key, str(exc)) from exc
    if not allow_tag and ("@" in cleaned or ":" in cleaned.partition("/")[2]):
        raise problem(key, f"{value!r} must not include a tag or digest")
    return cleaned


def _wildcard_prefix(problem: _FileProblem, key: str, value: str) -> str:
    host = value[len(WILDCARD_PREFIX):]
    if "/" in host or ":" in host or "*" in host or not host:
        raise problem(key, f"{value!r} is not a valid wildcard prefix; the form is *.example.com (no port, "
                           "path, tag or further wildcards)")
    try:
        parse_location(host)
    except InvalidArgument as exc:
        raise problem(key, str(exc)) from exc
    return value


def _typed(problem: _FileProblem, key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise problem(key, f"must be a {kind.__name__}, not {type(value).__name__} ({value!r})")
    return value


def _string_list(problem: _FileProblem, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise problem(key, f"must be an array of strings, not {value!r}")
    return value


def _find_entry(entries: tuple[RegistryEntry, ...], ref_text: str) -> RegistryEntry | None:
    best: RegistryEntry | None = None
    for entry in entries:
        if _matched_length(ref_text, entry.prefix) is not None:
            if best is None or len(entry.prefix) > len(best.prefix):
                best = entry
    return best


def _matched_length(ref_text: str, prefix: str) -> int | None:
    """How many leading characters of `ref_text` the prefix covers, or None when it does not match."""
    if prefix.startswith(WILDCARD_PREFIX):
        return _wildcard_matched_length(ref_text, prefix[1:])
    if ref_text == prefix:
        return len(prefix)
    if not ref_text.startswith(prefix):
        return None
    # After a bare host[:port] only "/" may follow: "example.com" must not match "example.com:5000/app"
    # (containers/image lets it, and calls that unintended). After a repository, ":" and "@" start a tag/digest.
    separators = "/:@" if "/" in prefix else "/"
    return len(prefix) if ref_text[len(prefix)] in separators else None


def _wildcard_matched_length(ref_text: str, dotted_suffix: str) -> int | None:
    host = ref_text.partition("/")[0].partition(":")[0]
    if len(host) > len(dotted_suffix) and host.endswith(dotted_suffix):
        return len(host)
    return None


def _rewrite(ref: Reference, prefix: str, location: str) -> Reference:
    if not location:
        return ref
    text = str(ref)
    matched = _matched_length(text, prefix)
    if matched is None:  # find() picked the entry, so this is a bug, not a user error
        raise AssertionError(f"prefix {prefix!r} does not match {text!r}")
    rewritten = location + text[matched:]
    try:
        return parse_reference(rewritten)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"registries.conf rewrites {text} (prefix {prefix!r} -> location {location!r}) into an invalid "
            f"reference: {exc}"
        ) from exc


def _mirror_applies(entry: RegistryEntry, mirror: Endpoint, ref: Reference) -> bool:
    by_digest = ref.digest is not None
    if entry.mirror_by_digest_only:
        return by_digest
    if mirror.pull_from_mirror == PULL_FROM_MIRROR_DIGEST_ONLY:
        return by_digest
    if mirror.pull_from_mirror == PULL_FROM_MIRROR_TAG_ONLY:
        return not by_digest
    return True


def _complete(ref: Reference, short: ShortName) -> Reference:
    """Carry the short name's tag/digest over to a resolved repository; "latest" when it had neither."""
    if short.tag is None and short.digest is None:
        return ref.with_tag(DEFAULT_TAG).with_digest(None)
    return ref.with_tag(short.tag).with_digest(short.digest)


def _location_domain(location: str) -> str:
    return location.partition("/")[0]
