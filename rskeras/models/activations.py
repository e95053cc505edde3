"""Keras layers standing in for the ``torch.nn`` activation modules used in configs.

rslearn configs pass activation modules by class path, e.g.
``activation: {class_path: torch.nn.ReLU, init_args: {inplace: true}}`` for
``rslearn.models.conv.Conv``. rskeras maps ``torch.nn.<Name>`` to
``rskeras.models.activations.<Name>``. Each layer computes exactly what the torch module
computes (GELU uses the exact erf form, LeakyReLU's default slope is torch's 0.01) and
accepts and ignores torch's ``inplace`` argument.

Call: any tensor -> tensor of the same shape.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class _Activation(keras.layers.Layer):
    def __init__(self, inplace: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.inplace = bool(inplace)  # accepted for torch compatibility; no effect

    def get_config(self):
        return {**super().get_config(), "inplace": self.inplace}


@keras.saving.register_keras_serializable(package="rskeras")
class ReLU(_Activation):
    """``torch.nn.ReLU``: max(x, 0).

    Args:
        inplace: bool, ignored (torch memory option), default False.
    """

    def call(self, x):
        return tf.nn.relu(x)


@keras.saving.register_keras_serializable(package="rskeras")
class GELU(keras.layers.Layer):
    """``torch.nn.GELU``: x * Phi(x) (exact erf form, or the tanh approximation).

    Args:
        approximate: str, "none" (default, erf) or "tanh".
    """

    def __init__(self, approximate: str = "none", **kwargs):
        super().__init__(**kwargs)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def call(self, x):
        return tf.nn.gelu(x, approximate=self.approximate == "tanh")

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}


@keras.saving.register_keras_serializable(package="rskeras")
class SiLU(_Activation):
    """``torch.nn.SiLU``: x * sigmoid(x).

    Args:
        inplace: bool, ignored, default False.
    """

    def call(self, x):
        return x * tf.sigmoid(x)


@keras.saving.register_keras_serializable(package="rskeras")
class Sigmoid(keras.layers.Layer):
    """``torch.nn.Sigmoid``: 1 / (1 + exp(-x))."""

    def call(self, x):
        return tf.sigmoid(x)


@keras.saving.register_keras_serializable(package="rskeras")
class Tanh(keras.layers.Layer):
    """``torch.nn.Tanh``."""

    def call(self, x):
        return tf.tanh(x)


@keras.saving.register_keras_serializable(package="rskeras")
class LeakyReLU(_Activation):
    """``torch.nn.LeakyReLU``: x if x >= 0 else negative_slope * x.

    Args:
        negative_slope: float, default 0.01 (torch's default; Keras' is 0.3).
        inplace: bool, ignored, default False.
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False, **kwargs):
        super().__init__(inplace=inplace, **kwargs)
        self.negative_slope = float(negative_slope)

    def call(self, x):
        return tf.where(x >= 0, x, x * self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


@keras.saving.register_keras_serializable(package="rskeras")
class Identity(keras.layers.Layer):
    """``torch.nn.Identity``: returns its input (torch accepts and ignores any arguments)."""

    def __init__(self, *args, **kwargs):
        layer_kwargs = {k: v for k, v in kwargs.items() if k in ("name", "dtype", "trainable")}
        super().__init__(**layer_kwargs)

    def call(self, x):
        return x


ACTIVATIONS = {cls.__name__: cls for cls in (ReLU, GELU, SiLU, Sigmoid, Tanh, LeakyReLU, Identity)}


def get_activation(spec) -> keras.layers.Layer:
    """An activation layer from a layer, a name ("ReLU", "torch.nn.ReLU") or None (ReLU).

    Args:
        spec: a Keras layer (returned as is), a class name with or without the
            ``torch.nn.`` prefix, a ``{"class_path": ..., "init_args": {...}}`` dict, or
            None for ``ReLU``.
    """
    if spec is None:
        return ReLU()
    if isinstance(spec, keras.layers.Layer):
        return spec
    init_args = {}
    if isinstance(spec, dict):
        init_args = dict(spec.get("init_args") or {})
        spec = spec.get("class_path")
    if isinstance(spec, str):
        name = spec.rsplit(".", 1)[-1]
        if name in ACTIVATIONS:
            return ACTIVATIONS[name](**init_args)
    raise ValueError(f"unknown activation {spec!r}; expected a Keras layer or one of {sorted(ACTIVATIONS)}")


def serialize_activation(layer: keras.layers.Layer) -> dict:
    """Config form of an activation layer ``{"class_path": "torch.nn.X", "init_args": ...}``."""
    name = type(layer).__name__
    if name not in ACTIVATIONS:
        return keras.saving.serialize_keras_object(layer)
    config = layer.get_config()
    init_args = {k: v for k, v in config.items() if k in ("inplace", "negative_slope", "approximate")}
    return {"class_path": f"torch.nn.{name}", "init_args": init_args}
