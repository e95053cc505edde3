"""Per-class help (``--model.help CLASS``, ``--data.help CLASS``, ``--trainer.help``): the
arguments a class takes in a config, with their types, defaults and descriptions.

Descriptions come from the Google-style ``Args:`` section of the class (or ``__init__``)
docstring; types and defaults from the constructor signature, following ``**kwargs`` into
base classes as the resolver does (``rskeras.config.instantiate.class_parameters``).
"""

from __future__ import annotations

import inspect
import re
import textwrap

from rskeras.config.errors import ConfigError
from rskeras.config.instantiate import UNSET, class_parameters, plain, resolve_class, type_name
from rskeras.config.class_paths import map_class_path

_ARG_LINE = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)(?:\s*\([^)]*\))?:\s*(.*)$")


def docstring_arguments(cls: type) -> dict[str, str]:
    """``name -> description`` from the ``Args:`` sections of ``cls`` and its bases."""
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        for doc in (klass.__dict__.get("__doc__"), getattr(klass.__dict__.get("__init__"), "__doc__", None)):
            if not doc:
                continue
            lines = inspect.cleandoc(doc).splitlines()
            in_args, indent, current = False, None, None
            fresh: set[str] = set()  # names this docstring describes (first description wins)
            for line in lines:
                stripped = line.strip()
                if stripped in ("Args:", "Arguments:", "Parameters:"):
                    in_args, indent, current = True, None, None
                    continue
                if not in_args:
                    continue
                if stripped and not line.startswith(" "):
                    in_args = False  # next section
                    continue
                if not stripped:
                    continue
                this_indent = len(line) - len(line.lstrip())
                if indent is None:
                    indent = this_indent
                match = _ARG_LINE.match(stripped)
                if this_indent == indent and match:
                    names = [n.strip().lstrip("*") for n in match.group(1).split(",")]
                    current = [n for n in names if n not in out]
                    for n in current:
                        out[n] = match.group(2)
                        fresh.add(n)
                elif current:
                    for n in current:
                        if n in fresh:
                            out[n] = (out[n] + " " + stripped).strip()
    return out


def class_help(class_path: str, key: str, cls: type | None = None) -> str:
    """The help text of ``class_path`` as it would appear at config key ``key``."""
    if cls is None:
        cls = resolve_class(class_path, f"{key}.help")
    params, hints, extra = class_parameters(cls)
    descriptions = docstring_arguments(cls)
    mapped = map_class_path(class_path)
    title = f"{class_path}" + (f" (rskeras: {mapped})" if mapped != class_path else "")
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    lines = [title, ""]
    if summary:
        lines += textwrap.wrap(summary, 100) + [""]
    prefix = f"--{key}.init_args." if key != "trainer" else "--trainer."
    lines.append(f"arguments ({'config key ' + key + '.init_args.<name>' if key != 'trainer' else 'config key trainer.<name>'}):")
    for name, p in params.items():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        tp = hints.get(name, p.annotation)
        default = "required" if p.default is inspect.Parameter.empty else f"default: {_show(p.default)}"
        lines.append(f"  {prefix}{name} {type_name(tp) if not isinstance(tp, str) else tp}  ({default})")
        text = descriptions.get(name)
        if text:
            lines += ["      " + t for t in textwrap.wrap(text, 94)]
    if extra:
        lines.append(f"  also: {', '.join(sorted(extra))} (Keras layer arguments)")
    return "\n".join(lines)


def _show(value) -> str:
    shown = plain(value)
    if shown is UNSET:
        return repr(value)
    if isinstance(shown, str):
        return repr(shown)
    return "null" if shown is None else str(shown).replace("True", "true").replace("False", "false")


def help_request(overrides) -> tuple[str, str] | None:
    """The ``--<key>.help CLASS`` request among the overrides: (key, class path), or None."""
    for o in overrides:
        if o.key == "help" or o.key.endswith(".help"):
            key = o.key[: -len(".help")] if o.key != "help" else ""
            return key, o.value
    return None


def help_for(key: str, class_path: str) -> str:
    """Help for ``--<key>.help <class_path>`` (``--trainer.help`` needs no class)."""
    from rskeras.utils.tf_import import import_tensorflow

    import_tensorflow()
    if key == "trainer":
        # by class path, like any class a config names (config sits below train)
        return class_help("rskeras.train.trainer.Trainer", "trainer")
    if not key:
        raise ConfigError("--help CLASS: give the config key, e.g. --model.help rslearn.models.swin.Swin")
    if "." not in class_path:
        raise ConfigError(f"--{key}.help {class_path}: give the full class path, e.g. rslearn.models.swin.Swin")
    return class_help(class_path, key)
