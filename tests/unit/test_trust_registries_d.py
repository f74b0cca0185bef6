"""registries.d: where signatures are looked for, merged from every *.yaml, strictly."""

from pathlib import Path

import pytest

from cripy.errors import InvalidArgument
from cripy.images.reference import parse_normalized
from cripy.images.trust.registries_d import DEFAULT_LOOKASIDE, load_registries_d


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_missing_directory_gives_the_built_in_defaults(tmp_path: Path) -> None:
    where = load_registries_d(tmp_path / "nope").locations(parse_normalized("quay.io/a/b:1"))
    assert where.lookaside == DEFAULT_LOOKASIDE and not where.use_sigstore_attachments
    assert where.lookaside_origin == "the built-in default"


def test_most_specific_scope_per_setting(tmp_path: Path) -> None:
    d = tmp_path / "registries.d"
    write(d, "a.yaml", "default-docker:\n  use-sigstore-attachments: true\n"
                       "docker:\n  quay.io:\n    lookaside: https://sigs.example.com/quay\n")
    write(d, "b.yaml", "docker:\n  quay.io/team/app:\n    lookaside: file:///srv/sigs\n"
                       "  quay.io/team:\n    use-sigstore-attachments: false\n")
    write(d, "ignored.yml", "this is: [not read")
    config = load_registries_d(d)
    app = config.locations(parse_normalized("quay.io/team/app:1"))
    assert app.lookaside == "file:///srv/sigs" and "b.yaml" in app.lookaside_origin
    assert app.use_sigstore_attachments is False and "quay.io/team" in app.sigstore_origin
    other = config.locations(parse_normalized("quay.io/else/app:1"))
    assert other.lookaside == "https://sigs.example.com/quay" and other.use_sigstore_attachments
    assert other.sigstore_origin.endswith("default-docker")
    # A registry with a port is its own scope: "quay.io" does not cover "quay.io:5000".
    assert config.locations(parse_normalized("quay.io:5000/x:1")).lookaside == DEFAULT_LOOKASIDE


def test_deprecated_sigstore_key_is_the_lookaside(tmp_path: Path) -> None:
    write(tmp_path, "old.yaml", "docker:\n  r.example.com:\n    sigstore: http://old.example.com/sigs\n"
                                "    sigstore-staging: file:///tmp/staging\n")
    where = load_registries_d(tmp_path).locations(parse_normalized("r.example.com/x:1"))
    assert where.lookaside == "http://old.example.com/sigs"


@pytest.mark.parametrize(("files", "reason"), [
    ({"a.yaml": "docker: [1"}, "invalid YAML"),
    ({"a.yaml": "- 1\n"}, "must be a mapping"),
    ({"a.yaml": "dockers: {}\n"}, "unknown key 'dockers'"),
    ({"a.yaml": "docker:\n  quay.io:\n    lookasid: http://x\n"}, "unknown key 'lookasid'"),
    ({"a.yaml": "docker:\n  quay.io:\n    lookaside: ftp://x/y\n"}, "not a file://"),
    ({"a.yaml": "docker:\n  quay.io:\n    use-sigstore-attachments: yes please\n"}, "true or false"),
    ({"a.yaml": "docker:\n  Quay..io/x:\n    lookaside: http://x/\n"}, "docker scope"),
    ({"a.yaml": "docker:\n  quay.io: {}\n  quay.io: {}\n"}, "appears twice"),
    ({"a.yaml": "docker:\n  quay.io: {}\n", "b.yaml": "docker:\n  quay.io: {}\n"}, "in both"),
    ({"a.yaml": "default-docker: {}\n", "b.yaml": "default-docker: {}\n"}, "default-docker is configured in both"),
])
def test_malformed_configuration_names_file_and_key(tmp_path: Path, files: dict[str, str], reason: str) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(InvalidArgument, match=reason) as info:
        load_registries_d(tmp_path)
    assert str(tmp_path) in str(info.value)
