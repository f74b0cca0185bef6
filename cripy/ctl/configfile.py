"""crictl's pod and container config files (JSON or YAML) loaded into CRI protobuf messages.

crictl's files use the protobuf field names (`log_directory`); camelCase (`logDirectory`) works too. crictl
(Go's encoding/json) ignores unknown fields, so files written for it may carry fields this CRI version lacks:
those are dropped with a warning instead of failing the command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cri_api.v1 import api_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

MessageT = TypeVar("MessageT", bound=Message)


class ConfigFileError(Exception):
    """A config file that cannot be read or does not describe the expected CRI message."""


def read_document(path: str | Path) -> dict[str, Any]:
    """The file's top-level mapping, parsed as JSON or else as YAML."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigFileError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigFileError(f"config file {path} is neither JSON nor YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping at the top level, "
                              f"found {type(document).__name__}")
    return document


def parse_message(document: dict[str, Any], message: MessageT, source: str,
                  warn: Callable[[str], None] | None = None) -> MessageT:
    """Fill `message` from `document`; unknown fields are dropped with a warning, other errors raise."""
    try:
        return json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        if "no field named" not in str(error) and "Cannot find field" not in str(error):
            raise ConfigFileError(f"invalid {message.DESCRIPTOR.name} in {source}: {error}") from None
        if warn:
            warn(f"ignoring unknown fields in {source}: {str(error).splitlines()[0]}")
    message.Clear()
    try:
        return json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise ConfigFileError(f"invalid {message.DESCRIPTOR.name} in {source}: {error}") from None


def load_pod_config(path: str | Path, warn: Callable[[str], None] | None = None) -> api_pb2.PodSandboxConfig:
    return parse_message(read_document(path), api_pb2.PodSandboxConfig(), str(path), warn)


def load_container_config(path: str | Path, warn: Callable[[str], None] | None = None
                          ) -> api_pb2.ContainerConfig:
    return parse_message(read_document(path), api_pb2.ContainerConfig(), str(path), warn)
