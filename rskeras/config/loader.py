"""Loading Lightning-CLI-shaped YAML configs: env substitution, merging, overrides.

A config file has the sections ``model``, ``data`` and ``trainer`` (plus ``ckpt_path`` and
the project-management keys), like ``rslearn model fit --config cfg.yaml``. Before
parsing, every ``${VAR}`` in the raw text is replaced with the environment variable's value
(empty string if unset), as rslearn does. Several files are merged in order (mappings merge
recursively, later values win, lists are replaced), and ``--a.b.c value`` overrides apply
where they stand on the command line (see ``rskeras.config.command_line``).
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable, NamedTuple

import yaml

from rskeras.config.errors import ConfigError

# rslearn project management (see rskeras.lightning_cli).
MANAGEMENT_KEYS = frozenset(
    {
        "management_dir",
        "project_name",
        "run_name",
        "run_description",
        "log_mode",
        "load_checkpoint_mode",
        "load_checkpoint_required",
    }
)
# The top-level keys of a config.
TOP_LEVEL_KEYS = frozenset({"model", "data", "trainer", "ckpt_path", "seed_everything"}) | MANAGEMENT_KEYS

_ENV_PATTERN = re.compile(r"\$\{([^}:]+)(?::-([^}]*))?\}")

# A config with aliases expanding to more nodes than this is refused (a "billion laughs"
# alias bomb expands to ~10^7 leaves from a few lines).
MAX_EXPANDED_NODES = 100_000

# YAML 1.2 core schema scalars: what is a number or a bool does not follow YAML 1.1 (which
# reads 1e-4 as a string, 1:20 as 80, 010 as 8 and yes/no/on/off as bools).
_BOOL_12 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


def parse_float(text: str) -> float | None:
    """A YAML 1.2 float literal (``1e-4``, ``.5``, ``-.inf``), else None."""
    text = text.strip()
    if not _FLOAT_12.match(text):
        return None
    lowered = text.lower()
    if lowered.endswith((".inf", ".nan")):
        return float(lowered.replace(".", ""))
    return float(text)


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 core numbers and bools and an alias budget."""

    yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    source = "<config>"

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        size = expanded_size(node)
        if size > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{self.source}: YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes (an alias bomb?); refused"
            )
        return self.construct_document(node)


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    return sign * int(digits, 10)


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_12, list("tTfF"))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_12, list("-+0123456789"))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
ConfigLoader.add_constructor("tag:yaml.org,2002:bool", lambda loader, node: loader.construct_scalar(node).lower() == "true")
ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
ConfigLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: parse_float(loader.construct_scalar(node)))


def expanded_size(node: yaml.Node) -> int:
    """Number of nodes of ``node`` with every alias expanded, computed without expanding
    (each distinct node once, shared ones counted at every use)."""
    sizes: dict[int, int] = {}
    # Iterative post-order (deep nesting must not hit the recursion limit).
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, done = stack.pop()
        if id(current) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        elif isinstance(current, yaml.MappingNode):
            children = [n for pair in current.value for n in pair]
        if done or not children:
            total = 1 + sum(sizes.get(id(c), 0) for c in children)
            sizes[id(current)] = min(total, MAX_EXPANDED_NODES + 1)
            continue
        stack.append((current, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def yaml_load(text: str, source: str = "<config>") -> Any:
    """Parses YAML text with :class:`ConfigLoader` (``ConfigError`` naming ``source`` for
    an alias bomb; ``yaml.YAMLError`` for a syntax error)."""
    loader = ConfigLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def substitute_env(text: str) -> str:
    """Replaces ``${VAR}`` with the environment value (empty string if unset).

    rskeras also accepts ``${VAR:-default}`` (the default applies when VAR is unset or
    empty), a superset of rslearn's syntax used by the example configs.
    """
    return _ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def load_yaml_text(text: str, source: str = "<config>") -> dict[str, Any]:
    """Parses one config text (after env substitution) with :class:`ConfigLoader`."""
    try:
        data = yaml_load(substitute_env(text), source)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level of a config must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merges ``update`` into a copy of ``base``.

    When both sides are mappings that carry a ``class_path`` and the class paths differ, the
    update replaces the base entirely (its init_args belong to another class).
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            old = out[key]
            if "class_path" in value and "class_path" in old and value["class_path"] != old["class_path"]:
                out[key] = copy.deepcopy(value)
            else:
                out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override_value(text: str) -> Any:
    """Parses the value of a command-line override as YAML (``16`` -> int, ``1e-4`` -> float,
    ``[1,2]`` -> list; YAML 1.2 numbers and bools, see :class:`ConfigLoader`)."""
    try:
        return yaml_load(substitute_env(text), "command line")
    except yaml.YAMLError:
        return text


def set_by_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Sets ``config[a][b][c] = value`` for ``dotted = "a.b.c"``; integer parts index lists."""
    parts = dotted.split(".")
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"override --{dotted}: {where} is not a valid list index") from None
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override --{dotted}: {where} is not a mapping")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"override --{dotted}: {last} is not a valid list index") from None
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override --{dotted}: parent is not a mapping")


class Override(NamedTuple):
    """A ``--key value`` config override.

    ``after_configs``: how many config files precede it on the command line (it applies
    after that many files were merged, so a later file can override it, as with
    LightningCLI); None: after every file.
    """

    key: str
    value: str  # YAML text
    after_configs: int | None = None


def read_config_file(path: str) -> dict[str, Any]:
    """One config file, parsed (``ConfigError`` naming the file if it cannot be read)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    return load_yaml_text(text, source=path)


def load_config(paths: list[str], overrides: Iterable[Override | tuple[str, str]] | None = None) -> dict[str, Any]:
    """Loads and merges config files and applies overrides, in command-line order.

    ``overrides``: :class:`Override` (from ``rskeras.config.command_line``) or plain
    ``(dotted_key, yaml_value)`` pairs, which apply after every file.
    """
    pending = [Override(*o) for o in overrides or ()]
    config: dict[str, Any] = {}
    for n, path in enumerate(paths):
        while pending and pending[0].after_configs is not None and pending[0].after_configs <= n:
            key, value, _ = pending.pop(0)
            set_by_path(config, key, parse_override_value(value))
        config = deep_merge(config, read_config_file(path))
    for key, value, _ in pending:
        set_by_path(config, key, parse_override_value(value))
    return config
