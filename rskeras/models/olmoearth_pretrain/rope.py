"""Rotary position embeddings of OlmoEarth's attention (olmoearth_pretrain ``encodings.py``).

Queries and keys ``[B, heads, N, head_dim]`` are rotated pairwise: feature pair
``(x[2i], x[2i+1])`` turns by an angle that depends on the token's coordinates
(``positions`` ``[B, N, 2]`` = (row, col) or ``[B, N, 3]`` = (t, row, col)):

* ``rope`` (2D axial): the first half of head_dim rotates with the row, the second with
  the column, frequencies ``1 / base ** (2k / d)`` of each half;
* ``rope_mixed`` / ``rope_3d_mixed``: learnable frequencies ``freqs`` ``[2 or 3, heads,
  head_dim / 2]``; the angle is ``sum_axis pos_axis * freqs[axis]`` (v1.2's encoder);
* ``rope_3d`` (axial): contiguous chunks (d_t, d_row, d_col) rotate with t, row and col.

Angles are computed in float32 (the package does the same under autocast) and the
rotation in the tensors' dtype.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rskeras.models.olmoearth_pretrain.config import axial_3d_split


def rotate_half(x: tf.Tensor) -> tf.Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``."""
    shape = tf.shape(x)
    pairs = tf.reshape(x, tf.concat([shape[:-1], [-1, 2]], 0))
    even, odd = tf.unstack(pairs, 2, axis=-1)  # unstack/split, not slices: their gradients are one stack/concat
    rotated = tf.stack([-odd, even], axis=-1)
    return tf.reshape(rotated, shape)


def _rotate(x: tf.Tensor, angles: tf.Tensor) -> tf.Tensor:
    cos = tf.cast(tf.repeat(tf.cos(angles), 2, axis=-1), x.dtype)
    sin = tf.cast(tf.repeat(tf.sin(angles), 2, axis=-1), x.dtype)
    return x * cos + rotate_half(x) * sin


def apply_1d_rope(x: tf.Tensor, positions: tf.Tensor, base: float) -> tf.Tensor:
    """1D RoPE on the last axis of ``x`` ``[B, H, N, d]`` with ``positions`` ``[B, 1, N]``."""
    d = x.shape[-1]
    inv_freq = 1.0 / tf.pow(tf.constant(base, tf.float32), tf.range(0, d, 2, dtype=tf.float32) / float(d))
    angles = tf.cast(positions, tf.float32)[..., None] * inv_freq
    return _rotate(x, angles)


def apply_2d_axial_rope(x: tf.Tensor, positions: tf.Tensor, base: float) -> tf.Tensor:
    half = x.shape[-1] // 2
    x_row, x_col = tf.split(x, [half, x.shape[-1] - half], axis=-1)
    row = apply_1d_rope(x_row, positions[:, None, :, 0], base)
    col = apply_1d_rope(x_col, positions[:, None, :, 1], base)
    return tf.concat([row, col], axis=-1)


def apply_3d_axial_rope(x: tf.Tensor, positions: tf.Tensor, base: float, temporal_dim_frac: float, temporal_base: float | None) -> tf.Tensor:
    d_t, d_row, _ = axial_3d_split(x.shape[-1], temporal_dim_frac)
    x_t, x_row, x_col = tf.split(x, [d_t, d_row, x.shape[-1] - d_t - d_row], axis=-1)
    t = apply_1d_rope(x_t, positions[:, None, :, 0], base if temporal_base is None else temporal_base)
    row = apply_1d_rope(x_row, positions[:, None, :, 1], base)
    col = apply_1d_rope(x_col, positions[:, None, :, 2], base)
    return tf.concat([t, row, col], axis=-1)


def apply_mixed_rope(x: tf.Tensor, positions: tf.Tensor, freqs: tf.Tensor) -> tf.Tensor:
    """RoPE-Mixed: ``positions`` ``[B, N, A]``, ``freqs`` ``[A, H, d / 2]`` (A = 2 or 3)."""
    positions = tf.cast(positions, tf.float32)
    freqs = tf.cast(freqs, tf.float32)
    angles = None
    for axis in range(freqs.shape[0]):
        term = positions[:, None, :, axis, None] * freqs[axis][None, :, None, :]
        angles = term if angles is None else angles + term
    return _rotate(x, angles)


def _mixed_magnitudes(head_dim: int, base: float) -> np.ndarray:
    return (1.0 / (base ** (np.arange(0, head_dim, 4, dtype=np.float32) / head_dim))).astype(np.float32)


def init_3d_mixed_rope_freqs(head_dim: int, num_heads: int, base: float, rng: np.random.Generator) -> np.ndarray:
    """``[3, heads, head_dim / 2]``: per head, head_dim / 4 pairs along a random unit
    direction of R^3 and head_dim / 4 along an orthogonal one, magnitudes
    ``1 / base ** (4k / head_dim)`` (olmoearth_pretrain ``init_3d_mixed_rope_freqs``)."""
    mag = _mixed_magnitudes(head_dim, base)
    d1 = rng.standard_normal((num_heads, 3))
    d1 /= np.linalg.norm(d1, axis=-1, keepdims=True)
    v = rng.standard_normal((num_heads, 3))
    v -= (v * d1).sum(-1, keepdims=True) * d1
    d2 = v / np.linalg.norm(v, axis=-1, keepdims=True)
    axes = [np.concatenate([mag[None] * d1[:, a : a + 1], mag[None] * d2[:, a : a + 1]], axis=-1) for a in range(3)]
    return np.stack(axes).astype(np.float32)


def init_2d_mixed_rope_freqs(head_dim: int, num_heads: int, base: float, rng: np.random.Generator) -> np.ndarray:
    """``[2, heads, head_dim / 2]`` (olmoearth_pretrain ``init_2d_mixed_rope_freqs``)."""
    mag = _mixed_magnitudes(head_dim, base)
    angles = rng.uniform(0, 2 * np.pi, (num_heads, 1))
    rows = np.concatenate([mag * np.cos(angles), mag * np.cos(angles + np.pi / 2)], axis=-1)
    cols = np.concatenate([mag * np.sin(angles), mag * np.sin(angles + np.pi / 2)], axis=-1)
    return np.stack([rows, cols]).astype(np.float32)
