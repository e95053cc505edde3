"""Task base classes.

A Task turns raw inputs into targets (``process_inputs``, a ``tf.data`` map function on
one example), turns one example's model output into what a writer stores
(``process_output``, host side), builds the export post-processing layer
(``output_layer``), defines metrics (``get_metrics``) and debug images (``visualize``).

Raw inputs of one example (see ``rskeras.train.model_context``): rasters are tensors
``[T, H, W, C]``; vector inputs are dicts of per-feature tensors. Metadata is a dict of
scalar tensors. Everything in ``process_inputs`` must be graph-compatible TF code (no
Python per example), because it runs inside ``Dataset.map``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.train.model_context import SampleMetadata


class Task:
    """Base class of all tasks."""

    def process_inputs(
        self, raw_inputs: dict[str, Any], metadata: dict[str, tf.Tensor], load_targets: bool = True
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Computes ``(input_dict, target_dict)`` for one example (graph mode)."""
        raise NotImplementedError

    def vector_property_names(self) -> list[str]:
        """Property columns this task reads from vector inputs."""
        return []

    def target_padding_values(self) -> dict[str, Any]:
        """Padding values for variable-length target tensors when batching (default 0).

        A (nested) dict mirroring the target dict; keys left out pad with 0.
        """
        return {}

    def process_output(self, raw_output: Any, metadata: SampleMetadata) -> Any:
        """One example's (numpy) model output -> ``[C, H, W]`` numpy raster or list of Features."""
        raise NotImplementedError

    def output_layer(self) -> keras.layers.Layer:
        """Keras layer mapping the predictor's batch outputs to named export outputs."""
        raise NotImplementedError

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        """Metric name -> Keras metric updated with ``update_state(outputs, targets)``."""
        return {}

    def visualize(self, input_dict: dict[str, Any], target_dict: dict[str, Any] | None, output: Any) -> dict[str, np.ndarray]:
        """Debug images, name -> H×W×3 uint8."""
        raise NotImplementedError


class BasicTask(Task):
    """Task with the visualisation options shared by the single tasks.

    Args:
        image_bands: channel indexes of ``input_dict["image"]`` (first timestep) shown by
            ``visualize`` (default (0, 1, 2)).
        remap_values: optional ``[[lo, hi], [lo2, hi2]]`` linear remap of pixel values
            for visualisation, then clipped to 0..255.
    """

    def __init__(self, image_bands: tuple[int, ...] | list[int] = (0, 1, 2), remap_values: list[list[float]] | None = None):
        self.image_bands = tuple(image_bands)
        self.remap_values = remap_values

    def visualize_image(self, image: np.ndarray) -> np.ndarray:
        """``[T, H, W, C]`` (or ``[H, W, C]``) image -> H×W×3 uint8 of ``image_bands``."""
        image = np.asarray(image)
        if image.ndim == 4:
            image = image[0]
        array = image[:, :, list(self.image_bands)].astype(np.float64)
        if self.remap_values:
            (lo, hi), (lo2, hi2) = self.remap_values
            array = (array - lo) * (hi2 - lo2) / (hi - lo) + lo2
        return np.clip(array, 0, 255).astype(np.uint8)
