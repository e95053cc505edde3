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

import collections.abc
import difflib
import enum
import inspect
import types
import typing
from typing import Any

from rskeras.config.class_paths import import_class, is_allowed, is_allowed_class, map_class_path, not_allowed_message
from rskeras.config.errors import ConfigError
from rskeras.config.loader import parse_float

BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}

# Keyword arguments accepted through **kwargs by Keras layers/models.
KERAS_KWARGS = {"name", "dtype", "trainable"}


def is_class_node(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def resolve_class(class_path: Any, key: str) -> type:
    """Imports the class a config names (after mapping), with a key-path error."""
    if not isinstance(class_path, str):
        raise ConfigError(f"{key}.class_path: expected a string, got {type(class_path).__name__}")
    if not is_allowed(class_path):
        raise ConfigError(not_allowed_message(class_path, key))
    mapped = map_class_path(class_path)
    try:
        cls = import_class(mapped)
    except (ImportError, AttributeError) as e:
        via = f" (mapped to {mapped})" if mapped != class_path else ""
        raise ConfigError(f"{key}.class_path: unknown class '{class_path}'{via}: {e}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"{key}.class_path: '{class_path}' is not a class")
    if not is_allowed_class(cls, class_path):
        raise ConfigError(not_allowed_message(class_path, key))
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
    from rskeras.keras_compat import is_keras_base_class

    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        if is_keras_base_class(klass):
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


class _Unset:
    """A default that YAML cannot show (an object): left out of a filled config."""


UNSET = _Unset()


def plain(value: Any) -> Any:
    """A default as config data (enums by member name, tuples as lists); UNSET if it is
    not representable."""
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        return UNSET if any(v is UNSET for v in items) else items
    if isinstance(value, dict):
        items = {k: plain(v) for k, v in value.items()}
        return UNSET if any(v is UNSET for v in items.values()) or not all(isinstance(k, str) for k in items) else items
    return UNSET


def convert(value: Any, tp: Any, key: str, dry: bool = False) -> Any:
    """Checks/converts a config value against a type annotation, instantiating classes.

    With ``dry`` nothing is imported beyond the classes named or constructed: the value is
    checked and returned as config data with every default filled in (``--print_config``).
    """
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return convert_untyped(value, key, dry)
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
                return convert(value, arm, key, dry)
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
        if isinstance(value, str) and value.lower() in BOOL_WORDS:
            return BOOL_WORDS[value.lower()]  # YAML 1.1 spellings, where the type says bool
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {type(value).__name__} {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and parse_float(value) is not None:
            return parse_float(value)  # the type decides: "1e-4" is a float here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {_short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {type(value).__name__} {_short(value)}")
        return value
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {_short(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [convert(v, a, f"{key}.{i}", dry) for i, (v, a) in enumerate(zip(value, args))]
            return items if dry else tuple(items)
        item = args[0] if args else Any
        items = [convert(v, item, f"{key}.{i}", dry) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) and not dry else items
    if origin in (dict, typing.Mapping, collections.abc.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({type_name(tp)}), got {type(value).__name__} {_short(value)}")
        kt, vt = args if args else (Any, Any)
        return {convert(k, kt, f"{key}.{k}") if kt in (int, float) else k: convert(v, vt, f"{key}.{k}", dry) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value.name if dry else value
        if isinstance(value, str) and value in tp.__members__:
            return value if dry else tp[value]
        try:
            member = tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected one of {list(tp.__members__)}, got {_short(value)}") from None
        return member.name if dry else member
    if isinstance(tp, type):
        if isinstance(value, tp) and not dry:
            return value
        if is_class_node(value):
            if dry:
                cls = resolve_class(value["class_path"], key)
                if not issubclass(cls, tp):
                    raise ConfigError(f"{key}.class_path: {cls.__name__} is not a {tp.__name__}")
                return instantiate(value, key, dry=True)
            obj = instantiate(value, key)
            if not isinstance(obj, tp):
                raise ConfigError(f"{key}.class_path: {type(obj).__name__} is not a {tp.__name__}")
            return obj
        if isinstance(value, dict) and tp.__module__.startswith("rskeras"):
            return build(tp, value, key, dry=dry)
        raise ConfigError(f"{key}: expected {tp.__name__} (a class_path/init_args mapping), got {type(value).__name__} {_short(value)}")
    return convert_untyped(value, key, dry)


def convert_untyped(value: Any, key: str, dry: bool = False) -> Any:
    """Untyped values: instantiate nested class nodes, keep everything else."""
    if is_class_node(value):
        return instantiate(value, key, dry=dry)
    if isinstance(value, list):
        return [convert_untyped(v, f"{key}.{i}", dry) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: convert_untyped(v, f"{key}.{k}", dry) for k, v in value.items()}
    return value


def build(
    cls: type,
    init_args: dict[str, Any],
    key: str,
    args_key: str | None = None,
    extra: dict[str, Any] | None = None,
    dry: bool = False,
) -> Any:
    """Checks ``init_args`` against ``cls``'s constructor and calls it.

    Args:
        cls: the class.
        init_args: the raw config arguments.
        key: key path of the node (for errors about the class).
        args_key: key path of the arguments mapping (default ``key``).
        extra: already-built arguments to pass as well (not type-checked).
        dry: check only, construct nothing: returns ``init_args`` as config data with the
            defaults of every other argument filled in (``extra``'s names left out).
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
        kwargs[name] = convert(value, tp, f"{args_key}.{name}", dry)
    kwargs.update(extra or {})
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"{args_key}: missing required argument(s) {missing} for {cls.__module__}.{cls.__name__}")
    if dry:
        filled: dict[str, Any] = {}
        for name, p in params.items():
            if extra and name in extra:
                continue
            if name in kwargs:
                filled[name] = kwargs[name]
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and plain(p.default) is not UNSET:
                filled[name] = plain(p.default)
        filled.update({k: v for k, v in kwargs.items() if k not in filled and not (extra and k in extra)})
        return filled
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ConfigError(f"{key}: {cls.__name__}: {e}") from e


def instantiate(node: Any, key: str, extra: dict[str, Any] | None = None, dry: bool = False) -> Any:
    """Instantiates a ``{class_path, init_args}`` node found at YAML key path ``key``
    (``dry``: checks it and returns it with its defaults filled in, see :func:`build`)."""
    if not is_class_node(node):
        raise ConfigError(f"{key}: expected a mapping with class_path (and init_args), got {_short(node)}")
    unknown = set(node) - {"class_path", "init_args", "dict_kwargs"}
    if unknown:
        raise ConfigError(f"{key}: unexpected keys {sorted(unknown)} next to class_path (put arguments under init_args)")
    cls = resolve_class(node["class_path"], key)
    init_args = dict(node.get("init_args") or {})
    init_args.update(node.get("dict_kwargs") or {})
    built = build(cls, init_args, key, args_key=f"{key}.init_args", extra=extra, dry=dry)
    if dry:
        return {"class_path": node["class_path"], "init_args": built}
    return built
