"""Building a :class:`RunConfig` from YAML and ``--set key=value`` overrides, with type checks.

Every key is checked: an unknown key is named together with the closest valid one (or its new
name, for keys that moved), a value of the wrong type or out of range is rejected with the
allowed range, and contradictory options are reported, each as one :class:`ConfigError` line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError
from .fields import check_values
from .sections import MOVED, RunConfig


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key} = {value!r} is not valid; use {type_name(tp)}{hint}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} = {value!r} has the wrong type; use {type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type; use {type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} = {value!r} has the wrong type; use a mapping of names to values")
        return dict(value)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond a float's range
                raise ConfigError(f"{key} = {value!r} is too large for a number; give a finite number") from None
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} = {value!r} has the wrong type; use {type_name(tp)}")


def _unknown_key(prefix: str, key: Any, names: list[str]) -> ConfigError:
    full = f"{prefix}{key}"
    if full in MOVED:
        return ConfigError(f"config key '{full}' is now '{MOVED[full]}'; rename it")
    close = difflib.get_close_matches(str(key), names, 1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
    return ConfigError(f"unknown config key '{full}'{hint}")


def build(cls: type, data: Any, prefix: str = "", base: Any = None) -> Any:
    """An instance of the dataclass ``cls`` from a mapping: ``base`` (default: ``cls()``) with the
    given keys replaced, nested sections built from their own defaults the same way."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(prefix, key, names)
        tp, default = hints[key], getattr(base, key)
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} = {value!r}: '{prefix}{key}' is a section; set its keys, e.g. "
                                  f"{prefix}{key}.{dataclasses.fields(tp)[0].name}")
            kwargs[key] = build(tp, value or {}, f"{prefix}{key}.", default)
        else:
            kwargs[key] = coerce(value, tp, f"{prefix}{key}")
    return dataclasses.replace(base, **kwargs)


def config_from_dict(data: dict[str, Any] | None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested dict (as read from YAML): types, then
    every field's range, then the cross-field checks of every section."""
    cfg = build(RunConfig, data if data is not None else {})
    check_values(cfg)
    cfg.validate()
    return cfg


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. --set transfer.loss_args.sigma=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key; write e.g. --set transfer.loss_args.sigma=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (``a.b=value``, value parsed as YAML) in a nested dict, in place."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; missing files and parse errors become one-line ConfigErrors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist; pass a YAML file such as configs/quickstart.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file '{p}' does not parse{where}: {problem}; fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{p}' cannot be read ({type(e).__name__}: {e}); check the file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config, apply dotted overrides, validate, and return a RunConfig."""
    data = load_yaml(path)
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data)
