"""SelectBands: keep some channels of an image."""

from __future__ import annotations

import warnings

import tensorflow as tf

from rskeras.train.transforms.transform import Transform, read_selector, write_selector


class SelectBands(Transform):
    """Keeps the listed channel indexes (of every timestep).

    Args:
        band_indices: channel indexes to keep, in output order.
        input_selector: image to read (default "image").
        output_selector: where to write the result (default "image").
        num_bands_per_timestep: deprecated, ignored.

    Call-time: ``[T, H, W, C]`` -> ``[T, H, W, len(band_indices)]``. rslearn also
    replaces the input item in place when the selectors differ; rskeras leaves the input
    unchanged (tensors are immutable).
    """

    def __init__(self, band_indices: list[int], input_selector: str = "image", output_selector: str = "image", num_bands_per_timestep: int | None = None):
        super().__init__()
        if num_bands_per_timestep is not None:
            warnings.warn("SelectBands.num_bands_per_timestep is deprecated and ignored", FutureWarning, stacklevel=2)
        if not band_indices:
            raise ValueError("SelectBands: band_indices must not be empty")
        self.band_indices = [int(b) for b in band_indices]
        self.input_selector = input_selector
        self.output_selector = output_selector

    def forward(self, input_dict, target_dict):
        image = read_selector(input_dict, target_dict, self.input_selector)
        write_selector(input_dict, target_dict, self.output_selector, tf.gather(image, self.band_indices, axis=-1))
        return input_dict, target_dict
