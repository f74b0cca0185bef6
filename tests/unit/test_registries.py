"""registries.conf v2 loading, drop-ins, prefix matching, rewrites, mirrors, short names."""

from pathlib import Path

import pytest

from cripy.errors import InvalidArgument, PermissionDenied
from cripy.images.reference import Reference, parse_normalized, parse_reference
from cripy.images.registries import (
    Endpoint,
    PullSource,
    RegistriesConf,
    RegistryEntry,
    load_registries_conf,
)

DIGEST = "sha256:" + "ab" * 32


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, main: str | None = None, **dropins: str) -> RegistriesConf:
    main_path = tmp_path / "registries.conf"
    if main is not None:
        write(main_path, main)
    dropin_dir = tmp_path / "registries.conf.d"
    for name, text in dropins.items():
        write(dropin_dir / f"{name}.conf", text)
    return load_registries_conf(main_path, dropin_dir)


def refs(sources: list[PullSource]) -> list[str]:
    return [str(s.reference) for s in sources]


# --- loading --------------------------------------------------------------------------------------------------


def test_missing_files_give_an_empty_config(tmp_path: Path) -> None:
    conf = load_registries_conf(tmp_path / "nope.conf", tmp_path / "nope.d")
    assert conf.unqualified_search_registries == ()
    assert conf.registries == ()
    assert conf.aliases == {}
    assert conf.short_name_mode == "permissive"
    assert conf.sources == ()
    assert load_registries_conf(None, None) == RegistriesConf()


def test_full_main_file(tmp_path: Path) -> None:
    conf = load(tmp_path, """
unqualified-search-registries = ["quay.io", "docker.io"]
short-name-mode = "enforcing"
credential-helpers = ["containers-auth.json"]

[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"
insecure = false
blocked = false

[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "mirror-1.local:5000/mirrors/foo"
insecure = true

[[registry]]
location = "registry.com"

[aliases]
"busybox" = "docker.io/library/busybox"
""")
    assert conf.unqualified_search_registries == ("quay.io", "docker.io")
    assert conf.short_name_mode == "enforcing"
    assert conf.credential_helpers == ("containers-auth.json",)
    assert conf.aliases == {"busybox": "docker.io/library/busybox"}
    assert conf.sources == (tmp_path / "registries.conf",)
    foo, plain = conf.registries
    assert foo == RegistryEntry(
        prefix="example.com/foo",
        location="internal.example.net/bar",
        mirrors=(Endpoint("mirror-0.local/mirror-for-foo"), Endpoint("mirror-1.local:5000/mirrors/foo", True)),
    )
    assert plain == RegistryEntry(prefix="registry.com", location="registry.com")


def test_dropins_override_in_lexical_order(tmp_path: Path) -> None:
    conf = load(
        tmp_path,
        """
unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"
[[registry]]
prefix = "a.example.com"
location = "main.local"
[[registry]]
prefix = "b.example.com"
insecure = true
[aliases]
"one" = "quay.io/main/one"
"two" = "quay.io/main/two"
""",
        **{
            "20-second": """
[[registry]]
prefix = "a.example.com"
location = "second.local"
[aliases]
"one" = "quay.io/second/one"
""",
            "10-first": """
unqualified-search-registries = ["quay.io"]
[[registry]]
prefix = "a.example.com"
location = "first.local"
blocked = true
[aliases]
"two" = ""
"three" = "quay.io/first/three"
""",
        },
    )
    assert conf.unqualified_search_registries == ("quay.io",)
    assert conf.short_name_mode == "enforcing"  # no drop-in sets it
    entries = {e.prefix: e for e in conf.registries}
    assert entries["a.example.com"] == RegistryEntry(prefix="a.example.com", location="second.local")
    assert entries["b.example.com"].insecure
    assert conf.aliases == {"one": "quay.io/second/one", "three": "quay.io/first/three"}
    assert [p.name for p in conf.sources] == ["registries.conf", "10-first.conf", "20-second.conf"]


