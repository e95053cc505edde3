"""Losses shared by the RPN and the RoI heads."""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth-L1 of ``diff``: ``0.5 * d**2 / beta`` where ``|d| < beta``,
    else ``|d| - 0.5 * beta`` (torch ``F.smooth_l1_loss`` with ``reduction="none"``)."""
    n = tf.abs(diff)
    return tf.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta)
