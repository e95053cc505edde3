"""Keras metrics shared by tasks.

Metrics accumulate integer-valued state (counts) in variables that Keras creates with SUM
aggregation, so under ``tf.distribute`` the per-replica states are summed when the result
is read. ``update_state(outputs, targets)`` receives a task's batch outputs and its
batched target dict; each task wraps its tensors into the form these metrics take.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates a ``[num_classes, num_classes]`` confusion matrix (rows = label,
    columns = prediction) over valid examples/pixels.

    ``update_state(pred_ids, labels, valid)`` takes flat int tensors and a flat mask.
    Subclasses turn the matrix into scores.
    """

    def __init__(self, num_classes: int, name: str = "confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float64", name="matrix"
        )

    def update_counts(self, pred_ids, labels, valid):
        pred_ids = tf.reshape(tf.cast(pred_ids, tf.int32), [-1])
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        valid = tf.reshape(tf.cast(valid, tf.float64) > 0, [-1])
        pred_ids = tf.boolean_mask(pred_ids, valid)
        labels = tf.boolean_mask(labels, valid)
        cm = tf.math.confusion_matrix(labels, pred_ids, num_classes=self.num_classes, dtype=tf.float64)
        self.matrix.assign_add(cm)

    def update_state(self, pred_ids, labels, valid=None):
        if valid is None:
            valid = tf.ones_like(labels, tf.float32)
        self.update_counts(pred_ids, labels, valid)

    def result(self):
        return self.matrix

    def counts(self):
        """(tp, fp, fn) per class, float64."""
        m = tf.convert_to_tensor(self.matrix)
        tp = tf.linalg.diag_part(m)
        fp = tf.reduce_sum(m, axis=0) - tp
        fn = tf.reduce_sum(m, axis=1) - tp
        return tp, fp, fn

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))


def safe_divide(num, den):
    """num / den, 0 where den == 0 (torchmetrics' zero_division=0)."""
    return tf.where(den > 0, num / tf.where(den > 0, den, tf.ones_like(den)), tf.zeros_like(num))


def multiclass_accuracy(tp, fp, fn, average: str = "macro"):
    """torchmetrics MulticlassAccuracy from per-class counts.

    macro: mean over classes with tp+fp+fn > 0 of tp/(tp+fn); micro: Σtp / Σ(tp+fn).
    """
    if average == "micro":
        return safe_divide(tf.reduce_sum(tp), tf.reduce_sum(tp + fn))
    if average in ("macro", "weighted"):
        recall = safe_divide(tp, tp + fn)
        present = tf.cast(tp + fp + fn > 0, tf.float64)
        if average == "weighted":
            weights = tp + fn
            return safe_divide(tf.reduce_sum(recall * weights), tf.reduce_sum(weights))
        return safe_divide(tf.reduce_sum(recall * present), tf.reduce_sum(present))
    raise ValueError(f"unsupported accuracy average {average!r} (use 'macro', 'micro' or 'weighted')")


class MulticlassAccuracy(ConfusionMatrix):
    """Multiclass accuracy with torchmetrics' averaging (default macro).

    Args:
        num_classes: number of classes.
        average: "macro" (default, per-class recall averaged over classes seen in labels
            or predictions), "micro" (plain accuracy) or "weighted".
    """

    def __init__(self, num_classes: int, average: str = "macro", name: str = "accuracy", **kwargs):
        super().__init__(num_classes, name=name)
        if average not in ("macro", "micro", "weighted"):
            raise ValueError(f"unsupported accuracy average {average!r} (use 'macro', 'micro' or 'weighted')")
        self.average = average
        unknown = set(kwargs) - {"num_classes", "top_k", "multidim_average"}
        if unknown:
            raise ValueError(f"unsupported MulticlassAccuracy arguments: {sorted(unknown)}")

    def result(self):
        tp, fp, fn = self.counts()
        return tf.cast(multiclass_accuracy(tp, fp, fn, self.average), tf.float32)


def flatten_metric_results(results: dict[str, Any]) -> dict[str, Any]:
    """Flattens dict-valued metric results the way torchmetrics' MetricCollection does.

    A dict result contributes its keys directly; if any key collides with another dict
    key or with a metric name, *every* dict key is rewritten ``<metric>_<key>``.
    """
    dict_keys: list[str] = []
    for name, value in results.items():
        if isinstance(value, dict):
            dict_keys.extend(value.keys())
    names = [n for n, v in results.items() if not isinstance(v, dict)]
    collide = len(dict_keys) != len(set(dict_keys)) or bool(set(dict_keys) & set(names))
    out: dict[str, Any] = {}
    for name, value in results.items():
        if isinstance(value, dict):
            for key, v in value.items():
                out[f"{name}_{key}" if collide else key] = v
        else:
            out[name] = value
    return out
