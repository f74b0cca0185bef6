"""cripy's configuration: the TOML schema, its documented defaults, loading with drop-ins, and validation.

The main file (/etc/cripy/cripy.toml) is read first, then every `*.toml` in the drop-in directory
(/etc/cripy/cripy.d/) in lexical order; a drop-in overrides the keys it sets, table by table. Unknown keys and
values of the wrong type stop start-up with a message naming the key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cripy.oci.conmon import SOCKET_DIR_MAX
from cripy.storage.layout import Layout

RUNROOT_MAX = SOCKET_DIR_MAX - len("/attach")  # bytes: conmon's socket directory is <runroot>/attach

DEFAULT_CONFIG_PATH = Path("/etc/cripy/cripy.toml")
DEFAULT_DROPIN_DIR = Path("/etc/cripy/cripy.d")
BUSY_POLL_MAX_US = 10_000  # past a few ms, polling costs CPU and catches hardly any more calls
LOG_LEVELS = ("debug", "info", "warning", "error")
# auto: the journal's format when systemd's journal is our stderr (JOURNAL_STREAM), text otherwise.
LOG_FORMATS = ("auto", "text", "json", "journal")


class ConfigError(Exception):
    """A configuration file is unreadable, malformed or holds an unknown key or a bad value."""


@dataclass
class DaemonConfig:
    """Where the daemon keeps its state and listens."""

    root: str = "/var/lib/cripy"
    runroot: str = "/run/cripy"
    listen: str = "/run/cripy/cripy.sock"
    log_level: str = "info"
    log_format: str = "auto"
    grpc_max_message_bytes: int = 16 * 1024 * 1024
    # A call that stays this long in one step is logged once, naming the step (0: never).
    stuck_step_seconds: float = 30.0
    # After answering its last call in flight, the event loop polls this long for the next request before it
    # sleeps (cripy/busypoll.py says why); 0 turns it off.
    busy_poll_us: int = 500
    # Start the kernel's wait for a cgroup move as runc is launched, so it overlaps runc's start
    # (cripy/linux/moveprimer.py says why).
    prime_cgroup_moves: bool = True


@dataclass
class ImagesConfig:
    """Image pulls: registries, credentials, trust, and the pull engine's limits."""

    registries_conf: str = "/etc/containers/registries.conf"
    registries_conf_d: str = "/etc/containers/registries.conf.d"
    auth_file: str = ""
    signature_policy: str = "/etc/containers/policy.json"
    # <dir>/<namespace>.json, when present, replaces signature_policy for pulls on behalf of that namespace's pods.
    signature_policy_dir: str = "/etc/cripy/policies"
    registries_d: str = "/etc/containers/registries.d"
    certs_dir: str = "/etc/containers/certs.d"
    platform: str = ""
    max_parallel_layers: int = 3
    pull_retries: int = 4
    pull_retry_backoff_seconds: float = 0.5
    pull_min_throughput_bytes: int = 1024
    pull_throughput_window_seconds: float = 60.0
    pinned_images: list[str] = field(default_factory=list)


HANDLER_KINDS = ("runc", "gvisor")


@dataclass
class RuntimeHandlerConfig:
    """One OCI runtime reachable by a RuntimeClass handler name.

    kind "runc" is a runc-compatible runtime; "gvisor" is gVisor's runsc, whose `platform` (ptrace, kvm, ...) is
    passed as --platform. runtime_args are further global flags given before every verb (e.g. runsc's
    --network=host)."""

    runtime_path: str = "/usr/bin/runc"
    runtime_root: str = ""
    runtime_type: str = "oci"
    kind: str = "runc"
    platform: str = ""
    runtime_args: list[str] = field(default_factory=list)


@dataclass
class RuntimeConfig:
    """Running containers: the monitor, the OCI runtimes, cgroups."""

    default_runtime: str = "runc"
    conmon: str = "/usr/bin/conmon"
    cgroup_driver: str = "cgroupfs"
    cgroup_parent: str = "/cripy"
    pause_command: str = "/usr/bin/catatonit"
    # Bytes one container log file may reach before conmon starts it afresh (a backstop to the kubelet's own
    # rotation through ReopenContainerLog); 0 for no limit.
    container_log_size_max: int = 128 * 1024 * 1024
    handlers: dict[str, RuntimeHandlerConfig] = field(
        default_factory=lambda: {"runc": RuntimeHandlerConfig()}
    )


@dataclass
class NetworkConfig:
    """CNI: where network configs and plugins are found."""

    conf_dir: str = "/etc/cni/net.d"
    plugin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    default_network: str = ""


@dataclass
class StreamingConfig:
    """The streaming server: where the exec/attach/port-forward URLs point, and how long they stay valid."""

    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port chosen at start
    tls_cert: str = ""
    tls_key: str = ""
    token_ttl_seconds: float = 60.0


@dataclass
class MetricsConfig:
    """Prometheus metrics: served on `address` ("127.0.0.1:9090", "unix:///run/cripy/metrics.sock"); off when
    empty."""

    address: str = ""


