"""AdaptivePooling: adaptive max/mean pooling of images to a fixed size."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.transform import Transform


def _pool_axis(x: tf.Tensor, axis: int, out_size: int, pooling: str) -> tf.Tensor:
    """Adaptive pooling along one axis: bin i covers ``[floor(i*n/out), ceil((i+1)*n/out))``
    (torch's adaptive pooling bins)."""
    n = tf.shape(x)[axis]
    reduce = tf.reduce_max if pooling == "max" else tf.reduce_mean
    parts = []
    for i in range(out_size):
        start = (i * n) // out_size
        end = ((i + 1) * n + out_size - 1) // out_size
        part = tf.gather(x, tf.range(start, end), axis=axis)
        parts.append(reduce(part, axis=axis, keepdims=True))
    return tf.concat(parts, axis=axis)


class AdaptivePooling(Transform):
    """Pools each channel/timestep plane to ``target_size`` with adaptive max or mean
    pooling (torch's bin boundaries; pooling is separable, so rows then columns).

    Args:
        target_size: ``[height, width]``.
        selectors: items to pool (default []).
        pooling: "max" (default; keeps the dtype) or "mean" (float32 for integer input).
        skip_missing: skip missing selectors.

    Call-time: ``[..., H, W, C]`` -> ``[..., height, width, C]``.
    """

    def __init__(self, target_size: list[int], selectors: list[str] | None = None, pooling: str = "max", skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        if pooling not in ("max", "mean"):
            raise ValueError(f"Unsupported pooling mode {pooling!r}")
        if len(target_size) != 2 or min(target_size) <= 0:
            raise ValueError(f"AdaptivePooling: target_size must be [height, width] with positive values, got {target_size!r}")
        self.target_size = (int(target_size[0]), int(target_size[1]))
        self.selectors = list(selectors or [])
        self.pooling = pooling

    def apply_image(self, image: tf.Tensor) -> tf.Tensor:
        rank = image.shape.rank
        x = image if self.pooling == "max" or image.dtype.is_floating else tf.cast(image, tf.float32)
        x = _pool_axis(x, rank - 3, self.target_size[0], self.pooling)
        return _pool_axis(x, rank - 2, self.target_size[1], self.pooling)

    def forward(self, input_dict, target_dict):
        self.apply_fn(self.apply_image, input_dict, target_dict, self.selectors)
        return input_dict, target_dict
