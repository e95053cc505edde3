"""SingleTaskModel: one encoder list and one decoder list ending in a Predictor."""

from __future__ import annotations

from typing import Any

import keras

from rskeras.models.component import register
from rskeras.weights.errors import WeightLoadError
from rskeras.weights.torch_params import TorchParam, join


def serialize_components(components: list) -> list[dict]:
    return [keras.saving.serialize_keras_object(c) for c in components]


def deserialize_components(configs: list) -> list:
    return [keras.saving.deserialize_keras_object(c) for c in configs]


def run_encoder(encoder: list, context: dict, training=None) -> Any:
    """Applies the FeatureExtractor then each IntermediateComponent of ``encoder``."""
    x = encoder[0](context, training=training)
    for component in encoder[1:]:
        x = component(x, context=context, training=training)
    return x


def run_decoder(decoder: list, x: Any, context: dict, targets=None, training=None) -> dict:
    """Applies the intermediate components of ``decoder`` then its Predictor."""
    for component in decoder[:-1]:
        x = component(x, context=context, training=training)
    return decoder[-1](x, context=context, targets=targets, training=training)


def components_torch_params(components: list, prefix: str) -> list[TorchParam]:
    """torch_params of a list of components stored as a torch ModuleList at ``prefix``."""
    out: list[TorchParam] = []
    for i, component in enumerate(components):
        if hasattr(component, "torch_params"):
            out.extend(component.torch_params(join(prefix, str(i))))
        elif component.weights:
            raise WeightLoadError(
                f"component {type(component).__name__} ({join(prefix, str(i))}) has no PyTorch counterpart, so torch "
                "weights cannot fill it: load an rskeras .weights.h5 checkpoint instead"
            )
    return out


@register
class SingleTaskModel(keras.layers.Layer):
    """Encoder then one decoder (rslearn ``rslearn.models.singletask.SingleTaskModel``).

    Args:
        encoder: list of components; the first is a FeatureExtractor taking the input
            dict, the rest are IntermediateComponents.
        decoder: list of IntermediateComponents ending in a Predictor.

    ``call(inputs, targets=None, training=None)`` returns the predictor's
    ``{"outputs": ..., "loss_dict": {...}}``.
    """

    def __init__(self, encoder: list, decoder: list, **kwargs):
        # autocast=False: Keras would cast every float input (float64 timestamps included)
        # to the compute dtype; each component casts what it uses.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not encoder:
            raise ValueError("SingleTaskModel: encoder must contain at least one component")
        if not decoder:
            raise ValueError("SingleTaskModel: decoder must contain at least one component (the predictor)")
        self.encoder = list(encoder)
        self.decoder = list(decoder)

    def build(self, *args, **kwargs):
        # Sub-components build themselves on their first call; tracing the whole
        # container to infer shapes is neither needed nor possible (dict inputs).
        self.built = True

    def call(self, inputs, targets=None, training=None):
        return self.decode(self.encode(inputs, training=training), inputs, targets=targets, training=training)

    def encode(self, inputs, training=None):
        """The encoder's features (the part of ``call`` that never needs the targets)."""
        return run_encoder(self.encoder, inputs, training=training)

    def decode(self, features, inputs, targets=None, training=None):
        """The decoder on ``encode``'s features: ``call = decode(encode(inputs), inputs)``."""
        return run_decoder(self.decoder, features, inputs, targets=targets, training=training)

    def loss_names(self) -> list[str]:
        return list(self.decoder[-1].loss_names())

    def get_config(self) -> dict:
        return {**super().get_config(), "encoder": serialize_components(self.encoder), "decoder": serialize_components(self.decoder)}

    @classmethod
    def from_config(cls, config: dict) -> "SingleTaskModel":
        config = dict(config)
        encoder = deserialize_components(config.pop("encoder"))
        decoder = deserialize_components(config.pop("decoder"))
        return cls(encoder=encoder, decoder=decoder, **config)

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        return components_torch_params(self.encoder, join(prefix, "encoder")) + components_torch_params(
            self.decoder, join(prefix, "decoder")
        )
