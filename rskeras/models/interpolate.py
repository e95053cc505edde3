"""``torch.nn.functional.interpolate`` semantics for NHWC tensors.

* ``nearest`` is torch's legacy nearest: source index ``min(floor(dst * in / out), in - 1)``
  computed in float32 (TF's ``tf.image.resize(method="nearest")`` uses half-pixel centres
  and picks different pixels for non-integer ratios). It is pure data movement written so
  that XLA compiles it and its gradient (TF's ``ResizeNearestNeighborGrad`` has no XLA
  kernel): with static sizes the indices are computed once in NumPy, and an integer
  upsampling factor (UNet's and Fpn's x2) is a broadcast + reshape in the trainer's XLA
  and GPU steps (gradient: a sum over the repeated pixels) and TF's legacy nearest resize
  elsewhere, the trainer's CPU steps included (its CPU gradient is faster; the
  same pixels; in TFLite one ``RESIZE_NEAREST_NEIGHBOR``, which XNNPACK runs, where the
  broadcast is a ``BROADCAST_TO`` it does not: see ``rskeras.models.step_graph``), an
  integer downsampling factor a strided slice, any other ratio
  a ``gather`` of constant rows/columns; with dynamic sizes the same float32 indices are
  computed in the graph and gathered. All are TFLite builtins.
* ``bilinear`` is ``align_corners=False`` without antialiasing (also when downsampling):
  source coordinate ``(dst + 0.5) * in / out - 0.5`` clamped at 0, which is what
  ``tf.image.resize(method="bilinear", antialias=False)`` computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from rskeras.models.shapes import spatial_size
from rskeras.models.step_graph import in_trainer_step, in_xla_step
from rskeras.utils.devices import gpu_visible

MODES = ("nearest", "bilinear")


def check_mode(mode: str, component: str) -> str:
    """Validates an interpolation mode name."""
    if mode not in MODES:
        raise ValueError(f"{component}: mode must be one of {MODES}, got {mode!r}")
    return mode


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """torch's legacy nearest source indices ``min(floor(dst * (in / out)), in - 1)``, with the
    scale and the product in float32 exactly as torch's and TF's kernels compute them."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    return np.minimum(np.floor(dst * scale), in_size - 1).astype(np.int64)


def resize_nearest(x: tf.Tensor, size: Any) -> tf.Tensor:
    """torch ``F.interpolate(x, size, mode="nearest")`` on ``[B, H, W, C]`` (XLA-friendly)."""
    if _same_static_size(x, size):
        return x
    h, w = spatial_size(x)
    out_h, out_w = size[0], size[1]
    static = all(isinstance(v, (int, np.integer)) for v in (h, w, out_h, out_w))
    if static:
        fh, fw = _repeat_factor(int(h), int(out_h)), _repeat_factor(int(w), int(out_w))
        if fh and fw:
            return _repeat_2d(x, fh, fw)
        return _nearest_axis(_nearest_axis(x, 1, int(h), int(out_h)), 2, int(w), int(out_w))
    return _dynamic_nearest_axis(_dynamic_nearest_axis(x, 1, h, out_h), 2, w, out_w)


def _repeat_factor(in_size: int, out_size: int) -> int | None:
    """k when the legacy-nearest indices of in -> out are ``dst // k`` (upsampling by k)."""
    if out_size % in_size:
        return None
    k = out_size // in_size
    return k if np.array_equal(nearest_indices(in_size, out_size), np.arange(out_size) // k) else None


def _repeat_2d(x: tf.Tensor, fh: int, fw: int) -> tf.Tensor:
    """Every pixel repeated fh x fw times: ``[B, H, W, C]`` -> ``[B, H*fh, W*fw, C]``."""
    if fh == 1 and fw == 1:
        return x
    h, w = x.shape[1], x.shape[2]
    if not (in_xla_step() or (in_trainer_step() and gpu_visible())):
        # Legacy nearest (no half-pixel centres): source index floor(dst * in / out) = dst // f.
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=[h * fh, w * fw], align_corners=False, half_pixel_centers=False)
    # XLA (no ResizeNearestNeighborGrad kernel) and GPUs (whose resize gradient is not
    # deterministic): the repeat as a broadcast, whose gradient is a sum.
    shape = tf.shape(x)
    b = x.shape[0] if x.shape[0] is not None else shape[0]
    c = x.shape[3] if x.shape[3] is not None else shape[3]
    y = tf.reshape(x, [b, h, 1, w, 1, c])
    y = tf.broadcast_to(y, [b, h, fh, w, fw, c])
    return tf.reshape(y, [b, h * fh, w * fw, c])


def _nearest_axis(x: tf.Tensor, axis: int, in_size: int, out_size: int) -> tf.Tensor:
    """Legacy-nearest resize of one spatial axis with static sizes."""
    if in_size == out_size:
        return x
    idx = nearest_indices(in_size, out_size)
    k = _repeat_factor(in_size, out_size)
    if k:
        return _repeat_2d(x, k, 1) if axis == 1 else _repeat_2d(x, 1, k)
    step = in_size // out_size if out_size < in_size else 0
    if step and np.array_equal(idx, np.arange(out_size) * step):
        end = out_size * step
        return x[:, :end:step] if axis == 1 else x[:, :, :end:step]
    return tf.gather(x, tf.constant(idx, tf.int32), axis=axis)


def _dynamic_nearest_axis(x: tf.Tensor, axis: int, in_size: Any, out_size: Any) -> tf.Tensor:
    """Legacy-nearest resize of one spatial axis whose sizes are only known at run time."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    dst = tf.cast(tf.range(out_size), tf.float32)
    idx = tf.minimum(tf.cast(tf.floor(dst * scale), tf.int32), tf.cast(in_size, tf.int32) - 1)
    return tf.gather(x, idx, axis=axis)


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
