"""Mapping rslearn / Lightning / torch class paths onto rskeras classes.

``rslearn.X.Y`` maps to ``rskeras.X.Y`` (module paths mirror rslearn's). The aliases below
cover the paths that rslearn's documentation uses but its code does not define, and the
third-party classes that configs name.
"""

from __future__ import annotations

import importlib

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
