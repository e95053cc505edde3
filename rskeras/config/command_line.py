"""The command line shared by ``tools/train.py`` and ``tools/export.py``: one pass splits
argv into the CLI's own arguments (for argparse) and config overrides.

An override is ``--a.b.c VALUE`` or ``--a.b.c=VALUE`` (VALUE parsed as YAML; integer parts
index lists), or a top-level config key (``--seed_everything 3``, ``--management_dir DIR``).
Each records how many ``--config`` files precede it, so that
``rskeras.config.loader.load_config`` applies configs and overrides in command-line
order, as LightningCLI does.
"""

from __future__ import annotations

from typing import Collection

from rskeras.config.loader import TOP_LEVEL_KEYS, Override

CONFIG_FLAGS = ("--config", "-c")
# Own flags whose value is the next item even when it starts with "--".
VALUE_FLAGS = CONFIG_FLAGS + ("--ckpt_path",)
# Flags that are never overrides.
OWN_FLAGS = VALUE_FLAGS + ("--print_config", "-h", "--help")


def override_key(item: str, own_flags: Collection[str] = OWN_FLAGS) -> str | None:
    """The config key ``item`` overrides (``--a.b.c`` / ``--a.b.c=v`` -> ``a.b.c``), or None
    when it is not an override."""
    if not item.startswith("--") or item.split("=", 1)[0] in own_flags:
        return None
    key = item[2:].split("=", 1)[0]
    if not key or ("." not in key and key not in TOP_LEVEL_KEYS):
        return None
    return key


def split_command_line(argv: list[str], prog: str = "train.py", own_flags: Collection[str] = OWN_FLAGS) -> tuple[list[str], list[Override]]:
    """Separates config overrides from the CLI's own arguments.

    Returns the remaining arguments (in order) and the overrides (in order, each with the
    number of config files before it). An override without a value exits with an argparse
    style error naming ``prog``.
    """
    rest: list[str] = []
    overrides: list[Override] = []
    configs = 0
    i = 0
    while i < len(argv):
        item = argv[i]
        key = override_key(item, own_flags)
        if key is None:
            flag = item.split("=", 1)[0]
            rest.append(item)
            if flag in CONFIG_FLAGS:
                configs += 1
            if item in VALUE_FLAGS and i + 1 < len(argv):
                rest.append(argv[i + 1])  # a value, even one that starts with "--"
                i += 1
            i += 1
        elif "=" in item:
            overrides.append(Override(key, item.split("=", 1)[1], configs))
            i += 1
        elif i + 1 < len(argv):
            overrides.append(Override(key, argv[i + 1], configs))
            i += 2
        else:
            raise SystemExit(f"{prog}: error: override {item} needs a value")
    return rest, overrides
