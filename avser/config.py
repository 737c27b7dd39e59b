"""Typed configuration: dataclasses loaded from YAML, with dotted CLI overrides.

Each area owns its dataclasses next to its code (``avser.features.config``,
``avser.models.config``, ``avser.platform.config``); this module holds the
generic machinery that turns YAML mappings into those dataclasses and back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avser.errors import ConfigError

T = TypeVar("T")


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _resolve_type(tp: Any) -> Any:
    """Strip ``Optional[...]``/``X | None`` to the inner type."""
    return _optional_inner(tp)[0]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _bad(key: str, value: Any, tp: Any, hint: str = "") -> ConfigError:
    return ConfigError(f"{key}={value!r} is not a valid {_type_name(tp)}{hint}")


def _number(value: Any, tp: type, key: str) -> int | float:
    """int/float from a number or a numeric string (YAML reads ``3e-4`` as a string)."""
    if isinstance(value, bool):
        raise _bad(key, value, tp)
    if isinstance(value, str):
        try:
            value = float(value) if tp is float else int(value)
        except ValueError:
            raise _bad(key, value, tp) from None
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise _bad(key, value, tp)
        return value
    if not isinstance(value, (int, float)):
        raise _bad(key, value, tp)
    return float(value)


def convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (the dataclass field's hint), or a ConfigError naming ``key``."""
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{key} must not be null (it is a {_type_name(inner)})")
    tp, origin = inner, typing.get_origin(inner)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(key, value, tp, " section (a mapping)")
        return from_dict(tp, value, key)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r}; choose one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(key, value, tp, " (true or false)")
        return value
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is str:
        if isinstance(value, (dict, list, bool)):
            raise _bad(key, value, tp)
        return str(value)  # YAML reads speaker 1001 or a run name 7 as numbers
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, tp, " (a list)")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}={value!r} must hold {len(args)} values")
            return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, tp, " (a mapping)")
        item = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {k: convert(v, item, f"{key}.{k}") for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping: unknown keys are
    errors, and every value is converted to its field's type (or refused)."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; "
            f"valid keys are {sorted(names)}"
        )
    kwargs = {name: convert(value, hints[name], f"{where}.{name}" if where else name)
              for name, value in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict (YAML/JSON friendly)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``, e.g. for MLflow params."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from YAML (defaults when ``path`` is None), then apply
    ``key.sub=value`` overrides (values parsed as YAML)."""
    data = read_yaml(path) if path else {}
    for item in overrides or []:
        set_dotted(data, item)
    return from_dict(cls, data, where=str(path or cls.__name__))


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply ``key.sub=value`` (the value read as YAML, then typed on load)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    set_value(data, key.strip(), yaml.safe_load(raw))


def set_value(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in a nested mapping to ``value`` as it is."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config (for caches and run tags)."""
    blob = json.dumps(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_model_config(path: str | Path, overrides: list[str] | None = None):
    """The typed model config (``avser.models.config.ModelConfig``) from YAML."""
    from avser.models.config import ModelConfig  # models import this module

    return load(ModelConfig, path, overrides)
