"""Typed, frozen config dataclasses from YAML, with unknown keys rejected.

Every config at the edge of the system (data schemas, pipeline step configs) is a frozen dataclass built by
:func:`from_dict`, so a misspelt key is an error that names the file and the key instead of a silently ignored
setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or mapping that does not match its dataclass."""


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{_at(where)} must not be null")
        errors = {}
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors[arg] = str(err)
        # The message of the one type whose shape the value has (a mapping for a dataclass) says what is wrong inside.
        shaped = [msg for arg, msg in errors.items() if _same_shape(value, arg)]
        if len(errors) == 1 or len(shaped) == 1:
            raise ConfigError(shaped[0] if len(shaped) == 1 else next(iter(errors.values())))
        kinds = " or ".join(_kind(arg) for arg in args if arg is not type(None))
        raise ConfigError(f"{_at(where)} expected {kinds}, got {value!r}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{_at(where)} {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{_at(where)} expected a list, got {type(value).__name__}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(where)} expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_convert(k, key_tp, where): _convert(v, val_tp, _child(where, k)) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{_at(where)} expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{_at(where)} unsupported config type {tp}")


def _same_shape(value: Any, tp: Any) -> bool:
    """Whether ``value`` is a mapping where ``tp`` takes one, or a list where ``tp`` takes one."""
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return isinstance(value, dict)
    return get_origin(tp) in (tuple, list) and isinstance(value, list | tuple)


def _kind(tp: Any) -> str:
    """A type as a config reader would name it: ``a list``, ``a mapping (Range)``, ``int``."""
    origin = get_origin(tp)
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin is typing.Literal:
        return f"one of {list(get_args(tp))}"
    return getattr(tp, "__name__", str(tp))


def _at(where: str) -> str:
    """The prefix of a message about ``where`` (a file name already ends with a colon)."""
    return where if where.endswith(":") else f"{where}:"


def _child(where: str, key: object) -> str:
    """``file.yaml: model.vision``: a file name, then the dotted key path inside it."""
    return f"{where}{' ' if where.endswith(':') else '.'}{key}"


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(where)} expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_at(where)} unknown key(s) {unknown} for {cls.__name__}; allowed keys: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _child(where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_at(where)} missing required key {name!r} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{_at(where)} {err}") from err


def load_yaml(cls: type[T], path: str | Path | None, overrides: dict[str, Any] | None = None) -> T:
    """Loads ``path`` into ``cls``; ``overrides`` maps dotted keys (``train.lr``) to values applied first.

    ``path`` None: the dataclass defaults with ``overrides`` applied (a config given by ``--set`` alone).
    """
    if path is None:
        return from_dict(cls, _apply_overrides({}, overrides), where="--set")
    return from_dict(cls, read_yaml(path, overrides), where=f"{path}:")


def read_yaml(path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The YAML document at ``path`` with ``overrides`` applied (when it is a mapping), not yet checked."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    data = {} if data is None else data
    if isinstance(data, dict):  # else from_dict says why
        try:
            data = _apply_overrides(data, overrides)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
    return data


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``data`` with each dotted key of ``overrides`` (``train.lr``) set, creating missing parents."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for i, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                inner = ".".join(parents[: i + 1])
                raise ConfigError(f"override {dotted!r}: {inner} is {node!r}, not a mapping with keys")
        node[leaf] = value
    return data


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key.sub=value`` strings (values parsed as YAML scalars) -> a dotted-key mapping for :func:`load_yaml`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out
