"""Typed YAML configs: load a YAML file (local or s3://) into nested dataclasses, strictly.

Strict means: an unknown key (with a did-you-mean), a value of the wrong type, a value outside its range or its
choices, or a missing required value raises `ConfigError` naming the file, the dotted key, the value and what is
allowed, so a typo in `configs/x.yaml` fails at start-up, not hours into a run.

Supported field types: bool, int, float (ints are accepted), str, nested dataclasses, Optional[...] / X | None,
list[T], tuple[T, ...], dict[str, T], Literal[...], Any, and Annotated[T, ...] with annotated_types bounds
(Gt, Ge, Lt, Le, Interval) as range checks.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

_MISSING_SOURCE = "<dict>"


class ConfigError(ValueError):
    """A config file does not match its schema; the message names the file and the key."""


def load_config(path_or_uri: str, cls: type[T]) -> T:
    """Read a YAML file (local path or storage URI) and build an instance of the dataclass `cls` from it."""
    from fstrain.data import storage  # local import: storage pulls in boto3, which plain config users may not need

    try:
        text = storage.read_text(str(path_or_uri))
    except storage.StorageError as exc:
        raise ConfigError(f"{path_or_uri}: cannot read config: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path_or_uri}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    return config_from_dict(data, cls, source=str(path_or_uri))


def config_from_dict(data: Any, cls: type[T], source: str = _MISSING_SOURCE) -> T:
    """Build the dataclass `cls` from plain data (as parsed from YAML), checking every key and type."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    return _build_dataclass(data, cls, source, prefix="")


def config_to_dict(config: Any) -> Any:
    """The inverse of `config_from_dict`: plain dicts/lists suitable for yaml.safe_dump or json."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config


def dump_config(config: Any) -> str:
    """YAML text for a config object (key order follows the dataclass fields)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


# --------------------------------------------------------------------------------------------------------------
def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _fail(source: str, key: str, message: str) -> ConfigError:
    if not source:                 # a value checked on its own (a command-line flag): the key is the flag
        return ConfigError(f"{key}: {message}")
    where = f"key '{key}'" if key else "top level"
    return ConfigError(f"{source}: {where}: {message}")


def check_value(value: Any, tp: Any, flag: str) -> Any:
    """Check one value against a schema annotation (ranges, choices with a did-you-mean, types), the same way a
    config key is checked, for command-line flags: `check_value(0, AtLeast1, "--steps")` raises
    ConfigError("--steps: must be >= 1, got 0")."""
    return _convert(value, tp, "", flag)


def _build_dataclass(data: Any, cls: type, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise _fail(source, prefix, f"expected a mapping for {cls.__name__}, got {type(data).__name__} ({data!r})")
    # get_type_hints resolves string annotations (modules using `from __future__ import annotations`).
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:
        raise TypeError(f"config schema {cls.__qualname__}: cannot resolve an annotation ({exc}); "
                        "define schema classes at module level") from exc
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = _key(prefix, str(unknown[0]))
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1, cutoff=0.6)
        hint = f"did you mean '{_key(prefix, close[0])}'? " if close else ""
        raise _fail(source, key, f"unknown key ({hint}allowed in this section: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        key = _key(prefix, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], source, key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _fail(source, key, "missing required value")
    instance = cls(**kwargs)
    # Checks across fields (a schema class may define `config_problems() -> [(key, message)]`), after each
    # value's own check, so every entry point that loads the config refuses the same mistakes.
    problems = getattr(instance, "config_problems", lambda: [])()
    if problems:
        key, message = problems[0]
        raise _fail(source, _key(prefix, key), message)
    return instance


_BOUNDS = (("gt", ">", lambda v, b: v > b), ("ge", ">=", lambda v, b: v >= b),
           ("lt", "<", lambda v, b: v < b), ("le", "<=", lambda v, b: v <= b))


def _check_bound(value: Any, bound: Any, source: str, key: str) -> None:
    """Range metadata (annotated_types Gt/Ge/Lt/Le/Interval, or anything with those attributes)."""
    limits = [(symbol, getattr(bound, name), ok) for name, symbol, ok in _BOUNDS if getattr(bound, name, None)
              is not None]
    if not limits:
        raise _fail(source, key, f"unsupported annotation metadata {bound!r} in the config schema")
    if not all(ok(value, limit) for _, limit, ok in limits):
        allowed = " and ".join(f"{symbol} {limit}" for symbol, limit, _ in limits)
        raise _fail(source, key, f"must be {allowed}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it converted (nested dataclasses built)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is typing.Annotated:
        converted = _convert(value, args[0], source, key)
        for bound in tp.__metadata__:
            _check_bound(converted, bound, source, key)
        return converted

    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, source, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")

    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(source, key, f"must be one of {', '.join(repr(a) for a in args)}; got {value!r}{hint}")

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(value, tp, source, key)

    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, f"expected a list, got {type(value).__name__} ({value!r})")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _fail(source, key, f"expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items

    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(source, key, f"expected a mapping, got {type(value).__name__} ({value!r})")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, source, f"{key}.{k}"): _convert(v, val_tp, source, f"{key}.{k}")
            for k, v in value.items()
        }

    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it when it parses as a number.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        raise _fail(source, key, f"unsupported annotation {tp!r} in the config schema")
    raise _fail(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")
