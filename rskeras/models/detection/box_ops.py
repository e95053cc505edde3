"""Elementary operations on ``(x1, y1, x2, y2)`` boxes (torchvision.ops.boxes semantics).

Boxes are float32 tensors whose last axis holds ``x1, y1, x2, y2`` in pixels; every
function broadcasts over leading (batch) axes.
"""

from __future__ import annotations

import tensorflow as tf


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """``(x2 - x1) * (y2 - y1)`` of ``[..., 4]`` boxes -> ``[...]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: ``[..., N, 4]``.
        boxes2: ``[..., M, 4]`` (same leading axes as ``boxes1``, or none).

    Returns:
        ``[..., N, M]``; 0 where the union is empty (torchvision would give NaN there,
        which only happens for two zero-area boxes, i.e. padding).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    left_top = tf.maximum(a[..., :2], b[..., :2])
    right_bottom = tf.minimum(a[..., 2:], b[..., 2:])
    wh = tf.maximum(right_bottom - left_top, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def clip_boxes_to_image(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Clamps x to ``[0, width]`` and y to ``[0, height]``."""
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    x1 = tf.clip_by_value(boxes[..., 0], 0.0, width)
    y1 = tf.clip_by_value(boxes[..., 1], 0.0, height)
    x2 = tf.clip_by_value(boxes[..., 2], 0.0, width)
    y2 = tf.clip_by_value(boxes[..., 3], 0.0, height)
    return tf.stack([x1, y1, x2, y2], axis=-1)


def large_enough(boxes: tf.Tensor, min_size: float) -> tf.Tensor:
    """Mask of boxes whose width and height are both ``>= min_size``
    (torchvision ``remove_small_boxes`` as a mask)."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return (widths >= min_size) & (heights >= min_size)
