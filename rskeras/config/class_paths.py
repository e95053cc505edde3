"""Mapping rslearn / Lightning / torch class paths onto rskeras classes, and the allow-list.

``rslearn.X.Y`` maps to ``rskeras.X.Y`` (module paths mirror rslearn's). The aliases below
cover the paths that rslearn's documentation uses but its code does not define, and the
third-party classes that configs name.

A config is data, not code: by default it may only build rskeras classes (which every
mapped ``rslearn.*`` / Lightning / ``torch.nn`` name becomes) and the Keras callbacks of
``KERAS_CLASSES``. Anything else (``subprocess.Popen``, ``logging.FileHandler``, a Keras
callback that writes or deletes files at a path of the config's choosing, your own
package) needs an explicit opt-in by whoever runs the command, never by the config
itself: ``--allow-class-prefix PREFIX`` (repeatable) or the environment variable
``RSKERAS_ALLOW_CLASS_PREFIX`` (comma-separated prefixes). The check runs on the class
path text, before anything is imported or constructed (see ``check_class_paths``).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterable, Iterator

# Exact class-path aliases (documented spellings -> real rskeras location).
ALIASES: dict[str, str] = {
    # spec/models.md §2 and §15: the docs place the models in each other's module.
    "rslearn.models.multitask.SingleTaskModel": "rskeras.models.singletask.SingleTaskModel",
    "rslearn.models.singletask.MultiTaskModel": "rskeras.models.multitask.MultiTaskModel",
    # rslearn keeps the OlmoEarth fine-tuning optimizer and callback next to the model; in
    # rskeras they belong to the training room (the model room does not import it).
    "rslearn.models.olmoearth_pretrain.optimizer.LayerDecayAdamW": "rskeras.train.layer_decay.LayerDecayAdamW",
    "rslearn.models.olmoearth_pretrain.optimizer.SimpleFreeze": "rskeras.train.callbacks.freeze_unfreeze.SimpleFreeze",
}

# Prefix rewrites, applied in order (first match wins).
PREFIXES: list[tuple[str, str]] = [
    ("rslearn.", "rskeras."),
    ("lightning.pytorch.callbacks.", "rskeras.train.callbacks.lightning."),
    ("pytorch_lightning.callbacks.", "rskeras.train.callbacks.lightning."),
    ("lightning.pytorch.loggers.", "rskeras.train.loggers."),
    ("torch.nn.", "rskeras.models.activations."),
]


def map_class_path(class_path: str) -> str:
    """The rskeras class path for an rslearn/Lightning/torch/rskeras class path."""
    if class_path in ALIASES:
        return ALIASES[class_path]
    for old, new in PREFIXES:
        if class_path.startswith(old):
            return new + class_path[len(old):]
    return class_path


def import_class(class_path: str):
    """Imports ``a.b.C`` and returns ``C`` (ImportError/AttributeError propagate)."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ImportError(f"'{class_path}' is not a dotted class path")
    module = importlib.import_module(module_name)
    return getattr(module, name)


# Keras classes a config may build without an opt-in: callbacks that only read the logged
# metrics. CSVLogger, TensorBoard, ModelCheckpoint and BackupAndRestore write (and
# BackupAndRestore deletes) files at a path the config chooses; RemoteMonitor sends the
# metrics over the network; LambdaCallback/LearningRateScheduler need Python callables.
KERAS_CLASSES = frozenset(
    {
        "keras.callbacks.EarlyStopping",
        "keras.callbacks.ReduceLROnPlateau",
        "keras.callbacks.TerminateOnNaN",
        "keras.callbacks.ProgbarLogger",
        "keras.callbacks.SwapEMAWeights",
    }
)
ALLOW_ENV = "RSKERAS_ALLOW_CLASS_PREFIX"
ALLOW_FLAG = "--allow-class-prefix"
_extra_prefixes: list[str] = []


def set_allowed_prefixes(prefixes: Iterable[str]) -> None:
    """The opt-in class path prefixes of this process (the commands' ``--allow-class-prefix``)."""
    _extra_prefixes[:] = [p for p in prefixes if p]


def allowed_prefixes() -> list[str]:
    """Opt-in prefixes: ``--allow-class-prefix`` values and ``$RSKERAS_ALLOW_CLASS_PREFIX``."""
    env = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return list(_extra_prefixes) + env


def _opted_in(class_path: str, mapped: str) -> bool:
    return any(path == p or path.startswith(p) for p in allowed_prefixes() for path in (class_path, mapped))


def is_allowed(class_path: str) -> bool:
    """Whether a config may build ``class_path`` (checked on the text, before import)."""
    mapped = map_class_path(class_path)
    return mapped.startswith("rskeras.") or mapped in KERAS_CLASSES or _opted_in(class_path, mapped)


def is_allowed_class(cls: type, class_path: str) -> bool:
    """After import: an allowed rskeras path must name a class defined in rskeras (not one
    an rskeras module imported from elsewhere)."""
    mapped = map_class_path(class_path)
    if _opted_in(class_path, mapped) or mapped in KERAS_CLASSES:
        return True
    return str(getattr(cls, "__module__", "")).startswith("rskeras.")


def not_allowed_message(class_path: str, key: str) -> str:
    return (
        f"{key}.class_path: '{class_path}' is not allowed: a config may only build rskeras classes, the rslearn / "
        f"Lightning / torch.nn names mapped onto them and the Keras callbacks {sorted(KERAS_CLASSES)}. If you trust "
        f"this config, allow it with {ALLOW_FLAG} {class_path.rpartition('.')[0] or class_path}. "
        f"(or {ALLOW_ENV}=PREFIX,...)"
    )


def iter_class_paths(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``class_path`` value in a config, with the key path of its node."""
    if isinstance(node, dict):
        if "class_path" in node:
            yield key, node["class_path"]
        for k, v in node.items():
            if k != "class_path":
                yield from iter_class_paths(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_class_paths(v, f"{key}.{i}" if key else str(i))


def check_class_paths(config: Any) -> None:
    """Raises ConfigError for the first class path a config may not build (every section,
    before anything is imported or constructed)."""
    from rskeras.config.errors import ConfigError

    for key, class_path in iter_class_paths(config):
        if not isinstance(class_path, str):
            raise ConfigError(f"{key}.class_path: expected a string, got {type(class_path).__name__}")
        if not is_allowed(class_path):
            raise ConfigError(not_allowed_message(class_path, key))
