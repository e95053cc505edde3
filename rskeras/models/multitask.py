"""MultiTaskModel: a shared encoder and one decoder list per task."""

from __future__ import annotations

import logging

import keras

from rskeras.models.component import model_output, register
from rskeras.models.singletask import components_torch_params, deserialize_components, run_decoder, run_encoder, serialize_components
from rskeras.weights.torch_params import TorchParam, join

logger = logging.getLogger(__name__)


@register
class MultiTaskModel(keras.layers.Layer):
    """Shared encoder, parallel decoders (rslearn ``rslearn.models.multitask.MultiTaskModel``).

    Args:
        encoder: list of components (FeatureExtractor first).
        decoders: task name -> list of components ending in a Predictor. Decoders are
            applied in sorted task-name order.
        loss_weights: task name -> weight multiplying that task's losses (default 1.0;
            tasks missing from the dict get 1.0 with a warning).
        lazy_decode, trunk: accepted for config compatibility; only the default values
            are supported (rslearn's plain class cannot use them either).

    Outputs are a dict task -> that predictor's batch outputs; losses are named
    ``<task>_<loss>``.
    """

    def __init__(self, encoder: list, decoders: dict, loss_weights: dict | None = None, lazy_decode: bool = False, trunk=None, **kwargs):
        # autocast=False: Keras would cast every float input (float64 timestamps included)
        # to the compute dtype; each component casts what it uses.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if lazy_decode:
            raise ValueError("MultiTaskModel: lazy_decode is not supported (it fails in rslearn's MultiTaskModel as well)")
        if trunk is not None:
            raise ValueError("MultiTaskModel: trunk is not supported by rskeras")
        if not decoders:
            raise ValueError("MultiTaskModel: decoders must name at least one task")
        self.encoder = list(encoder)
        self.task_names = sorted(decoders)
        self.decoders = {name: list(decoders[name]) for name in self.task_names}
        weights = dict(loss_weights or {})
        for name in self.task_names:
            if name not in weights:
                if loss_weights is not None:
                    logger.warning("MultiTaskModel: no loss weight for task %s, using 1.0", name)
                weights[name] = 1.0
        self.loss_weights = {name: float(weights[name]) for name in self.task_names}

    def build(self, *args, **kwargs):
        # Sub-components build themselves on their first call; tracing the whole
        # container to infer shapes is neither needed nor possible (dict inputs).
        self.built = True

    def call(self, inputs, targets=None, training=None):
        return self.decode(self.encode(inputs, training=training), inputs, targets=targets, training=training)

    def encode(self, inputs, training=None):
        """The shared encoder's features (the part of ``call`` that never needs the targets)."""
        return run_encoder(self.encoder, inputs, training=training)

    def decode(self, x, inputs, targets=None, training=None):
        """Every task's decoder on ``encode``'s features."""
        outputs, losses = {}, {}
        for name in self.task_names:
            task_targets = None if targets is None else targets.get(name)
            out = run_decoder(self.decoders[name], x, inputs, targets=task_targets, training=training)
            outputs[name] = out["outputs"]
            for key, value in out["loss_dict"].items():
                losses[f"{name}_{key}"] = value * self.loss_weights[name]
        return model_output(outputs, losses)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": serialize_components(self.encoder),
            "decoders": {name: serialize_components(self.decoders[name]) for name in self.task_names},
            "loss_weights": dict(self.loss_weights),
        }

    @classmethod
    def from_config(cls, config: dict) -> "MultiTaskModel":
        config = dict(config)
        encoder = deserialize_components(config.pop("encoder"))
        decoders = {name: deserialize_components(c) for name, c in config.pop("decoders").items()}
        return cls(encoder=encoder, decoders=decoders, **config)

    def loss_names(self) -> list[str]:
        return [f"{name}_{key}" for name in self.task_names for key in self.decoders[name][-1].loss_names()]

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        out = components_torch_params(self.encoder, join(prefix, "encoder"))
        for name in self.task_names:
            out.extend(components_torch_params(self.decoders[name], join(prefix, f"decoders.{name}")))
        return out
