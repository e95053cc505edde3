"""Sentinel1ToDecibels: Sentinel-1 intensities to or from decibels."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.transform import Transform


class Sentinel1ToDecibels(Transform):
    """``10·log10(max(x, epsilon))`` (to dB) or ``10^(x/10)`` (from dB).

    Args:
        selectors: images to convert (default ["image"]).
        from_decibels: convert dB to linear intensity instead.
        epsilon: lower clamp before the logarithm (default 1e-6; nodata 0 pixels).
        skip_missing: skip missing selectors.

    Call-time: any tensor; float32 out, same shape.
    """

    def __init__(self, selectors: list[str] | None = None, from_decibels: bool = False, epsilon: float = 1e-6, skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        if epsilon <= 0:
            raise ValueError(f"Sentinel1ToDecibels: epsilon must be > 0, got {epsilon}")
        self.selectors = list(selectors) if selectors is not None else ["image"]
        self.from_decibels = from_decibels
        self.epsilon = epsilon

    def apply_image(self, image: tf.Tensor) -> tf.Tensor:
        x = tf.cast(image, tf.float32)
        if self.from_decibels:
            return tf.pow(10.0, x / 10.0)
        return 10.0 * tf.math.log(tf.maximum(x, self.epsilon)) / tf.math.log(10.0)

    def forward(self, input_dict, target_dict):
        self.apply_fn(self.apply_image, input_dict, target_dict, self.selectors)
        return input_dict, target_dict
