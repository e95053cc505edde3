"""Embedding extraction: EmbeddingTask (no targets, no metrics) and EmbeddingHead."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.component import Predictor, model_output, require_feature_maps
from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.task import Task, export_outputs


class EmbeddingTask(Task):
    """Writes the model's feature map as a raster (``model predict`` only).

    No targets (``process_inputs`` returns ``({}, {})``), no metrics; ``visualize`` is
    unsupported. ``process_output`` takes one example's ``[H, W, C]`` map and returns it
    as ``[C, H, W]`` for a C-band raster layer.
    """

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        return {}, {}

    def process_output(self, raw_output, metadata: SampleMetadata) -> np.ndarray:
        output = np.asarray(raw_output)
        if output.ndim != 3:
            raise ValueError(f"output for EmbeddingTask must be an H×W×C array, got shape {output.shape}")
        return np.transpose(output, (2, 0, 1))

    def output_layer(self) -> keras.layers.Layer:
        return EmbeddingOutput()

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {"kind": "embedding", **export_outputs(prefix, {"embeddings": "float32"}), "merge": "raster", "raster": "embeddings"}

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        return {}

    def visualize(self, input_dict, target_dict, output):
        raise NotImplementedError("EmbeddingTask does not support visualize (it is set up for `model predict`)")


@keras.saving.register_keras_serializable(package="rskeras")
class EmbeddingOutput(keras.layers.Layer):
    """Export post-processing: ``[B, H, W, C]`` -> ``{"embeddings": [B, H, W, C]}``."""

    def call(self, outputs):
        return {"embeddings": outputs}


@keras.saving.register_keras_serializable(package="rskeras")
class EmbeddingHead(Predictor):
    """Passes one feature map through with a dummy loss ``{"loss": 0}``.

    Input: FeatureMaps with exactly one ``[B, H, W, C]`` map; output: that map.
    """

    def call(self, intermediates, context=None, targets=None, training=None):
        maps = require_feature_maps(intermediates, "EmbeddingHead")
        if len(maps) != 1:
            raise ValueError(f"input to EmbeddingHead must have one feature map, but got {len(maps)}")
        return model_output(maps[0], {"loss": tf.constant(0.0, tf.float32)})

    def loss_names(self) -> list[str]:
        return ["loss"]

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
