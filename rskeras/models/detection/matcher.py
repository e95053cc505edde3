"""Matcher: assigns each prediction (anchor/proposal) at most one ground-truth box."""

from __future__ import annotations

import tensorflow as tf

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class Matcher:
    """IoU-based matching (torchvision ``det_utils.Matcher``), batched and padded.

    For each prediction the best ground truth (first one on ties) is its match when the
    IoU is ``>= high_threshold``; below ``low_threshold`` the prediction gets
    ``BELOW_LOW_THRESHOLD`` (-1, background) and in between ``BETWEEN_THRESHOLDS`` (-2,
    ignored). With ``allow_low_quality_matches`` every prediction that attains some
    ground truth's highest IoU (ties included) keeps its best match even below the
    threshold.

    Args:
        high_threshold: float, IoU of a positive match.
        low_threshold: float, IoU under which a prediction is background.
        allow_low_quality_matches: bool (default False).

    Call: ``matcher(quality, gt_valid)`` with ``quality`` ``[B, G, N]`` (IoU of ground
    truth g with prediction n) and ``gt_valid`` ``[B, G]`` bool (padding is False)
    returns ``[B, N]`` int32 matches. An image without valid ground truth gets
    ``BELOW_LOW_THRESHOLD`` everywhere (torchvision's all-background path).
    """

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, quality: tf.Tensor, gt_valid: tf.Tensor) -> tf.Tensor:
        gt_valid = tf.cast(gt_valid, tf.bool)
        # Padding rows can never be the best match of anything (IoU >= 0 > -1).
        quality = tf.where(gt_valid[:, :, None], quality, -1.0)
        matched_vals = tf.reduce_max(quality, axis=1)
        all_matches = tf.argmax(quality, axis=1, output_type=tf.int32)
        matches = tf.where(matched_vals < self.low_threshold, BELOW_LOW_THRESHOLD, all_matches)
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches = tf.where(between, BETWEEN_THRESHOLDS, matches)
        if self.allow_low_quality_matches:
            highest_per_gt = tf.reduce_max(quality, axis=2, keepdims=True)
            is_best = (quality == highest_per_gt) & gt_valid[:, :, None]
            matches = tf.where(tf.reduce_any(is_best, axis=1), all_matches, matches)
        return matches
