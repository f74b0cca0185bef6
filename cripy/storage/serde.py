"""Domain dataclasses to JSON and back, for what the database keeps as documents (requests, configs).

Rebuilding follows the dataclass type hints: nested dataclasses, lists, tuples, dicts, optionals, enums and
Literal strings. Keys the class does not know are ignored, so an older daemon can read a newer row.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


_SCALARS = frozenset({str, int, float, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:  # most of a request: tested first, by exact type (an enum may subclass str)
        return value
    names = _field_names(kind)  # type: ignore[arg-type]  # mypy takes a type[Any] for unhashable
    if names is not None:
        return {name: to_jsonable(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


@functools.cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    """A dataclass's field names, None for any other type (dataclasses.fields per value was most of the time
    a container's record took to write)."""
    if not dataclasses.is_dataclass(kind):
        return None
    return tuple(f.name for f in dataclasses.fields(kind))


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


def loads(cls: type[T], text: str | bytes) -> T:
    return from_jsonable(cls, json.loads(text))


def from_jsonable(hint: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return from_jsonable(options[0], data) if len(options) == 1 else data
    if origin is typing.Literal or hint is Any:
        return data
    if origin in (list, typing.List):
        (item,) = typing.get_args(hint) or (Any,)
        return [from_jsonable(item, v) for v in data]
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in data)
        return tuple(from_jsonable(arg, v) for arg, v in zip(args, data))
    if origin is dict:
        _, value_type = typing.get_args(hint) or (str, Any)
        return {k: from_jsonable(value_type, v) for k, v in data.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = field_hints(hint)
        return hint(**{k: from_jsonable(hints[k], v) for k, v in data.items() if k in hints})
    return data


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type of each init field of a dataclass (resolving string annotations is slow: done once)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
