"""Antialiased bicubic resizing with torch's weights, as two matrix products.

OlmoEarth's FlexiPatchEmbed resizes its input with
``F.interpolate(x, size, mode="bicubic", antialias=True)`` when the requested patch size
differs from the embedding's base patch size (8): an image of H x W pixels becomes
``(H // p * 8) x (W // p * 8)`` so that 8 x 8 base patches cover it. torch's antialiased
bicubic is PIL's: Keys' cubic with a = -0.5, its support widened by the scale when
downsampling, weights truncated at the image border and renormalised to sum to 1. It is
separable, so the resize is ``Wh @ X @ Ww^T`` with the weight matrices of
:func:`aa_bicubic_matrix`: exact weights, static shapes and only MatMul ops (TFLite
builtins).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

_A = -0.5


def _cubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * _A
    return 0.0


def aa_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` float32 weights of torch's antialiased bicubic resize
    along one axis (``align_corners=False``, output size given)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be >= 1, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), in_size) - xmin
        weights = np.array([_cubic((j + xmin - center + 0.5) * invscale) for j in range(max(xsize, 0))])
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        out[i, xmin : xmin + len(weights)] = weights
    return out.astype(np.float32)


def aa_bicubic_matrix_tf(in_size, out_size) -> tf.Tensor:
    """:func:`aa_bicubic_matrix` for sizes known only at run time (float32 graph ops)."""
    in_f = tf.cast(in_size, tf.float32)
    out_f = tf.cast(out_size, tf.float32)
    scale = in_f / out_f
    up = scale < 1.0
    support = tf.where(up, 2.0, 2.0 * scale)
    invscale = tf.where(up, 1.0, 1.0 / scale)
    center = scale * (tf.cast(tf.range(out_size), tf.float32) + 0.5)[:, None]  # [out, 1]
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # truncation, as C++
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), tf.cast(in_size, tf.int32))
    j = tf.range(in_size)[None, :]
    x = tf.abs((tf.cast(j, tf.float32) - center + 0.5) * invscale)
    a = _A
    w = tf.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0, tf.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))
    w = tf.where((j >= xmin) & (j < xmax), w, 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    return tf.where(total != 0.0, w / tf.where(total != 0.0, total, 1.0), w)


def resize_aa_bicubic(x: tf.Tensor, out_h, out_w) -> tf.Tensor:
    """``[N, H, W, C]`` -> ``[N, out_h, out_w, C]`` (float32 math); weights are constants
    when the sizes are static, computed in the graph otherwise."""
    h, w = x.shape[1], x.shape[2]
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    static = all(isinstance(v, int) for v in (h, w, out_h, out_w))
    if static and (h, w) == (out_h, out_w):
        return tf.cast(x, dtype)
    if static:
        wh, ww = tf.constant(aa_bicubic_matrix(h, out_h)), tf.constant(aa_bicubic_matrix(w, out_w))
    else:
        shape = tf.shape(x)
        wh, ww = aa_bicubic_matrix_tf(shape[1], out_h), aa_bicubic_matrix_tf(shape[2], out_w)
    y = tf.einsum("pw,nhwc->nhpc", ww, x)
    y = tf.einsum("oh,nhpc->nopc", wh, y)
    return tf.cast(y, dtype)
