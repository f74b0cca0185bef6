"""The `cripy` command's offline parts: version, config printing, and config errors (no daemon is started)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

import cripy.ctl.main
import cripy.daemon
from cripy import CRI_API_VERSION, __version__
from cripy.cli import main
from cripy.config import Config, load_config


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail loudly instead of starting a daemon if a test reaches the daemon path by mistake."""
    started: list = []

    def refuse(config: Config, reload: object = None) -> int:
        started.append(config)
        raise AssertionError("the test would have started the daemon")

    monkeypatch.setattr(cripy.daemon, "run_daemon", refuse)
    return started


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert f"cripy version {__version__}" in out
    assert f"CRI API version {CRI_API_VERSION}" in out


def test_config_default_prints_the_defaults_as_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # An unreadable --config must not matter: --default ignores every file.
    assert main(["--config", str(tmp_path / "absent.toml"), "config", "--default"]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads(out) == dataclasses.asdict(Config())
    (tmp_path / "printed.toml").write_text(out)
    assert load_config(tmp_path / "printed.toml", tmp_path / "none.d") == Config()


def test_config_prints_the_effective_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    main_file = tmp_path / "cripy.toml"
    main_file.write_text('[cripy]\nlog_level = "debug"\n')
    dropins = tmp_path / "cripy.d"
    dropins.mkdir()
    (dropins / "10.toml").write_text('[images]\nmax_parallel_layers = 9\n')
    code = main(["--config", str(main_file), "--config-dir", str(dropins), "--root", "/srv/cripy",
                 "--runroot", "/run/other", "config"])
    assert code == 0
    data = tomllib.loads(capsys.readouterr().out)
    assert data["cripy"]["log_level"] == "debug"
    assert data["images"]["max_parallel_layers"] == 9
    assert data["cripy"]["root"] == "/srv/cripy"
    assert data["cripy"]["runroot"] == "/run/other"
    assert data["cripy"]["listen"] == "/run/other/cripy.sock"  # follows --runroot unless set


def test_missing_explicit_config_exits_2_with_the_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_daemon: list
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cripy: ")
    assert f"config file {missing} does not exist" in err
    assert no_daemon == []


def test_bad_config_exits_2_naming_key_and_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "cripy.toml"
    bad.write_text("[cripy]\nlog_levle = 'debug'\n")
    assert main(["--config", str(bad), "--config-dir", str(tmp_path / "none.d"), "config"]) == 2
    err = capsys.readouterr().err
    assert "'cripy.log_levle'" in err and str(bad) in err


def test_command_line_values_are_validated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["--config", str(tmp_path / "absent.toml"), "--config-dir", str(tmp_path), "--root", "relative",
                 "config"])
    # The explicit --config is missing, which is reported first; without it the relative root is refused.
    assert code == 2
    capsys.readouterr()
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert main(["--config", str(empty), "--config-dir", str(tmp_path / "none.d"), "--root", "relative",
                 "config"]) == 2
    assert "cripy.root" in capsys.readouterr().err


def test_an_option_value_named_ctl_is_not_the_ctl_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(cripy.ctl.main, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.chdir(tmp_path)
    Path("ctl").write_text('[cripy]\nlog_level = "debug"\n')  # a config file that is called "ctl"
    code = main(["--config", "ctl", "--config-dir", str(tmp_path / "none.d"), "config"])
    assert calls == []
    assert code == 0
    assert tomllib.loads(capsys.readouterr().out)["cripy"]["log_level"] == "debug"
