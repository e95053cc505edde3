"""Resize: resize images to a fixed size with torchvision's semantics."""

from __future__ import annotations

import tensorflow as tf

from rskeras.train.transforms.transform import Transform

INTERPOLATIONS = ("nearest", "nearest_exact", "bilinear", "bicubic")


def nearest_indices(in_size: tf.Tensor, out_size: int, exact: bool) -> tf.Tensor:
    """Source indices of torch's nearest (``floor(dst * in/out)``) or nearest-exact
    (``floor((dst + 0.5) * in/out)``) resampling, computed in float32 as torch does."""
    in_f = tf.cast(in_size, tf.float32)
    scale = in_f / tf.constant(float(out_size), tf.float32)
    dst = tf.range(out_size, dtype=tf.float32)
    if exact:
        dst = dst + 0.5
    idx = tf.cast(tf.floor(dst * scale), tf.int32)
    return tf.minimum(idx, tf.cast(in_size, tf.int32) - 1)


def resize_image(image: tf.Tensor, size: tuple[int, int], interpolation: str) -> tf.Tensor:
    """Resizes the last-but-one two axes of ``[..., H, W, C]`` to ``size`` (h, w).

    nearest / nearest_exact gather source pixels with torch's index rules (dtype kept);
    bilinear / bicubic use ``tf.image.resize(antialias=True)``, which equals torch's
    antialiased kernels (torchvision's default for tensors) within float32 rounding
    (max abs difference ~1e-6 on unit-variance inputs, up- and downsampling). Integer
    images are interpolated in float32, rounded and cast back, as torchvision does.
    """
    if interpolation in ("nearest", "nearest_exact"):
        shape = tf.shape(image)
        exact = interpolation == "nearest_exact"
        rows = nearest_indices(shape[-3], size[0], exact)
        cols = nearest_indices(shape[-2], size[1], exact)
        rank = image.shape.rank
        out = tf.gather(image, rows, axis=rank - 3)
        return tf.gather(out, cols, axis=rank - 2)
    rank = image.shape.rank
    x = image
    if rank != 4:
        lead = tf.shape(image)[:-3]
        x = tf.reshape(image, tf.concat([[-1], tf.shape(image)[-3:]], 0))
    y = tf.image.resize(tf.cast(x, tf.float32), size, method=interpolation, antialias=True)
    if rank != 4:
        y = tf.reshape(y, tf.concat([lead, tf.constant(size), tf.shape(y)[-1:]], 0))
    if image.dtype.is_floating:
        return tf.cast(y, image.dtype)
    return tf.cast(tf.round(y), image.dtype)


class Resize(Transform):
    """Resizes the selected images to ``target_size``.

    Args:
        target_size: ``[height, width]``.
        selectors: items to resize (default [] = no-op, as in rslearn).
        interpolation: "nearest" (default), "nearest_exact", "bilinear" or "bicubic".
        skip_missing: skip missing selectors.

    Call-time: ``[..., H, W, C]`` -> ``[..., height, width, C]``.
    """

    def __init__(self, target_size: list[int], selectors: list[str] | None = None, interpolation: str = "nearest", skip_missing: bool = False):
        super().__init__(skip_missing=skip_missing)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"Resize: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if len(target_size) != 2 or min(target_size) <= 0:
            raise ValueError(f"Resize: target_size must be [height, width] with positive values, got {target_size!r}")
        self.target_size = (int(target_size[0]), int(target_size[1]))
        self.selectors = list(selectors or [])
        self.interpolation = interpolation

    def apply_image(self, image: tf.Tensor) -> tf.Tensor:
        return resize_image(image, self.target_size, self.interpolation)

    def forward(self, input_dict, target_dict):
        self.apply_fn(self.apply_image, input_dict, target_dict, self.selectors)
        return input_dict, target_dict
