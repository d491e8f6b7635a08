"""Plain data to typed dataclasses, checked field by field: every error names the field's path,
the value and what was expected, and an unknown key comes with the nearest known one."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from equiprune.errors import ConfigError


def unknown_key(key: str, allowed: list[str], where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, allowed, n=1)
    guess = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(f"{where}: unknown key {key!r}{guess}; expected one of {sorted(allowed)}")


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` (ints are accepted where floats are expected)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: got {value!r}, expected one of {list(choices)}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types by name."""
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key(key, names, where)
        kwargs[key] = coerce(value, hints[key], f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
