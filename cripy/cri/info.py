"""What Status tells an operator when asked verbosely (`cripy ctl info`, `crictl info`): the configuration in
effect and the files it came from, the runtime handlers, and the CNI network pods attach to.

Each key of the returned map becomes one JSON value of StatusResponse.info. crictl shows a value only when it is a
JSON object, and prints the response's own `status` and `runtimeHandlers` under those names, so every value here is
an object and none of those names is used."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cripy.config import Config, handler_runtime_root
from cripy.network.cni import CNIManager, NetworkList
from cripy.oci.features import RECURSIVE_READ_ONLY_MOUNTS, USER_NAMESPACES, HandlerFeatures


def status_info(config: Config, config_files: list[Path], network: CNIManager,
                features: dict[str, HandlerFeatures]) -> dict[str, Any]:
    """Blocking (the CNI part re-reads a changed configuration directory): run it in a worker thread."""
    return {
        "config": dataclasses.asdict(config),
        "configFiles": {"applied": [str(path) for path in config_files]},  # in the order they were applied
        "runtimes": runtimes(config, features),
        "network": network_info(network),
    }


def runtimes(config: Config, features: dict[str, HandlerFeatures]) -> dict[str, Any]:
    """Each handler a RuntimeClass can name, with the OCI runtime behind it and what it offers (or why not); the
    default serves pods that name none."""
    runtime = config.runtime
    return {
        name: {
            "default": name == runtime.default_runtime,
            "runtimePath": handler.runtime_path,
            "runtimeType": handler.runtime_type,
            "runtimeRoot": str(handler_runtime_root(config, name)),
            "runtimeFound": Path(handler.runtime_path).is_file(),
            "features": _features(features.get(name, HandlerFeatures())),
        }
        for name, handler in sorted(runtime.handlers.items())
    }


def _features(offered: HandlerFeatures) -> dict[str, Any]:
    return {
        "source": offered.source,
        **{feature: offered.missing(feature) or "offered" for feature in (RECURSIVE_READ_ONLY_MOUNTS, USER_NAMESPACES)},
    }


def network_info(network: CNIManager) -> dict[str, Any]:
    in_use, status, found, skipped = network.configuration()
    return {
        "ready": status.ready,
        "message": status.message,
        "confDir": str(network.conf_dir),
        "pluginDirs": [str(d) for d in network.plugin_dirs],
        "defaultNetwork": network.default_network,
        "inUse": None if in_use is None else _network(in_use),
        "found": [{"name": n.name, "file": n.source} for n in found],
        "skipped": skipped,
    }


def _network(network: NetworkList) -> dict[str, Any]:
    return {
        "name": network.name,
        "file": network.source,
        "cniVersion": network.cni_version,
        "plugins": network.plugin_types,
    }
