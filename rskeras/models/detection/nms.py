"""Per-image, per-group non-maximum suppression with fixed-size outputs.

torchvision's ``batched_nms`` suppresses boxes only within the same group (feature level
for RPN proposals, class for detections) by shifting every group to its own region of
the plane: ``boxes + group * (max_coordinate + 1)``, then running one NMS. rskeras does
the same per image (so the float32 IoUs are the ones torchvision computes on CPU), with
TF's ``NonMaxSuppressionV5`` padded to a fixed output size: a TFLite builtin
(NON_MAX_SUPPRESSION_V5), unlike ``combined_non_max_suppression``.

Suppression is greedy in descending score order and drops a box when its IoU with a
kept box is strictly greater than the threshold, as in torchvision.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

def map_images(fn: Callable, elems: tuple, out_signature) -> tuple:
    """Applies ``fn`` to each image of batched ``elems``; unrolled when the batch size is
    static (plain ops, friendly to TFLite), ``tf.map_fn`` otherwise."""
    batch = elems[0].shape[0]
    if batch is not None:
        outs = [fn(tuple(e[i] for e in elems)) for i in range(batch)]
        return tuple(tf.stack([o[j] for o in outs]) for j in range(len(out_signature)))
    return tf.map_fn(fn, elems, fn_output_signature=out_signature)


def batched_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    groups: tf.Tensor,
    valid: tf.Tensor,
    iou_threshold: float,
    max_output_size: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """NMS per image and per group.

    Args:
        boxes: ``[B, N, 4]`` xyxy.
        scores: ``[B, N]``.
        groups: ``[B, N]`` int; boxes of different groups never suppress each other.
        valid: ``[B, N]`` bool; invalid boxes are ignored.
        iou_threshold: float.
        max_output_size: int, K.

    Returns:
        ``indices`` ``[B, K]`` int32 into N, sorted by descending score (padding 0), and
        ``count`` ``[B]`` int32, the number of kept boxes per image.
    """
    valid = tf.cast(valid, tf.bool)

    def one_image(args):
        b, s, g, v = args
        b = tf.where(v[:, None], b, 0.0)
        max_coordinate = tf.reduce_max(b)
        offsets = tf.cast(g, b.dtype) * (max_coordinate + 1.0)
        shifted = b + offsets[:, None]
        # Invalid boxes get a score below the threshold, itself below every valid score (strict
        # or not, as in TF and TFLite): every tensor stays finite, which an int8 calibration
        # needs (-inf ranges crash TFLite's quantizer).
        threshold = tf.reduce_min(s) - 1.0
        s = tf.where(v, s, threshold - 1.0)
        idx, _, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=shifted,
            scores=s,
            max_output_size=tf.constant(max_output_size, tf.int32),
            iou_threshold=tf.constant(iou_threshold, tf.float32),
            score_threshold=threshold,
            soft_nms_sigma=tf.constant(0.0, tf.float32),
            pad_to_max_output_size=True,
        )
        return tf.cast(idx, tf.int32), tf.cast(count, tf.int32)

    signature = (tf.TensorSpec([max_output_size], tf.int32), tf.TensorSpec([], tf.int32))
    return map_images(one_image, (boxes, scores, groups, valid), signature)
