"""Keras full-model files (``.keras``) of rskeras models.

``model.save("x.keras")`` works for every rskeras model: the components, SingleTaskModel
and MultiTaskModel are registered Keras serialisables (``rskeras>ClassName``) with configs.
To load one, the registering modules must have been imported; importing this module does
that, so either of these works in a fresh process::

    import rskeras.saving
    model = keras.saving.load_model("x.keras")
    # or
    model = rskeras.saving.load_model("x.keras")

The usual file is the inference model, ``run.lm.inference_model(run.input_specs)``
(inputs dict -> model -> task output layer); a bare SingleTaskModel/MultiTaskModel layer
saves with ``keras.saving.serialize_keras_object`` too. A ``.keras`` file holds the
network only, no pre-processing: for serving and the edge use ``rskeras export``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

# Packages whose modules define layers that a saved model's config can name.
LAYER_PACKAGES = ("rskeras.models", "rskeras.train.tasks")


def register_all() -> None:
    """Imports every module of ``LAYER_PACKAGES`` (registering their layers)."""
    for name in LAYER_PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
            importlib.import_module(info.name)


def load_model(path: str, **kwargs: Any):
    """``keras.saving.load_model`` with every rskeras layer registered."""
    import keras

    register_all()
    return keras.saving.load_model(path, **kwargs)


register_all()
