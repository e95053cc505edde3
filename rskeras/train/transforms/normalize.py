"""Normalize: ``(x - mean) / std`` with optional per-band selection and clamping."""

from __future__ import annotations

import warnings

import tensorflow as tf

from rskeras.train.transforms.transform import Transform


class Normalize(Transform):
    """Normalizes images ``[T, H, W, C]``: ``(x - mean) / std``, then an optional clamp.

    Call-time: each selected item is a ``[T, H, W, C]`` (or any channels-last) tensor;
    the output has the same shape, float32.

    Args:
        mean: one value, or one value per channel (per selected band with ``bands``).
        std: like ``mean``.
        valid_range: optional ``[min, max]`` clamp after normalizing; per-band lists clamp
            per channel (intended behaviour; rslearn broadcasts list bounds against the
            width axis, a quirk not reproduced).
        selectors: images to normalize (default ["image"]).
        bands: only normalize these channel indexes (others unchanged).
        num_bands: deprecated, ignored.
        skip_missing: skip selectors that do not exist.

    Integer images become float32, also with ``bands`` (rslearn writes the normalized
    values back into the integer tensor in that case, which truncates them; rskeras keeps
    them as float).
    """

    def __init__(
        self,
        mean: float | list[float],
        std: float | list[float],
        valid_range: list[float] | list[list[float]] | None = None,
        selectors: list[str] | None = None,
        bands: list[int] | None = None,
        num_bands: int | None = None,
        skip_missing: bool = False,
    ):
        super().__init__(skip_missing=skip_missing)
        if num_bands is not None:
            warnings.warn("Normalize.num_bands is deprecated and ignored", FutureWarning, stacklevel=2)
        self.mean = mean
        self.std = std
        self.selectors = list(selectors) if selectors is not None else ["image"]
        self.bands = list(bands) if bands is not None else None
        if self.bands is not None:
            for name, v in (("mean", mean), ("std", std)):
                if isinstance(v, (list, tuple)) and len(v) != len(self.bands):
                    raise ValueError(f"Normalize: {name} has {len(v)} values but bands has {len(self.bands)}")
        valid_range = valid_range or None  # rslearn ignores an empty range
        self.valid_range = valid_range
        if valid_range is not None and len(valid_range) != 2:
            raise ValueError(f"Normalize: valid_range must be [min, max], got {valid_range}")

    def apply_image(self, image: tf.Tensor) -> tf.Tensor:
        x = tf.cast(image, tf.float32)
        mean = tf.constant(self.mean, tf.float32)
        std = tf.constant(self.std, tf.float32)
        if self.bands is None:
            y = (x - mean) / std
            if self.valid_range is not None:
                y = tf.clip_by_value(y, tf.constant(self.valid_range[0], tf.float32), tf.constant(self.valid_range[1], tf.float32))
            return y
        num_channels = x.shape[-1]
        if num_channels is None:
            raise ValueError("Normalize with bands needs a known number of channels")
        sel = tf.gather(x, self.bands, axis=-1)
        sel = (sel - mean) / std
        if self.valid_range is not None:
            sel = tf.clip_by_value(sel, tf.constant(self.valid_range[0], tf.float32), tf.constant(self.valid_range[1], tf.float32))
        # Scatter the normalized channels back.
        channels = [x[..., c : c + 1] for c in range(num_channels)]
        for j, band in enumerate(self.bands):
            channels[band] = sel[..., j : j + 1]
        return tf.concat(channels, axis=-1)

    def forward(self, input_dict, target_dict):
        self.apply_fn(self.apply_image, input_dict, target_dict, self.selectors)
        return input_dict, target_dict
