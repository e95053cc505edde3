"""Sentinel2SCLToMask: a validity mask from the Sentinel-2 scene classification band."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.transform import Transform, read_selector, selector_exists, write_selector


def values_to_mask(image: tf.Tensor, values: list[int], name: str) -> tf.Tensor:
    """int32 ``[T, H, W, 1]``: 1 where ``image`` equals one of ``values``."""
    if image.shape[-1] is not None and image.shape[-1] != 1:
        raise ValueError(f"{name}: expected an image with exactly one band, got {image.shape[-1]}")
    hit = tf.zeros(tf.shape(image), tf.bool)
    for v in values:
        hit |= tf.equal(image, tf.cast(v, image.dtype))
    return hit


class Sentinel2SCLToMask(Transform):
    """Writes an int32 mask that is 0 where the SCL class is excluded, 1 elsewhere.

    Args:
        scl_selector: the one-band SCL image (default "scl").
        output_selector: where to write the mask (default "mask").
        exclude_scl_values: SCL classes to mask out (default [3, 8, 9, 10]: cloud
            shadow, medium/high cloud, cirrus).
        skip_missing: do nothing when the SCL image is missing.

    Call-time: ``[T, H, W, 1]`` -> int32 ``[T, H, W, 1]``.
    """

    DEFAULT_EXCLUDE_SCL_VALUES = [3, 8, 9, 10]

    def __init__(self, scl_selector: str = "scl", output_selector: str = "mask", exclude_scl_values: list[int] | None = None, skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        self.scl_selector = scl_selector
        self.output_selector = output_selector
        self.exclude_scl_values = list(self.DEFAULT_EXCLUDE_SCL_VALUES if exclude_scl_values is None else exclude_scl_values)

    def forward(self, input_dict, target_dict):
        if self.skip_missing and not selector_exists(input_dict, target_dict, self.scl_selector):
            return input_dict, target_dict
        scl = read_selector(input_dict, target_dict, self.scl_selector)
        mask = tf.cast(~values_to_mask(scl, self.exclude_scl_values, "Sentinel2SCLToMask"), tf.int32)
        write_selector(input_dict, target_dict, self.output_selector, mask)
        return input_dict, target_dict
