"""ElevationToSlopeAspect: slope and aspect bands from an elevation band."""

from __future__ import annotations

import math

import tensorflow as tf

from rskeras.train.transforms.transform import Transform, read_selector, selector_exists, write_selector

ELEVATION_BAND = "elevation"
SLOPE_BAND = "slope"
ASPECT_BAND = "aspect"
SUPPORTED_BANDS = (ELEVATION_BAND, SLOPE_BAND, ASPECT_BAND)
# Slopes below this many degrees count as flat (aspect undefined).
FLAT_SLOPE_EPSILON = 1e-6


def gradient(x: tf.Tensor, spacing: float, axis: int) -> tf.Tensor:
    """``torch.gradient`` with edge_order 1: central differences inside, one-sided
    differences on the two border samples (the axis needs at least 2 samples)."""
    n = tf.shape(x)[axis]
    first = (tf.gather(x, [1], axis=axis) - tf.gather(x, [0], axis=axis)) / spacing
    last = (tf.gather(x, [n - 1], axis=axis) - tf.gather(x, [n - 2], axis=axis)) / spacing
    inner = (tf.gather(x, tf.range(2, n), axis=axis) - tf.gather(x, tf.range(0, n - 2), axis=axis)) / (2 * spacing)
    return tf.concat([first, inner, last], axis=axis)


class ElevationToSlopeAspect(Transform):
    """Derives terrain bands from a one-band elevation image in meters.

    slope = degrees of ``atan(|∇z|)``; aspect = clockwise bearing of steepest descent
    in [0, 360) with north up (rows run north to south); flat pixels (slope < 1e-6°)
    get ``flat_aspect_value``; NaN elevations give NaN slope/aspect (and, through the
    differences, NaN at their 4 neighbours).

    Args:
        pixel_size_m: pixel size in meters (> 0).
        input_selector: the elevation image (default "elevation").
        output_selector: where to write the result (default: the input selector).
        bands: bands to emit, in order, from "elevation", "slope", "aspect" (default
            all three).
        flat_aspect_value: aspect of flat pixels (default -1).
        skip_missing: do nothing when the input is missing.

    Call-time: ``[T, H, W, 1]`` -> float32 ``[T, H, W, len(bands)]`` (H, W >= 2).
    """

    def __init__(
        self,
        pixel_size_m: float,
        input_selector: str = "elevation",
        output_selector: str | None = None,
        bands: list[str] | None = None,
        flat_aspect_value: float = -1.0,
        skip_missing: bool = False,
    ):
        super().__init__(skip_missing=skip_missing)
        if pixel_size_m <= 0:
            raise ValueError(f"pixel_size_m must be positive, got {pixel_size_m}")
        bands = list(SUPPORTED_BANDS) if bands is None else list(bands)
        if not bands:
            raise ValueError("expected at least one band")
        for band in bands:
            if band not in SUPPORTED_BANDS:
                raise ValueError(f"unsupported band '{band}'; choose from {SUPPORTED_BANDS}")
        self.pixel_size_m = float(pixel_size_m)
        self.input_selector = input_selector
        self.output_selector = output_selector if output_selector is not None else input_selector
        self.bands = bands
        self.flat_aspect_value = float(flat_aspect_value)

    def compute(self, elevation: tf.Tensor) -> tf.Tensor:
        """``[T, H, W]`` elevations -> ``[T, H, W, len(bands)]``."""
        dem = tf.cast(elevation, tf.float32)
        arrays = {ELEVATION_BAND: dem}
        if SLOPE_BAND in self.bands or ASPECT_BAND in self.bands:
            dz_north = -gradient(dem, self.pixel_size_m, axis=1)
            dz_east = gradient(dem, self.pixel_size_m, axis=2)
            slope = tf.atan(tf.sqrt(dz_east * dz_east + dz_north * dz_north)) * (180.0 / math.pi)
            arrays[SLOPE_BAND] = slope
            if ASPECT_BAND in self.bands:
                aspect = tf.math.floormod(tf.atan2(dz_east, dz_north) * (180.0 / math.pi) + 180.0, 360.0)
                arrays[ASPECT_BAND] = tf.where(slope < FLAT_SLOPE_EPSILON, tf.fill(tf.shape(aspect), self.flat_aspect_value), aspect)
        nan = tf.math.is_nan(dem)
        for band in (SLOPE_BAND, ASPECT_BAND):
            if band in arrays:
                arrays[band] = tf.where(nan, tf.fill(tf.shape(dem), float("nan")), arrays[band])
        return tf.stack([arrays[b] for b in self.bands], axis=-1)

    def forward(self, input_dict, target_dict):
        if self.skip_missing and not selector_exists(input_dict, target_dict, self.input_selector):
            return input_dict, target_dict
        image = read_selector(input_dict, target_dict, self.input_selector)
        if image.shape[-1] is not None and image.shape[-1] != 1:
            raise ValueError(f"expected a single-channel elevation image, got {image.shape[-1]} channels")
        write_selector(input_dict, target_dict, self.output_selector, self.compute(image[..., 0]))
        return input_dict, target_dict
