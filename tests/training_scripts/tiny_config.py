"""The one tiny test config (tests/fixtures/tiny.yaml: classification on the sample
dataset) and its variants: a test deep-merges its changes onto it (mappings merge, lists
and nodes of another class_path are replaced), as a second --config would, then sets
dotted keys, as --a.b.c overrides would."""

import os

import yaml

from rskeras.config.loader import deep_merge, set_by_path

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "tiny.yaml")
with open(PATH) as f:
    CONFIG = f.read()


def tiny_config(dataset, changes=None, overrides=None) -> dict:
    """The config with the dataset path, ``changes`` (a mapping or YAML text) merged in,
    then ``overrides`` (dotted key -> value) set."""
    config = yaml.safe_load(CONFIG.replace("DATASET", str(dataset)))
    if isinstance(changes, str):
        changes = yaml.safe_load(changes)
    config = deep_merge(config, changes or {})
    for key, value in (overrides or {}).items():
        set_by_path(config, key, value)
    return config


def write_config(path, dataset, changes=None, overrides=None, **trainer):
    """Writes the config with the dataset path, ``changes``, ``overrides`` and extra
    trainer keys; returns the path."""
    config = tiny_config(dataset, changes, overrides)
    config["trainer"].update(trainer)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)