@dataclass
class TracingConfig:
    """OpenTelemetry traces, sent over OTLP/gRPC to `endpoint` ("http://127.0.0.1:4317"); off when empty.
    `sampling_ratio` applies to calls whose caller sent no trace context of its own."""

    endpoint: str = ""
    sampling_ratio: float = 1.0


@dataclass
class Config:
    """The whole effective configuration."""

    cripy: DaemonConfig = field(default_factory=DaemonConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    @property
    def root(self) -> Path:
        return Path(self.cripy.root)

    @property
    def runroot(self) -> Path:
        return Path(self.cripy.runroot)


def load_config(path: Path | None = None, dropin_dir: Path | None = None, *, must_exist: bool = False) -> Config:
    """Read the main file (if present) and its drop-ins into a validated Config."""
    main = DEFAULT_CONFIG_PATH if path is None else path
    if must_exist and not main.exists():
        raise ConfigError(f"config file {main} does not exist")
    config = Config()
    for source in config_files(path, dropin_dir):
        _apply_file(config, source)
    validate(config)
    return config


def config_files(path: Path | None = None, dropin_dir: Path | None = None) -> list[Path]:
    """The files load_config reads, in the order it applies them: the main file if present, then the drop-ins."""
    path = DEFAULT_CONFIG_PATH if path is None else path
    dropin_dir = DEFAULT_DROPIN_DIR if dropin_dir is None else dropin_dir
    files = [path] if path.exists() else []
    if dropin_dir.is_dir():
        files += sorted(dropin_dir.glob("*.toml"))
    return files


def validate(config: Config) -> None:
    """Check cross-field rules that types alone do not express."""
    if 0 < config.runtime.container_log_size_max < 4096 or config.runtime.container_log_size_max < 0:
        raise ConfigError(f"runtime.container_log_size_max: {config.runtime.container_log_size_max} must be 0 (no "
                          "limit) or at least 4096 bytes")
    if config.cripy.log_level not in LOG_LEVELS:
        raise ConfigError(f"cripy.log_level: {config.cripy.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if config.runtime.cgroup_driver != "cgroupfs":
        raise ConfigError(
            f"runtime.cgroup_driver: {config.runtime.cgroup_driver!r} is not supported (only \"cgroupfs\")"
        )
    if config.runtime.default_runtime not in config.runtime.handlers:
        raise ConfigError(
            f"runtime.default_runtime: {config.runtime.default_runtime!r} has no [runtime.handlers] entry"
        )
    for name, handler in config.runtime.handlers.items():
        if handler.runtime_type != "oci":
            raise ConfigError(f"runtime.handlers.{name}.runtime_type: only \"oci\" is supported")
        _validate_handler(name, handler)
    if config.images.max_parallel_layers < 1:
        raise ConfigError("images.max_parallel_layers: must be at least 1")
    for key in ("pull_retries", "pull_min_throughput_bytes"):
        if getattr(config.images, key) < 0:
            raise ConfigError(f"images.{key}: must not be negative")
    if config.images.pull_throughput_window_seconds <= 0:
        raise ConfigError("images.pull_throughput_window_seconds: must be positive")
    for key in ("signature_policy", "signature_policy_dir", "registries_d"):
        value = getattr(config.images, key)
        if value and not Path(value).is_absolute():
            raise ConfigError(f"images.{key}: {value!r} must be an absolute path")
    for key in ("root", "runroot", "listen"):
        if not Path(getattr(config.cripy, key)).is_absolute():
            raise ConfigError(f"cripy.{key}: {getattr(config.cripy, key)!r} must be an absolute path")
    # conmon's attach sockets, <runroot>/attach/<cuuid>/attach, must fit a unix socket address (107 bytes).
    if len(config.cripy.runroot.rstrip("/").encode()) > RUNROOT_MAX:
        raise ConfigError(f"cripy.runroot: {config.cripy.runroot!r} is longer than {RUNROOT_MAX} bytes: containers' "
                          "attach sockets below it would not fit a unix socket address")
    _validate_streaming(config.streaming)
    _validate_observability(config)


def _validate_observability(config: Config) -> None:
    if config.cripy.log_format not in LOG_FORMATS:
        raise ConfigError(f"cripy.log_format: {config.cripy.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    if config.cripy.stuck_step_seconds < 0:
        raise ConfigError("cripy.stuck_step_seconds: must not be negative (0 turns the stuck-step log off)")
    if not 0 <= config.cripy.busy_poll_us <= BUSY_POLL_MAX_US:
        raise ConfigError(f"cripy.busy_poll_us: {config.cripy.busy_poll_us} is outside 0..{BUSY_POLL_MAX_US} "
                          "(microseconds of polling after an answer; 0 turns it off)")
    if config.metrics.address:
        try:
            metrics_listener(config.metrics.address)
        except ValueError as e:
            raise ConfigError(f"metrics.address: {e}") from None
    endpoint = config.tracing.endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"tracing.endpoint: {endpoint!r} must start with http:// (plain gRPC) or https:// (TLS)")
    if not 0.0 <= config.tracing.sampling_ratio <= 1.0:
        raise ConfigError("tracing.sampling_ratio: must be between 0 and 1")


def _validate_handler(name: str, handler: RuntimeHandlerConfig) -> None:
    where = f"runtime.handlers.{name}"
    if handler.kind not in HANDLER_KINDS:
        raise ConfigError(f"{where}.kind: {handler.kind!r} is not one of {', '.join(HANDLER_KINDS)}")
    if handler.platform and handler.kind != "gvisor":
        raise ConfigError(f"{where}.platform: only a gvisor handler has a platform")
    if handler.platform and not handler.platform.isidentifier():
        raise ConfigError(f"{where}.platform: {handler.platform!r} is not a platform name")
    for arg in handler.runtime_args:
        if not arg.startswith("--") or arg.split("=", 1)[0] in ("--root", "--platform"):
            raise ConfigError(f"{where}.runtime_args: {arg!r} is not a global flag cripy leaves to the config "
                              "(--name=value; --root is runtime_root, --platform is platform)")


def handler_global_args(handler: RuntimeHandlerConfig) -> tuple[str, ...]:
    """The flags a handler's runtime gets before every verb, after --root."""
    platform = handler.platform or ("ptrace" if handler.kind == "gvisor" else "")
    return ((f"--platform={platform}",) if platform else ()) + tuple(handler.runtime_args)


def _validate_streaming(streaming: StreamingConfig) -> None:
    try:
        ipaddress.ip_address(streaming.address)
    except ValueError:
        raise ConfigError(f"streaming.address: {streaming.address!r} is not an IP address") from None
    if not 0 <= streaming.port <= 65535:
        raise ConfigError(f"streaming.port: {streaming.port} is outside 0..65535 (0 picks a free port)")
    if bool(streaming.tls_cert) != bool(streaming.tls_key):
        raise ConfigError("streaming.tls_cert and streaming.tls_key: set both (TLS) or neither (plain HTTP)")
    for key in ("tls_cert", "tls_key"):
        value = getattr(streaming, key)
        if value and not Path(value).is_absolute():
            raise ConfigError(f"streaming.{key}: {value!r} must be an absolute path")
    if streaming.token_ttl_seconds <= 0:
        raise ConfigError("streaming.token_ttl_seconds: must be positive")


def metrics_listener(address: str) -> Path | tuple[str, int]:
    """Where the metrics are served: a unix socket's path ("unix:///run/x.sock" or "/run/x.sock") or a TCP
    (host, port) ("127.0.0.1:9090", "[::1]:9090"). ValueError for anything else."""
    if address.startswith("unix://") or address.startswith("/"):
        path = Path(address.removeprefix("unix://"))
        if not path.is_absolute():
            raise ValueError(f"{address!r}: the socket path must be absolute")
        return path
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT, unix:///PATH or /PATH")
    return host.strip("[]"), int(port)


def handler_runtime_root(config: Config, name: str) -> Path:
    """Where an OCI runtime keeps its state for a handler: configured, or under the run root."""
    handler = config.runtime.handlers[name]
    if handler.runtime_root:
        return Path(handler.runtime_root)
    return Layout(config.root, config.runroot).runtime_state(name)


def to_toml(config: Config) -> str:
    """The configuration as TOML, in the same shape the loader reads."""
    import tomli_w  # only `cripy config` writes TOML: not loaded by the daemon

    return tomli_w.dumps(dataclasses.asdict(config))


def _apply_file(config: Config, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    _merge_into(config, data, prefix="", source=path)


def _merge_into(obj: Any, data: dict[str, Any], prefix: str, source: Path) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key {dotted!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted!r} must be a table")
            _merge_into(current, value, f"{dotted}.", source)
        else:
            setattr(obj, key, _coerce(hints[key], value, dotted, source, current))


def _coerce(hint: Any, value: Any, dotted: str, source: Path, current: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {dotted!r} must be a table")
        result = dict(current)
        for name, item in value.items():
            if isinstance(value_type, type) and dataclasses.is_dataclass(value_type):
                entry = result.get(name) or value_type()
                if not isinstance(item, dict):
                    raise ConfigError(f"{source}: '{dotted}.{name}' must be a table")
                _merge_into(entry, item, f"{dotted}.{name}.", source)
                result[name] = entry
            else:
                result[name] = _coerce(value_type, item, f"{dotted}.{name}", source, None)
        return result
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {dotted!r} must be a list, got {type(value).__name__}")
        return [_coerce(item_type, item, dotted, source, None) for item in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        if isinstance(value, bool) and hint is not bool or not isinstance(value, hint):
            raise ConfigError(
                f"{source}: {dotted!r} must be {hint.__name__}, got {type(value).__name__} {value!r}"
            )
    return value
