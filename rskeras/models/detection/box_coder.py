"""BoxCoder: boxes <-> (dx, dy, dw, dh) regression deltas (R-CNN parameterisation)."""

from __future__ import annotations

import math

import tensorflow as tf

DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes relative to reference boxes and decodes them back.

    For a reference box with centre (cx, cy) and size (w, h) and a target box with
    centre (gx, gy) and size (gw, gh)::

        dx = wx * (gx - cx) / w      dw = ww * log(gw / w)
        dy = wy * (gy - cy) / h      dh = wh * log(gh / h)

    Decoding inverts this, clamping ``dw``/``dh`` (after dividing by the weights) at
    ``bbox_xform_clip`` so that ``exp`` cannot overflow. The arithmetic follows
    torchvision's ``BoxCoder`` operation by operation so that float32 results agree.

    Args:
        weights: ``(wx, wy, ww, wh)``; the RPN uses (1, 1, 1, 1), the RoI heads
            (10, 10, 5, 5).
        bbox_xform_clip: upper bound of the decoded log-scale deltas
            (default ``log(1000 / 16)``).
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = DEFAULT_XFORM_CLIP):
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be 4 positive numbers, got {weights}")
        self.weights = weights
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, reference_boxes: tf.Tensor, proposals: tf.Tensor) -> tf.Tensor:
        """Deltas that move ``proposals`` onto ``reference_boxes`` (both ``[..., 4]``)."""
        wx, wy, ww, wh = self.weights
        ex_widths = proposals[..., 2] - proposals[..., 0]
        ex_heights = proposals[..., 3] - proposals[..., 1]
        ex_ctr_x = proposals[..., 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[..., 1] + 0.5 * ex_heights

        gt_widths = reference_boxes[..., 2] - reference_boxes[..., 0]
        gt_heights = reference_boxes[..., 3] - reference_boxes[..., 1]
        gt_ctr_x = reference_boxes[..., 0] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[..., 1] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * tf.math.log(gt_widths / ex_widths)
        dh = wh * tf.math.log(gt_heights / ex_heights)
        return tf.stack([dx, dy, dw, dh], axis=-1)

    def decode(self, deltas: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
        """Applies ``deltas`` ``[..., 4]`` to ``boxes`` ``[..., 4]`` (broadcasting) ->
        ``[..., 4]`` boxes."""
        wx, wy, ww, wh = self.weights
        boxes = tf.cast(boxes, deltas.dtype)
        widths = boxes[..., 2] - boxes[..., 0]
        heights = boxes[..., 3] - boxes[..., 1]
        ctr_x = boxes[..., 0] + 0.5 * widths
        ctr_y = boxes[..., 1] + 0.5 * heights

        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = tf.minimum(deltas[..., 2] / ww, self.bbox_xform_clip)
        dh = tf.minimum(deltas[..., 3] / wh, self.bbox_xform_clip)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = tf.exp(dw) * widths
        pred_h = tf.exp(dh) * heights
        half_w = 0.5 * pred_w
        half_h = 0.5 * pred_h
        return tf.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1)
