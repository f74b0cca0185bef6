"""cripy.config: defaults, main file + drop-ins, unknown keys and bad types, validation, TOML round trip."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from cripy.config import (
    Config,
    ConfigError,
    RuntimeHandlerConfig,
    config_files,
    handler_global_args,
    handler_runtime_root,
    load_config,
    to_toml,
    validate,
)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """A main config path (not created) and an existing, empty drop-in directory."""
    dropins = tmp_path / "cripy.d"
    dropins.mkdir()
    return tmp_path / "cripy.toml", dropins


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- defaults ------------------------------------------------------------------------------------------------


def test_no_files_give_the_documented_defaults(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    config = load_config(main, dropins)
    assert config == Config()
    assert config.cripy.root == "/var/lib/cripy"
    assert config.cripy.runroot == "/run/cripy"
    assert config.cripy.listen == "/run/cripy/cripy.sock"
    assert config.cripy.log_level == "info"
    assert config.runtime.default_runtime == "runc"
    assert config.runtime.handlers == {"runc": RuntimeHandlerConfig()}
    assert config.runtime.handlers["runc"].runtime_path == "/usr/bin/runc"
    assert config.images.max_parallel_layers == 3
    assert config.network.plugin_dirs == ["/opt/cni/bin", "/usr/lib/cni"]
    assert config.root == Path("/var/lib/cripy")
    assert config.runroot == Path("/run/cripy")


def test_defaults_do_not_share_mutable_state() -> None:
    one, two = Config(), Config()
    one.images.pinned_images.append("busybox")
    one.runtime.handlers["crun"] = RuntimeHandlerConfig(runtime_path="/usr/bin/crun")
    one.runtime.handlers["runc"].runtime_root = "/x"
    assert two.images.pinned_images == []
    assert set(two.runtime.handlers) == {"runc"}
    assert two.runtime.handlers["runc"].runtime_root == ""


def test_missing_main_file_is_an_error_only_when_it_must_exist(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    assert load_config(main, dropins) == Config()
    with pytest.raises(ConfigError, match=f"{main}.*does not exist"):
        load_config(main, dropins, must_exist=True)


def test_missing_dropin_directory_is_fine(tmp_path: Path) -> None:
    main = write(tmp_path / "cripy.toml", '[cripy]\nlog_level = "debug"\n')
    config = load_config(main, tmp_path / "nope.d")
    assert config.cripy.log_level == "debug"


# ---- main file and drop-ins ----------------------------------------------------------------------------------


def test_main_file_overrides_only_the_keys_it_sets(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, '[cripy]\nroot = "/srv/cripy"\n[images]\nmax_parallel_layers = 7\n')
    config = load_config(main, dropins)
    assert config.cripy.root == "/srv/cripy"
    assert config.cripy.runroot == "/run/cripy"  # untouched sibling keeps its default
    assert config.images.max_parallel_layers == 7
    assert config.images.pull_retries == 4


def test_dropins_apply_after_the_main_file_in_lexical_order(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, '[cripy]\nlog_level = "debug"\nroot = "/main"\n[images]\npull_retries = 1\n')
    write(dropins / "20-second.toml", '[cripy]\nlog_level = "error"\n')
    write(dropins / "10-first.toml", '[cripy]\nlog_level = "warning"\nrunroot = "/run/first"\n')
    write(dropins / "30-ignored.conf", '[cripy]\nlog_level = "bogus"\n')  # not *.toml: never read
    config = load_config(main, dropins)
    assert config.cripy.log_level == "error"  # 20 after 10 after the main file
    assert config.cripy.root == "/main"  # set by the main file only
    assert config.cripy.runroot == "/run/first"  # set by one drop-in only
    assert config.images.pull_retries == 1
    # The files read, in the order applied (Status's verbose info names them).
    assert config_files(main, dropins) == [main, dropins / "10-first.toml", dropins / "20-second.toml"]
    main.unlink()
    assert config_files(main, dropins) == [dropins / "10-first.toml", dropins / "20-second.toml"]
    assert config_files(main, dropins / "missing") == []


def test_dropin_lists_replace_rather_than_append(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, '[network]\nplugin_dirs = ["/a", "/b"]\n')
    write(dropins / "10.toml", '[network]\nplugin_dirs = ["/c"]\n')
    assert load_config(main, dropins).network.plugin_dirs == ["/c"]


def test_handler_tables_merge_by_name(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, '[runtime.handlers.crun]\nruntime_path = "/usr/bin/crun"\n')
    write(
        dropins / "10-kata.toml",
        '[runtime]\ndefault_runtime = "kata"\n'
        '[runtime.handlers.kata]\nruntime_path = "/opt/kata/bin/kata-runtime"\nruntime_root = "/run/kata"\n'
        '[runtime.handlers.runc]\nruntime_root = "/run/runc-custom"\n',
    )
    config = load_config(main, dropins)
    handlers = config.runtime.handlers
    assert set(handlers) == {"runc", "crun", "kata"}
    assert handlers["crun"] == RuntimeHandlerConfig(runtime_path="/usr/bin/crun")
    assert handlers["kata"].runtime_path == "/opt/kata/bin/kata-runtime"
    # Setting one key of the default handler keeps its other keys.
    assert handlers["runc"] == RuntimeHandlerConfig(runtime_path="/usr/bin/runc", runtime_root="/run/runc-custom")
    assert config.runtime.default_runtime == "kata"
    assert handler_runtime_root(config, "runc") == Path("/run/runc-custom")
    assert handler_runtime_root(config, "crun") == Path("/run/cripy/runtimes/crun")


def test_integers_are_accepted_for_float_keys(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, "[images]\npull_throughput_window_seconds = 30\npull_retry_backoff_seconds = 2\n")
    config = load_config(main, dropins)
    assert config.images.pull_throughput_window_seconds == 30.0
    assert isinstance(config.images.pull_throughput_window_seconds, float)
    assert isinstance(config.images.pull_retry_backoff_seconds, float)


# ---- unknown keys and wrong types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[cripy]\nlog_levle = 'debug'\n", "cripy.log_levle"),
        ("[imagez]\nx = 1\n", "imagez"),
        ("top = 1\n", "top"),
        ("[runtime.handlers.runc]\nruntime_pth = '/x'\n", "runtime.handlers.runc.runtime_pth"),
        ("[runtime.handlers.crun]\nbogus = true\n", "runtime.handlers.crun.bogus"),
    ],
)
def test_unknown_key_names_the_key_and_the_file(paths: tuple[Path, Path], text: str, key: str) -> None:
    main, dropins = paths
    write(main, "")
    dropin = write(dropins / "50-bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(main, dropins)
    message = str(info.value)
    assert f"'{key}'" in message
    assert str(dropin) in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[cripy]\nroot = 5\n", "cripy.root"),
        ("[images]\nmax_parallel_layers = '3'\n", "images.max_parallel_layers"),
        ("[images]\nmax_parallel_layers = 2.5\n", "images.max_parallel_layers"),
        ("[images]\nmax_parallel_layers = true\n", "images.max_parallel_layers"),  # a bool is not an int here
        ("[images]\npull_retry_backoff_seconds = false\n", "images.pull_retry_backoff_seconds"),
        ("[images]\npinned_images = 'busybox'\n", "images.pinned_images"),
        ("[images]\npinned_images = ['busybox', 3]\n", "images.pinned_images"),
        ("[network]\nplugin_dirs = [1]\n", "network.plugin_dirs"),
        ("cripy = 'x'\n", "cripy"),
        ("[runtime]\nhandlers = 'runc'\n", "runtime.handlers"),
        ("[runtime.handlers]\nrunc = '/usr/bin/runc'\n", "runtime.handlers.runc"),
        ("[cripy]\nlisten = {path = '/x'}\n", "cripy.listen"),
    ],
)
def test_wrong_type_names_the_key_and_the_file(paths: tuple[Path, Path], text: str, key: str) -> None:
    main, dropins = paths
    write(main, text)
    with pytest.raises(ConfigError) as info:
        load_config(main, dropins)
    message = str(info.value)
    assert f"'{key}'" in message
    assert str(main) in message


def test_invalid_toml_names_the_file(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, "[cripy\nroot = \n")
    with pytest.raises(ConfigError, match=f"{main}.*not valid TOML"):
        load_config(main, dropins)


def test_unreadable_main_file_is_a_config_error(tmp_path: Path) -> None:
    directory = tmp_path / "cripy.toml"
    directory.mkdir()  # exists, but read_text() fails
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(directory, tmp_path / "none.d")


def test_error_in_a_later_dropin_names_that_dropin(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(dropins / "10-good.toml", "[cripy]\nlog_level = 'debug'\n")
    bad = write(dropins / "20-bad.toml", "[cripy]\nlog_level = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, dropins)
    assert str(bad) in str(info.value)
    assert "10-good" not in str(info.value)


# ---- validate ------------------------------------------------------------------------------------------------


def _config_with(**changes: object) -> Config:
    config = Config()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return config


def test_defaults_validate() -> None:
    validate(Config())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cripy__log_level": "verbose"}, "cripy.log_level"),
        ({"runtime__cgroup_driver": "systemd"}, "runtime.cgroup_driver"),
        ({"runtime__default_runtime": "crun"}, "runtime.default_runtime"),
        ({"images__max_parallel_layers": 0}, "images.max_parallel_layers"),
        ({"images__pull_retries": -1}, "images.pull_retries"),
        ({"images__pull_min_throughput_bytes": -1}, "images.pull_min_throughput_bytes"),
        ({"images__pull_throughput_window_seconds": 0.0}, "images.pull_throughput_window_seconds"),
        ({"cripy__root": "var/lib/cripy"}, "cripy.root"),
        ({"cripy__runroot": "run"}, "cripy.runroot"),
        ({"cripy__listen": "cripy.sock"}, "cripy.listen"),
    ],
)
def test_validate_refuses_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(_config_with(**changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"streaming__address": "localhost"}, "streaming.address"),
        ({"streaming__port": 65536}, "streaming.port"),
        ({"streaming__port": -1}, "streaming.port"),
        ({"streaming__tls_cert": "/etc/cripy/tls.crt"}, "set both"),
        ({"streaming__tls_key": "/etc/cripy/tls.key"}, "set both"),
        ({"streaming__tls_cert": "tls.crt", "streaming__tls_key": "/k"}, "streaming.tls_cert"),
        ({"streaming__token_ttl_seconds": 0.0}, "streaming.token_ttl_seconds"),
    ],
)
def test_validate_refuses_bad_streaming_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(_config_with(**changes))


def test_validate_accepts_streaming_settings() -> None:
    validate(_config_with(streaming__address="::1", streaming__port=10010, streaming__tls_cert="/c",
                          streaming__tls_key="/k"))


def test_validate_refuses_non_oci_handler() -> None:
    config = Config()
    config.runtime.handlers["vm"] = RuntimeHandlerConfig(runtime_type="vm")
    with pytest.raises(ConfigError, match=r"runtime\.handlers\.vm\.runtime_type"):
        validate(config)


def test_validate_accepts_edge_values() -> None:
    validate(_config_with(images__pull_retries=0, images__pull_min_throughput_bytes=0, images__max_parallel_layers=1))


def test_load_config_validates(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, "[runtime]\ndefault_runtime = 'crun'\n")
    with pytest.raises(ConfigError, match="default_runtime"):
        load_config(main, dropins)
    # ...and is satisfied once a drop-in declares the handler.
    write(dropins / "10.toml", "[runtime.handlers.crun]\nruntime_path = '/usr/bin/crun'\n")
    assert load_config(main, dropins).runtime.default_runtime == "crun"


# ---- to_toml -------------------------------------------------------------------------------------------------


def test_to_toml_of_defaults_parses_to_the_defaults() -> None:
    data = tomllib.loads(to_toml(Config()))
    assert data == dataclasses.asdict(Config())
    assert data["runtime"]["handlers"]["runc"]["runtime_path"] == "/usr/bin/runc"


def test_to_toml_round_trips_through_load_config(tmp_path: Path) -> None:
    config = Config()
    config.cripy.root = "/srv/cripy"
    config.cripy.log_level = "debug"
    config.images.pinned_images = ["registry.k8s.io/pause:3.9"]
    config.images.pull_retry_backoff_seconds = 1.5
    config.runtime.handlers["crun"] = RuntimeHandlerConfig(runtime_path="/usr/bin/crun", runtime_root="/run/crun")
    config.runtime.default_runtime = "crun"
    config.network.plugin_dirs = ["/x"]
    main = write(tmp_path / "cripy.toml", to_toml(config))
    assert load_config(main, tmp_path / "none.d") == config


# ---- runtime handler kinds -------------------------------------------------------------------------------------


def test_gvisor_handler_gets_its_platform_and_flags(paths: tuple[Path, Path]) -> None:
    main, dropins = paths
    write(main, '[runtime.handlers.runsc]\nruntime_path = "/usr/bin/runsc"\nkind = "gvisor"\n'
                'runtime_args = ["--network=host"]\n')
    handler = load_config(main, dropins).runtime.handlers["runsc"]
    assert handler_global_args(handler) == ("--platform=ptrace", "--network=host")  # ptrace when unset
    assert handler_global_args(RuntimeHandlerConfig()) == ()


@pytest.mark.parametrize("table, key", [
    ('kind = "kata"', "kind"),
    ('platform = "kvm"', "platform"),  # a runc handler has no platform
    ('kind = "gvisor"\nplatform = "kvm --debug"', "platform"),
    ('runtime_args = ["--root=/elsewhere"]', "runtime_args"),
    ('kind = "gvisor"\nruntime_args = ["--platform=kvm"]', "runtime_args"),
    ('runtime_args = ["network=host"]', "runtime_args"),
])
def test_bad_handler_settings_name_the_key(paths: tuple[Path, Path], table: str, key: str) -> None:
    main, dropins = paths
    write(main, f"[runtime.handlers.x]\n{table}\n")
    with pytest.raises(ConfigError, match=f"runtime.handlers.x.{key}"):
        load_config(main, dropins)


def test_a_run_root_too_long_for_attach_sockets_is_refused(tmp_path):
    from cripy.config import RUNROOT_MAX, ConfigError, load_config

    path = tmp_path / "cripy.toml"
    path.write_text(f'[cripy]\nrunroot = "/{"r" * RUNROOT_MAX}"\n')
    with pytest.raises(ConfigError, match=f"cripy.runroot: .* longer than {RUNROOT_MAX} bytes"):
        load_config(path, tmp_path / "none.d")


def test_the_longest_run_root_allowed_fits_every_attach_socket(tmp_path):
    """A pod's infra id (<32 hex>-infra) is the longest cuuid: it decides the limit, not a container's."""
    from cripy.config import RUNROOT_MAX, load_config
    from cripy.oci.conmon import check_socket_path_fits

    runroot = "/" + "r" * (RUNROOT_MAX - 1)
    path = tmp_path / "cripy.toml"
    path.write_text(f'[cripy]\nrunroot = "{runroot}"\n')
    load_config(path, tmp_path / "none.d")
    for ctr_id in ("c" * 64, "a" * 32 + "-infra"):
        assert check_socket_path_fits(Path(runroot) / "attach", ctr_id) is None, ctr_id
