"""``torch.nn.functional.interpolate`` semantics for NHWC tensors.

* ``nearest`` is torch's legacy nearest: source index ``min(floor(dst * in / out), in - 1)``
  computed in float32. TF's ``tf.image.resize(method="nearest")`` uses half-pixel centres
  and picks different pixels for non-integer ratios; the ``ResizeNearestNeighbor`` kernel
  with ``half_pixel_centers=False, align_corners=False`` computes exactly torch's formula
  (and converts to the TFLite builtin RESIZE_NEAREST_NEIGHBOR).
* ``bilinear`` is ``align_corners=False`` without antialiasing (also when downsampling):
  source coordinate ``(dst + 0.5) * in / out - 0.5`` clamped at 0, which is what
  ``tf.image.resize(method="bilinear", antialias=False)`` computes.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from rskeras.models.shapes import spatial_size

MODES = ("nearest", "bilinear")


def check_mode(mode: str, component: str) -> str:
    """Validates an interpolation mode name."""
    if mode not in MODES:
        raise ValueError(f"{component}: mode must be one of {MODES}, got {mode!r}")
    return mode


def resize_nearest(x: tf.Tensor, size: Any) -> tf.Tensor:
    """torch ``F.interpolate(x, size, mode="nearest")`` on ``[B, H, W, C]``."""
    if _same_static_size(x, size):
        return x
    size = tf.cast(tf.stack([size[0], size[1]]), tf.int32)
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False, half_pixel_centers=False)


def resize_bilinear(x: tf.Tensor, size: Any) -> tf.Tensor:
    """torch ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` on ``[B, H, W, C]``."""
    if _same_static_size(x, size):
        return x
    out = tf.image.resize(x, size, method="bilinear", antialias=False)
    return tf.cast(out, x.dtype)


def resize(x: tf.Tensor, size: Any, mode: str) -> tf.Tensor:
    """Resizes ``[B, H, W, C]`` to ``size`` = (h, w) with torch semantics."""
    if mode == "nearest":
        return resize_nearest(x, size)
    if mode == "bilinear":
        return resize_bilinear(x, size)
    raise ValueError(f"unknown interpolation mode {mode!r}; expected one of {MODES}")


def scaled_size(x: tf.Tensor, scale_factor: Any) -> tuple[Any, Any]:
    """torch's output size for ``scale_factor``: floor(size * factor)."""
    h, w = spatial_size(x)
    sh, sw = (scale_factor, scale_factor) if not isinstance(scale_factor, (list, tuple)) else scale_factor
    if isinstance(h, int) and isinstance(w, int):
        return int(h * sh // 1), int(w * sw // 1)
    h = tf.cast(tf.floor(tf.cast(h, tf.float64) * sh), tf.int32)
    w = tf.cast(tf.floor(tf.cast(w, tf.float64) * sw), tf.int32)
    return h, w


def _same_static_size(x: tf.Tensor, size: Any) -> bool:
    h, w = x.shape[1], x.shape[2]
    return isinstance(size[0], int) and isinstance(size[1], int) and h == size[0] and w == size[1]
