"""Base classes and value types for model components.

rslearn composes a model from an encoder list (a FeatureExtractor followed by
IntermediateComponents) and one or more decoder lists (IntermediateComponents ending in a
Predictor). rskeras keeps that structure with Keras layers:

* ``FeatureMaps`` is a plain Python ``list`` of NHWC tensors ``[B, H, W, C]``, ordered
  finest to coarsest (rslearn: list of NCHW maps). Plain lists survive Keras functional
  tracing, which is why no wrapper class is used.
* ``FeatureVector`` is a single ``[B, C]`` tensor.
* The *context* is the batched model-input dict (key -> tensor; rasters are
  ``[B, T, H, W, C]``), the counterpart of rslearn's ``ModelContext.inputs``.

Call conventions (all Keras layers):

* ``FeatureExtractor.call(context, training=None) -> Any``
* ``IntermediateComponent.call(intermediates, context=None, training=None) -> Any``
* ``Predictor.call(intermediates, context=None, targets=None, training=None) -> dict``
  returning ``model_output(outputs, loss_dict)``; ``targets`` is the batched target dict
  of the task (or None when predicting), and the loss dict is empty without targets.

Components that hold weights ported from PyTorch implement ``torch_params(prefix)``
(see ``rskeras.weights.torch_params``).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

FeatureMaps = list
FeatureVector = tf.Tensor


def model_output(outputs: Any, loss_dict: dict[str, tf.Tensor] | None = None) -> dict:
    """The ModelOutput dict returned by predictors and models (rslearn ``ModelOutput``):
    ``{"outputs": outputs, "loss_dict": {name: scalar}}``."""
    return {"outputs": outputs, "loss_dict": dict(loss_dict or {})}


def require_feature_maps(x: Any, component: str) -> list:
    """Returns ``x`` if it is FeatureMaps (a list/tuple of tensors), else raises."""
    if isinstance(x, (list, tuple)) and len(x) > 0 and not isinstance(x[0], (list, tuple)):
        return list(x)
    raise ValueError(f"input to {component} must be FeatureMaps (a list of NHWC tensors), got {type(x).__name__}")


def require_feature_vector(x: Any, component: str) -> tf.Tensor:
    """Returns ``x`` if it is a FeatureVector (one rank-2 tensor), else raises."""
    if isinstance(x, (list, tuple, dict)) or len(x.shape) != 2:
        raise ValueError(f"input to {component} must be a FeatureVector (a [B, C] tensor), got {_describe(x)}")
    return x


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        return f"a list of {len(x)}"
    if isinstance(x, dict):
        return "a dict"
    return f"a tensor of shape {tuple(x.shape)}"


def single_timestep(image: tf.Tensor, component: str, key: str = "image") -> tf.Tensor:
    """``[B, T, H, W, C]`` with T == 1 -> ``[B, H, W, C]`` (rslearn: single_ts_to_chw_tensor)."""
    if len(image.shape) == 4:
        return image
    if len(image.shape) != 5:
        raise ValueError(f"{component}: input '{key}' must be [B, T, H, W, C], got shape {tuple(image.shape)}")
    if image.shape[1] is not None and image.shape[1] != 1:
        raise ValueError(f"{component}: input '{key}' must have a single timestep, got T={image.shape[1]}")
    return image[:, 0]


def register(cls: type) -> type:
    """Registers ``cls`` for Keras serialisation as ``rskeras>ClassName`` (``.keras``
    files name their layers that way). Every component class is registered by subclassing
    :class:`Component`; other layers that a saved model's config names use this directly."""
    return keras.saving.register_keras_serializable(package="rskeras", name=cls.__name__)(cls)


class Component(keras.layers.Layer):
    """Base of the model components: every subclass is registered for ``.keras`` saving.

    Its config is Keras' automatic one (the constructor arguments, when they are plain
    values) unless the class defines ``get_config``; a component whose arguments are
    layers serialises them with ``keras.saving.serialize_keras_object``.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(cls)


class FeatureExtractor(Component):
    """First encoder component: computes features from the model context (input dict)."""

    def call(self, context, training=None):  # pragma: no cover - abstract
        raise NotImplementedError


class IntermediateComponent(Component):
    """Transforms the previous component's output (usually FeatureMaps)."""

    def call(self, intermediates, context=None, training=None):  # pragma: no cover
        raise NotImplementedError


class Predictor(Component):
    """Final decoder component: returns ``{"outputs": ..., "loss_dict": {...}}``."""

    def call(self, intermediates, context=None, targets=None, training=None):  # pragma: no cover
        raise NotImplementedError

    def loss_names(self) -> list[str]:
        """Names of the losses this predictor returns when given targets."""
        raise NotImplementedError
