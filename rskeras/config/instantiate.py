"""Instantiating objects from ``class_path`` / ``init_args`` config nodes, with type checks.

This is a small resolver in the spirit of jsonargparse (which rslearn uses through
LightningCLI): the class's ``__init__`` signature and type hints say which arguments exist
and what they accept. It differs in three ways that matter here:

* class paths are mapped first (``rslearn.*`` -> ``rskeras.*``, Lightning callbacks, torch
  activations; see ``rskeras.config.class_paths``);
* every error names the YAML key path at fault, e.g.
  ``data.init_args.task.init_args.classes: expected list[str], got str 'a'``;
* a plain mapping given where a class is expected (``inputs: {image: {layers: ...}}`` for
  ``dict[str, DataInput]``) instantiates that class, as jsonargparse does for dataclasses.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import types
import typing
from typing import Any

from rskeras.config.class_paths import import_class, map_class_path
from rskeras.config.errors import ConfigError

# Keyword arguments accepted through **kwargs by Keras layers/models.
KERAS_KWARGS = {"name", "dtype", "trainable"}


def is_class_node(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def resolve_class(class_path: Any, key: str) -> type:
    """Imports the class a config names (after mapping), with a key-path error."""
    if not isinstance(class_path, str):
        raise ConfigError(f"{key}.class_path: expected a string, got {type(class_path).__name__}")
    mapped = map_class_path(class_path)
    try:
        cls = import_class(mapped)
    except (ImportError, AttributeError) as e:
        via = f" (mapped to {mapped})" if mapped != class_path else ""
        raise ConfigError(f"{key}.class_path: unknown class '{class_path}'{via}: {e}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"{key}.class_path: '{class_path}' is not a class")
    return cls


def _hints(func) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:
        return {}


def class_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], dict[str, Any], set[str] | None]:
    """Constructor parameters of ``cls``, following ``**kwargs`` into base classes.

    Returns (parameters, type hints, extra allowed keyword names or None if any keyword is
    allowed).
    """
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        if klass.__module__.startswith("keras"):
            return params, hints, set(KERAS_KWARGS)
        init = vars(klass)["__init__"]
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            return params, hints, None
        klass_hints = _hints(init)
        has_var_kw = False
        for name, p in list(sig.parameters.items())[1:]:
            if p.kind is p.VAR_KEYWORD:
                has_var_kw = True
            elif p.kind is p.VAR_POSITIONAL:
                continue
            elif name not in params:
                params[name] = p
                if name in klass_hints:
                    hints[name] = klass_hints[name]
        if not has_var_kw:
            return params, hints, set()
    return params, hints, set()


def type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty or tp is Any:
        return "Any"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def convert(value: Any, tp: Any, key: str) -> Any:
    """Checks/converts a config value against a type annotation, instantiating classes."""
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return convert_untyped(value, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return convert(value, arm, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        # Prefer an error from inside a class node (more specific than a type mismatch).
        for e in errors:
            if str(e).split(":")[0] != key:
                raise e
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {_short(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {_short(value)}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {_short(value)}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {type(value).__name__} {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {_short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {type(value).__name__} {_short(value)}")
        return value
    if origin in (list, tuple, typing.Sequence, __import__("collections.abc").abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {_short(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(convert(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, typing.Mapping, __import__("collections.abc").abc.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({type_name(tp)}), got {type(value).__name__} {_short(value)}")
        kt, vt = args if args else (Any, Any)
        return {convert(k, kt, f"{key}.{k}") if kt in (int, float) else k: convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and value in tp.__members__:
            return tp[value]
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected one of {list(tp.__members__)}, got {_short(value)}") from None
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if is_class_node(value):
            obj = instantiate(value, key)
            if not isinstance(obj, tp):
                raise ConfigError(f"{key}.class_path: {type(obj).__name__} is not a {tp.__name__}")
            return obj
        if isinstance(value, dict) and tp.__module__.startswith("rskeras"):
            return build(tp, value, key)
        raise ConfigError(f"{key}: expected {tp.__name__} (a class_path/init_args mapping), got {type(value).__name__} {_short(value)}")
    return convert_untyped(value, key)


def convert_untyped(value: Any, key: str) -> Any:
    """Untyped values: instantiate nested class nodes, keep everything else."""
    if is_class_node(value):
        return instantiate(value, key)
    if isinstance(value, list):
        return [convert_untyped(v, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: convert_untyped(v, f"{key}.{k}") for k, v in value.items()}
    return value


def build(cls: type, init_args: dict[str, Any], key: str, args_key: str | None = None, extra: dict[str, Any] | None = None) -> Any:
    """Checks ``init_args`` against ``cls``'s constructor and calls it.

    Args:
        cls: the class.
        init_args: the raw config arguments.
        key: key path of the node (for errors about the class).
        args_key: key path of the arguments mapping (default ``key``).
        extra: already-built arguments to pass as well (not type-checked).
    """
    args_key = args_key or key
    if not isinstance(init_args, dict):
        raise ConfigError(f"{args_key}: expected a mapping of arguments, got {type(init_args).__name__}")
    params, hints, allowed_extra = class_parameters(cls)
    kwargs: dict[str, Any] = {}
    for name, value in init_args.items():
        if name not in params and (allowed_extra is not None and name not in allowed_extra):
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{args_key}.{name}: unknown argument for {cls.__module__}.{cls.__name__}{hint}")
        tp = hints.get(name, params[name].annotation if name in params else Any)
        if isinstance(tp, str):
            tp = Any
        kwargs[name] = convert(value, tp, f"{args_key}.{name}")
    kwargs.update(extra or {})
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"{args_key}: missing required argument(s) {missing} for {cls.__module__}.{cls.__name__}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ConfigError(f"{key}: {cls.__name__}: {e}") from e


def instantiate(node: Any, key: str, extra: dict[str, Any] | None = None) -> Any:
    """Instantiates a ``{class_path, init_args}`` node found at YAML key path ``key``."""
    if not is_class_node(node):
        raise ConfigError(f"{key}: expected a mapping with class_path (and init_args), got {_short(node)}")
    unknown = set(node) - {"class_path", "init_args", "dict_kwargs"}
    if unknown:
        raise ConfigError(f"{key}: unexpected keys {sorted(unknown)} next to class_path (put arguments under init_args)")
    cls = resolve_class(node["class_path"], key)
    init_args = dict(node.get("init_args") or {})
    init_args.update(node.get("dict_kwargs") or {})
    return build(cls, init_args, key, args_key=f"{key}.init_args", extra=extra)