def test_dropin_can_clear_search_registries(tmp_path: Path) -> None:
    conf = load(tmp_path, 'unqualified-search-registries = ["docker.io"]\n',
                clear='unqualified-search-registries = []\n')
    assert conf.unqualified_search_registries == ()


def test_only_conf_files_in_dropin_dir_are_read(tmp_path: Path) -> None:
    dropin_dir = tmp_path / "d"
    write(dropin_dir / "a.conf", 'unqualified-search-registries = ["quay.io"]\n')
    write(dropin_dir / "b.conf.bak", "this is not toml [[[\n")
    write(dropin_dir / "README", "not toml either\n")
    (dropin_dir / "sub.conf").mkdir()
    conf = load_registries_conf(None, dropin_dir)
    assert conf.unqualified_search_registries == ("quay.io",)
    assert conf.sources == (dropin_dir / "a.conf",)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("this is [not toml", "", "invalid TOML"),
        ('unqualified-search-registries = "docker.io"', "unqualified-search-registries", "array of strings"),
        ('unqualified-search-registries = ["docker.io/ns:tag"]', "unqualified-search-registries[0]",
         "tag or digest"),
        ('unqualified-search-registries = ["bad host"]', "unqualified-search-registries[0]", "invalid"),
        ('short-name-mode = "prompt"', "short-name-mode", "not one of"),
        ("unknown-key = 1", "unknown-key", "unknown key"),
        ("[registries.search]\nregistries = ['docker.io']", "registries", "v1 format"),
        ("[[registry]]\ninsecure = true", "registry[0]", "neither prefix nor location"),
        ('[[registry]]\nlocation = "a.com"\ninsecure = "yes"', "registry[0].insecure", "must be a bool"),
        ('[[registry]]\nlocation = "a.com"\nmirrors = []', "registry[0].mirrors", "unknown key"),
        ('[[registry]]\nlocation = "a.com"\n[[registry]]\nprefix = "a.com"', "registry[1].prefix", "twice"),
        ('[[registry]]\nprefix = "example.*.com"', "registry[0].prefix", "invalid"),
        ('[[registry]]\nprefix = "*.example.com/foo"', "registry[0].prefix", "wildcard"),
        ('[[registry]]\nlocation = "A..b"', "registry[0].location", "invalid"),
        ('[[registry]]\nlocation = "a.com"\n[[registry.mirror]]\ninsecure = true', "registry[0].mirror[0].location",
         "required"),
        ('[[registry]]\nlocation = "a.com"\n[[registry.mirror]]\nlocation = "m.com"\npull-from-mirror = "some"',
         "registry[0].mirror[0].pull-from-mirror", "not one of"),
        ('[[registry]]\nlocation = "a.com"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.com"\n'
         'pull-from-mirror = "tag-only"', "registry[0].mirror[0].pull-from-mirror", "mirror-by-digest-only"),
        ('[aliases]\n"quay.io/foo" = "quay.io/foo"', "aliases.'quay.io/foo'", "short name"),
        ('[aliases]\n"foo:1" = "quay.io/foo"', "aliases.'foo:1'", "tag or digest"),
        ('[aliases]\n"foo" = "foo/bar"', "aliases.'foo'", "fully qualified"),
        ('[aliases]\n"foo" = "quay.io/foo:1"', "aliases.'foo'", "tag or digest"),
        ('[aliases]\n"foo" = 3', "aliases.'foo'", "must be a str"),
    ],
)
def test_invalid_files_name_file_and_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "registries.conf") in message
    assert f": {key}" in message


def test_invalid_dropin_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        load(tmp_path, "", broken='short-name-mode = "loud"')
    assert str(tmp_path / "registries.conf.d" / "broken.conf") in str(info.value)


# --- matching -------------------------------------------------------------------------------------------------


def conf_with(*entries: RegistryEntry, **kwargs) -> RegistriesConf:
    return RegistriesConf(registries=entries, **kwargs)


