"""AnchorGenerator: the anchor boxes of every feature level (torchvision semantics)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors of one level, ``[len(aspect_ratios) * len(sizes), 4]`` float32.

    For ratio r and size s: ``h = s * sqrt(r)``, ``w = s / sqrt(r)``, box
    ``round([-w/2, -h/2, w/2, h/2])`` (round half to even). Order: ratio-major, size-minor.
    Computed in float32 exactly as torchvision does, so the rounding agrees.
    """
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1.0) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    anchors = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)
    return np.round(anchors).astype(np.float32)


class AnchorGenerator:
    """Anchors for a list of feature levels.

    Level ``l`` has ``len(sizes[l]) * len(aspect_ratios[l])`` anchors per location. The
    anchors of a level are the base anchors shifted to ``(x * stride_x, y * stride_y)``
    for every feature cell, with ``stride = image_size // feature_size`` (integer
    division, as in torchvision), ordered location-major (row y, then column x) and
    anchor-minor: exactly the order of the RPN head outputs flattened as ``(H, W, A)``.

    Args:
        sizes: one sequence of anchor sizes (pixels) per level, e.g. ``[[32], [64]]``.
        aspect_ratios: one sequence of height/width ratios per level (default
            ``(0.5, 1.0, 2.0)`` for every level).
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]] | None = None):
        sizes = [list(s) for s in sizes]
        if not sizes or any(len(s) == 0 for s in sizes):
            raise ValueError(f"AnchorGenerator: sizes must be a non-empty list of non-empty lists, got {sizes}")
        if aspect_ratios is None:
            aspect_ratios = [(0.5, 1.0, 2.0)] * len(sizes)
        aspect_ratios = [list(r) for r in aspect_ratios]
        if len(aspect_ratios) != len(sizes):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} levels of sizes but {len(aspect_ratios)} levels of aspect_ratios"
            )
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [base_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(a) for a in self.cell_anchors]

    def level_anchors(self, level: int, feature_size, image_size) -> tf.Tensor:
        """Anchors of one level, ``[H * W * A, 4]`` float32.

        Args:
            level: level index.
            feature_size: ``(H, W)`` of the feature map (ints or scalar tensors).
            image_size: ``(height, width)`` of the (padded) image (ints or tensors).
        """
        height, width = feature_size
        stride_y = image_size[0] // height
        stride_x = image_size[1] // width
        shifts_x = tf.cast(tf.range(width) * stride_x, tf.float32)
        shifts_y = tf.cast(tf.range(height) * stride_y, tf.float32)
        grid_x = tf.broadcast_to(shifts_x[None, :], tf.stack([height, width]))
        grid_y = tf.broadcast_to(shifts_y[:, None], tf.stack([height, width]))
        shifts = tf.reshape(tf.stack([grid_x, grid_y, grid_x, grid_y], axis=-1), [-1, 1, 4])
        cell = tf.constant(self.cell_anchors[level])[None, :, :]
        return tf.reshape(shifts + cell, [-1, 4])

    def __call__(self, feature_sizes, image_size) -> list[tf.Tensor]:
        """Anchors of every level: list of ``[H_l * W_l * A_l, 4]``."""
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(
                f"AnchorGenerator: got {len(feature_sizes)} feature maps for {len(self.cell_anchors)} anchor levels"
            )
        return [self.level_anchors(i, fs, image_size) for i, fs in enumerate(feature_sizes)]
