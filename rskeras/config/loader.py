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


def substitute_env(text: str) -> str:
    """Replaces ``${VAR}`` with the environment value (empty string if unset).

    rskeras also accepts ``${VAR:-default}`` (the default applies when VAR is unset or
    empty), a superset of rslearn's syntax used by the example configs.
    """
    return _ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def load_yaml_text(text: str, source: str = "<config>") -> dict[str, Any]:
    """Parses one config text (after env substitution) with ``yaml.safe_load``."""
    try:
        data = yaml.safe_load(substitute_env(text))
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
    """Parses the value of a command-line override as YAML (``16`` -> int, ``[1,2]`` -> list)."""
    try:
        return yaml.safe_load(substitute_env(text))
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