def test_find_longest_prefix_wins() -> None:
    host = RegistryEntry("example.com", "example.com")
    ns = RegistryEntry("example.com/ns", "example.com/ns")
    repo = RegistryEntry("example.com/ns/app", "example.com/ns/app")
    conf = conf_with(repo, host, ns)
    assert conf.find(parse_normalized("example.com/ns/app:1")) is repo
    assert conf.find(parse_normalized("example.com/ns/other")) is ns
    assert conf.find(parse_normalized("example.com/ns/app2")) is ns  # "app" must end at a separator
    assert conf.find(parse_normalized("example.com/nsx/app")) is host
    assert conf.find(parse_normalized("example.com:5000/ns/app")) is None
    assert conf.find(parse_normalized("other.com/ns/app")) is None


def test_find_prefix_with_tag_or_digest() -> None:
    tagged = RegistryEntry("example.com/app:1", "example.com/app:1", blocked=True)
    conf = conf_with(tagged)
    assert conf.find(parse_normalized("example.com/app:1")) is tagged
    assert conf.find(parse_normalized("example.com/app:10")) is None
    assert conf.find(parse_normalized("example.com/app:2")) is None


def test_find_wildcard_prefix() -> None:
    wildcard = RegistryEntry("*.example.com", "", insecure=True)
    exact = RegistryEntry("foo.example.com", "foo.example.com")
    conf = conf_with(wildcard, exact)
    assert conf.find(parse_normalized("bar.example.com/app")) is wildcard
    assert conf.find(parse_normalized("a.b.example.com/app")) is wildcard
    assert conf.find(parse_normalized("bar.example.com:5000/app")) is wildcard
    assert conf.find(parse_normalized("foo.example.com/app")) is exact
    assert conf.find(parse_normalized("example.com/app")) is None
    assert conf.find(parse_normalized("example.com.evil.org/app")) is None
    assert conf.find(parse_normalized("badexample.com/app")) is None


def test_docker_io_prefix_must_spell_library(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "docker.io/library/alpine"
location = "mirror.local/alpine"
""")
    assert refs(conf.pull_sources(parse_normalized("alpine:3"))) == ["mirror.local/alpine:3"]
    assert refs(conf.pull_sources(parse_normalized("docker.io/alpine/git"))) == ["docker.io/alpine/git:latest"]


# --- pull sources ---------------------------------------------------------------------------------------------


def test_no_entry_pulls_the_reference_as_is() -> None:
    ref = parse_normalized("quay.io/a/b:1")
    assert RegistriesConf().pull_sources(ref) == [PullSource(ref, insecure=False, is_mirror=False)]


def test_location_rewrite(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "example.com/foo"
location = "127.0.0.1:5000/bar"
""")
    assert conf.pull_sources(parse_normalized("example.com/foo/app:1")) == [
        PullSource(parse_reference("127.0.0.1:5000/bar/app:1"), insecure=False, is_mirror=False)
    ]
    digested = parse_normalized(f"example.com/foo/app@{DIGEST}")
    assert refs(conf.pull_sources(digested)) == [f"127.0.0.1:5000/bar/app@{DIGEST}"]
    # a whole-repository prefix maps the repository itself
    conf = load(tmp_path, '[[registry]]\nprefix = "example.com/foo/app"\nlocation = "local.test/other"\n')
    assert refs(conf.pull_sources(parse_normalized("example.com/foo/app:2"))) == ["local.test/other:2"]


def test_rewrite_to_docker_io_is_normalized(tmp_path: Path) -> None:
    conf = load(tmp_path, '[[registry]]\nprefix = "hub.local"\nlocation = "docker.io"\n')
    assert refs(conf.pull_sources(parse_normalized("hub.local/busybox:1"))) == ["docker.io/library/busybox:1"]


