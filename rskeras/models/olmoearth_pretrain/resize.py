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


def resize_aa_bicubic(x: tf.Tensor, out_h: int, out_w: int) -> tf.Tensor:
    """``[N, H, W, C]`` (static H, W) -> ``[N, out_h, out_w, C]`` (float32 math)."""
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        raise ValueError("the patch-size resize needs a static input height and width")
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    if (h, w) == (out_h, out_w):
        return tf.cast(x, dtype)
    wh = tf.constant(aa_bicubic_matrix(h, out_h))
    ww = tf.constant(aa_bicubic_matrix(w, out_w))
    y = tf.einsum("pw,nhwc->nhpc", ww, x)
    y = tf.einsum("oh,nhpc->nopc", wh, y)
    return tf.cast(y, dtype)