def test_mirrors_in_order_then_primary(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"
insecure = false

[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "mirror-1.local/mirrors/foo"
insecure = true
""")
    assert conf.pull_sources(parse_normalized("example.com/foo/image:latest")) == [
        PullSource(parse_reference("mirror-0.local/mirror-for-foo/image:latest"), insecure=False, is_mirror=True),
        PullSource(parse_reference("mirror-1.local/mirrors/foo/image:latest"), insecure=True, is_mirror=True),
        PullSource(parse_reference("internal.example.net/bar/image:latest"), insecure=False, is_mirror=False),
    ]


def test_mirror_by_digest_only(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "mirror.local:5000"
""")
    assert refs(conf.pull_sources(parse_normalized("quay.io/a/b:1"))) == ["quay.io/a/b:1"]
    assert refs(conf.pull_sources(parse_normalized(f"quay.io/a/b@{DIGEST}"))) == [
        f"mirror.local:5000/a/b@{DIGEST}",
        f"quay.io/a/b@{DIGEST}",
    ]
    # a tag plus a digest is a digest pull
    assert len(conf.pull_sources(parse_normalized(f"quay.io/a/b:1@{DIGEST}"))) == 2


def test_per_mirror_pull_from_mirror(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "digests.local"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tags.local"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "all.local"
pull-from-mirror = "all"
""")
    assert refs(conf.pull_sources(parse_normalized("quay.io/a:1"))) == ["tags.local/a:1", "all.local/a:1",
                                                                        "quay.io/a:1"]
    assert refs(conf.pull_sources(parse_normalized(f"quay.io/a@{DIGEST}"))) == [
        f"digests.local/a@{DIGEST}", f"all.local/a@{DIGEST}", f"quay.io/a@{DIGEST}"]


def test_wildcard_prefix_keeps_reference_and_rewrites_host_for_mirrors(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "mirror.local/cache"
""")
    assert conf.pull_sources(parse_normalized("foo.example.com/ns/app:1")) == [
        PullSource(parse_reference("mirror.local/cache/ns/app:1"), insecure=False, is_mirror=True),
        PullSource(parse_reference("foo.example.com/ns/app:1"), insecure=True, is_mirror=False),
    ]


def test_wildcard_prefix_with_port_and_host_only_mirror(tmp_path: Path) -> None:
    conf = load(tmp_path, '[[registry]]\nprefix = "*.example.com"\n[[registry.mirror]]\nlocation = "mirror.local"\n')
    assert refs(conf.pull_sources(parse_normalized("a.b.example.com:5000/app:1"))) == [
        "mirror.local:5000/app:1", "a.b.example.com:5000/app:1"]


def test_wildcard_prefix_with_location_rewrites_the_host(tmp_path: Path) -> None:
    conf = load(tmp_path, '[[registry]]\nprefix = "*.example.com"\nlocation = "proxy.local/example"\n')
    assert refs(conf.pull_sources(parse_normalized("foo.example.com/ns/app:1"))) == ["proxy.local/example/ns/app:1"]


def test_rewrite_producing_an_invalid_reference_is_reported(tmp_path: Path) -> None:
    conf = load(tmp_path, '[[registry]]\nprefix = "*.example.com"\n[[registry.mirror]]\nlocation = "mirror.local/c"\n')
    with pytest.raises(InvalidArgument, match="rewrites foo.example.com:5000/app:1"):
        conf.pull_sources(parse_normalized("foo.example.com:5000/app:1"))


def test_blocked(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "evil.example.com"
blocked = true
[[registry]]
location = "evil.example.com/allowed"
""")
    with pytest.raises(PermissionDenied, match="registry evil.example.com is blocked in registries.conf") as info:
        conf.pull_sources(parse_normalized("evil.example.com/x/app:1"))
    assert str(tmp_path / "registries.conf") in str(info.value)
    assert refs(conf.pull_sources(parse_normalized("evil.example.com/allowed/app"))) == [
        "evil.example.com/allowed/app:latest"]


def test_dropin_unblocks_a_prefix(tmp_path: Path) -> None:
    conf = load(tmp_path, '[[registry]]\nlocation = "quay.io"\nblocked = true\n',
                unblock='[[registry]]\nlocation = "quay.io"\n')
    assert refs(conf.pull_sources(parse_normalized("quay.io/a:1"))) == ["quay.io/a:1"]


def test_is_insecure(tmp_path: Path) -> None:
    conf = load(tmp_path, """
[[registry]]
location = "127.0.0.1:5000"
insecure = true
[[registry]]
prefix = "secure.example.com"
location = "backend.local:8080/ns"
insecure = true
[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "plain-mirror.local/q"
insecure = true
[[registry]]
prefix = "*.lan"
insecure = true
[[registry]]
location = "docker.io/library"
insecure = true
""")
    assert conf.is_insecure("127.0.0.1:5000")
    assert not conf.is_insecure("127.0.0.1:5001")
    assert not conf.is_insecure("127.0.0.1")
    assert conf.is_insecure("secure.example.com")
    assert conf.is_insecure("backend.local:8080")
    assert not conf.is_insecure("quay.io")
    assert conf.is_insecure("plain-mirror.local")
    assert conf.is_insecure("registry.lan")
    assert conf.is_insecure("docker.io")  # TLS is per host: an insecure endpoint on it makes the host insecure
    assert conf.pull_sources(parse_normalized("busybox"))[0].insecure


# --- short names ----------------------------------------------------------------------------------------------


def test_candidates_for_qualified_names() -> None:
    conf = RegistriesConf(unqualified_search_registries=("quay.io",))
    assert conf.candidates("localhost/app") == [Reference("localhost", "app", "latest")]
    assert conf.candidates("example.com/a/b:1") == [Reference("example.com", "a/b", "1")]


def test_candidates_search_registries_in_order() -> None:
    conf = RegistriesConf(unqualified_search_registries=("quay.io", "docker.io", "127.0.0.1:5000"))
    assert [str(r) for r in conf.candidates("busybox")] == [
        "quay.io/busybox:latest", "docker.io/library/busybox:latest", "127.0.0.1:5000/busybox:latest"]
    assert [str(r) for r in conf.candidates("foo/bar:1")] == [
        "quay.io/foo/bar:1", "docker.io/foo/bar:1", "127.0.0.1:5000/foo/bar:1"]
    assert [str(r) for r in conf.candidates(f"app@{DIGEST}")] == [
        f"quay.io/app@{DIGEST}", f"docker.io/library/app@{DIGEST}", f"127.0.0.1:5000/app@{DIGEST}"]


def test_candidates_alias_wins_over_search_registries(tmp_path: Path) -> None:
    conf = load(tmp_path, """
unqualified-search-registries = ["quay.io"]
[aliases]
"busybox" = "docker.io/library/busybox"
"tools/app" = "registry.example.com/team/app"
""")
    assert conf.candidates("busybox") == [parse_reference("docker.io/library/busybox:latest")]
    assert conf.candidates("busybox:1.36") == [parse_reference("docker.io/library/busybox:1.36")]
    assert conf.candidates(f"busybox@{DIGEST}") == [parse_reference(f"docker.io/library/busybox@{DIGEST}")]
    assert conf.candidates("tools/app:2") == [parse_reference("registry.example.com/team/app:2")]
    assert [str(r) for r in conf.candidates("other")] == ["quay.io/other:latest"]


def test_candidates_alias_without_search_registries() -> None:
    conf = RegistriesConf(aliases={"app": "quay.io/ns/app"})
    assert conf.candidates("app") == [parse_reference("quay.io/ns/app:latest")]


def test_candidates_without_search_registries_fails_clearly(tmp_path: Path) -> None:
    conf = load(tmp_path, "")
    with pytest.raises(InvalidArgument) as info:
        conf.candidates("busybox:1")
    message = str(info.value)
    assert "busybox:1" in message
    assert "unqualified-search-registries" in message
    assert "docker.io/library/busybox:1" in message
    assert str(tmp_path / "registries.conf") in message


def test_candidates_reject_malformed_short_names() -> None:
    conf = RegistriesConf(unqualified_search_registries=("docker.io",))
    with pytest.raises(InvalidArgument, match="lowercase"):
        conf.candidates("BusyBox")
    with pytest.raises(InvalidArgument):
        conf.candidates("a//b")
    with pytest.raises(InvalidArgument):
        conf.candidates("")


def test_candidates_deduplicate() -> None:
    conf = RegistriesConf(unqualified_search_registries=("docker.io", "index.docker.io"))
    assert [str(r) for r in conf.candidates("busybox")] == ["docker.io/library/busybox:latest"]
