"""Keras metrics shared by tasks: the torchmetrics metrics that rslearn uses.

Every metric here takes flat per-item tensors, ``update_state(preds, labels, valid)``;
the task modules wrap them into ``update_state(outputs, targets)`` metrics that read the
task's batch outputs and batched target dict.

Two kinds of state:

* **Counts and sums in Keras variables** (confusion matrices, regression sums). Keras
  creates metric variables with ``synchronization=ON_READ`` and SUM aggregation, so under
  ``tf.distribute`` each replica accumulates its own share and reading the variable in
  cross-replica context (``result()``) sums them. ``update_state`` is pure graph TF.
* **Host lists** (:class:`HostMetric`: AUROC, average precision, detection mAP): metrics
  whose exact value needs every prediction of the epoch keep numpy arrays in a Python
  list on the host. ``update_state`` feeds the batch to the list through
  ``tf.py_function`` (or directly when eager). Under ``MirroredStrategy`` all replicas of
  one process run that function on the same Python object, so the list receives every
  replica's slice; ``reset_state`` clears it. Such metrics cannot run inside an XLA-compiled
  step (``host_side = True`` marks them) and do not aggregate across worker processes.

Metrics whose ``result()`` is not a scalar or a dict of scalars (confusion matrices) set
``non_scalar = True``; the trainer must not log them as scalars.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

# --------------------------------------------------------------------------------------
# Confusion-matrix statistics (torchmetrics.classification Multiclass*)
# --------------------------------------------------------------------------------------

STATS = ("accuracy", "precision", "recall", "f1")
AVERAGES = ("micro", "macro", "weighted", "none")


def safe_divide(num, den, zero_division: float = 0.0):
    """num / den, ``zero_division`` where den == 0 (torchmetrics ``_safe_divide``)."""
    den_ok = den != 0
    return tf.where(den_ok, num / tf.where(den_ok, den, tf.ones_like(den)), tf.cast(zero_division, num.dtype))


def normalize_average(average: str | None) -> str:
    """torchmetrics accepts ``None`` for ``"none"``."""
    average = "none" if average is None else str(average)
    if average not in AVERAGES:
        raise ValueError(f"unsupported average {average!r} (use one of {list(AVERAGES)} or None)")
    return average


def multiclass_stat(stat: str, tp, fp, fn, average: str = "macro", zero_division: float = 0.0):
    """A torchmetrics multiclass score from per-class counts (float64 tensors).

    Args:
        stat: "accuracy" (= recall for multiclass), "precision", "recall" or "f1".
        tp, fp, fn: per-class counts ``[C]``.
        average: "micro" (pooled counts), "macro" (mean over classes with tp+fp+fn > 0),
            "weighted" (weighted by support tp+fn) or "none" (per-class vector).
        zero_division: value of a per-class score whose denominator is 0.
    """
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r} (use one of {list(STATS)})")
    average = normalize_average(average)
    if stat == "accuracy":
        zero_division = 0.0

    def score(tp, fp, fn):
        if stat in ("accuracy", "recall"):
            return safe_divide(tp, tp + fn, zero_division)
        if stat == "precision":
            return safe_divide(tp, tp + fp, zero_division)
        return safe_divide(2.0 * tp, 2.0 * tp + fn + fp, zero_division)

    if average == "micro":
        return score(tf.reduce_sum(tp), tf.reduce_sum(fp), tf.reduce_sum(fn))
    per_class = score(tp, fp, fn)
    if average == "none":
        return per_class
    if average == "weighted":
        weights = tp + fn
    else:
        weights = tf.cast(tp + fp + fn > 0, per_class.dtype)
    return safe_divide(tf.reduce_sum(weights * per_class), tf.reduce_sum(weights))


def check_stat_kwargs(kwargs: dict[str, Any], metric: str) -> dict[str, Any]:
    """Validates torchmetrics-style kwargs of a multiclass statistic; returns the used ones.

    Supported: ``average``, ``ignore_index``, ``zero_division``; ``num_classes`` and
    ``validate_args`` are accepted and ignored here; ``top_k`` must be 1 and
    ``multidim_average`` "global" (the only modes rslearn configs use).
    """
    kwargs = dict(kwargs)
    kwargs.pop("num_classes", None)
    kwargs.pop("validate_args", None)
    if kwargs.pop("top_k", 1) != 1:
        raise ValueError(f"{metric}: only top_k=1 is supported")
    if kwargs.pop("multidim_average", "global") != "global":
        raise ValueError(f"{metric}: only multidim_average='global' is supported")
    unknown = set(kwargs) - {"average", "ignore_index", "zero_division"}
    if unknown:
        raise ValueError(f"{metric}: unsupported arguments {sorted(unknown)}")
    return kwargs


def check_kwargs(kwargs: dict[str, Any], allowed: set[str], owner: str) -> None:
    """Raises ValueError naming the arguments of ``kwargs`` not in ``allowed``."""
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise ValueError(f"{owner}: unsupported arguments {sorted(unknown)} (supported: {sorted(allowed)})")


RANKING_KWARGS = {"num_classes", "average", "ignore_index", "thresholds", "validate_args"}


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates a ``[num_classes, num_classes]`` confusion matrix (rows = label,
    columns = prediction) over valid items.

    ``update_state(preds, labels, valid=None)``: ``preds`` are class scores ``[N, C]``
    (argmax is taken, like torchmetrics) or class ids ``[N]``; ``labels`` ``[N]``;
    ``valid`` ``[N]`` (items with ``valid > 0`` count). Items whose label equals
    ``ignore_index`` are dropped. A valid item with a label or prediction outside
    ``[0, num_classes)`` raises (torchmetrics' argument validation does too).

    Args:
        num_classes: number of classes.
        ignore_index: label value to drop (torchmetrics ``ignore_index``).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, name: str = "confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float64", name="matrix"
        )

    def update_state(self, preds, labels, valid=None, sample_weight=None):
        preds = tf.convert_to_tensor(preds)
        if len(preds.shape) == 2:
            preds = tf.argmax(preds, axis=-1, output_type=tf.int32)
        preds = tf.reshape(tf.cast(preds, tf.int32), [-1])
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        if valid is None:
            keep = tf.ones_like(labels, tf.bool)
        else:
            keep = tf.reshape(tf.cast(valid, tf.float32) > 0, [-1])
        if self.ignore_index is not None:
            keep = keep & (labels != int(self.ignore_index))
        # Dropped items get class 0 and weight 0, so the shapes stay static.
        preds = tf.where(keep, preds, 0)
        labels = tf.where(keep, labels, 0)
        cm = tf.math.confusion_matrix(
            labels, preds, num_classes=self.num_classes, weights=tf.cast(keep, tf.float64), dtype=tf.float64
        )
        self.matrix.assign_add(cm)

    def counts(self):
        """(tp, fp, fn) per class, float64 ``[C]``."""
        m = tf.convert_to_tensor(self.matrix)
        tp = tf.linalg.diag_part(m)
        fp = tf.reduce_sum(m, axis=0) - tp
        fn = tf.reduce_sum(m, axis=1) - tp
        return tp, fp, fn

    def result(self):
        return tf.convert_to_tensor(self.matrix)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}


class MulticlassStat(ConfusionMatrix):
    """A torchmetrics multiclass statistic (accuracy, precision, recall, F1) over the
    epoch's confusion matrix, with torchmetrics' averaging.

    Args:
        num_classes: number of classes.
        stat: "accuracy", "precision", "recall" or "f1".
        average: "macro" (default; mean over classes with tp+fp+fn > 0), "micro",
            "weighted" or "none"/None (per-class ``[C]`` result).
        ignore_index: label value excluded from the counts.
        zero_division: per-class score when its denominator is 0 (default 0).
        class_idx: return only this class's value of the per-class result.
    """

    def __init__(
        self,
        num_classes: int,
        stat: str = "accuracy",
        average: str | None = "macro",
        ignore_index: int | None = None,
        zero_division: float = 0.0,
        class_idx: int | None = None,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(num_classes, ignore_index=ignore_index, name=name or stat, **kwargs)
        if stat not in STATS:
            raise ValueError(f"MulticlassStat: unknown stat {stat!r} (use one of {list(STATS)})")
        self.stat = stat
        self.average = normalize_average(average)
        self.zero_division = float(zero_division)
        if class_idx is not None and not 0 <= int(class_idx) < self.num_classes:
            raise ValueError(f"MulticlassStat: class_idx {class_idx} outside [0, {self.num_classes})")
        self.class_idx = class_idx

    def result(self):
        tp, fp, fn = self.counts()
        value = multiclass_stat(self.stat, tp, fp, fn, self.average, self.zero_division)
        if self.class_idx is not None:
            value = value[int(self.class_idx)]
        return tf.cast(value, tf.float32)

    def get_config(self):
        return {
            **super().get_config(),
            "stat": self.stat,
            "average": self.average,
            "zero_division": self.zero_division,
            "class_idx": self.class_idx,
        }


class MulticlassAccuracy(MulticlassStat):
    """torchmetrics MulticlassAccuracy (default ``average="macro"``: per-class recall
    averaged over the classes seen in labels or predictions). ``kwargs`` take the
    torchmetrics arguments checked by :func:`check_stat_kwargs`."""

    def __init__(self, num_classes: int, average: str | None = "macro", name: str = "accuracy", **kwargs):
        used = check_stat_kwargs(kwargs, "MulticlassAccuracy")
        used.pop("zero_division", None)
        super().__init__(num_classes, stat="accuracy", average=average, name=name, **used)


def torchmetrics_stat(stat: str, num_classes: int, kwargs: dict[str, Any], name: str, class_idx: int | None = None):
    """Builds the MulticlassStat equivalent of torchmetrics ``Multiclass<Stat>(**kwargs)``."""
    used = check_stat_kwargs(kwargs, f"Multiclass {stat}")
    return MulticlassStat(num_classes, stat=stat, class_idx=class_idx, name=name, **used)


class ConfusionMatrixMetric(ConfusionMatrix):
    """rslearn's ConfusionMatrixMetric: the epoch confusion matrix ``[C, C]`` (rows =
    label, columns = argmax prediction) as float64 counts; ``non_scalar`` (sent to
    non-scalar loggers only).

    Args:
        num_classes: number of classes.
        class_names: optional axis labels kept for loggers.
    """

    non_scalar = True

    def __init__(self, num_classes: int, class_names: list[str] | None = None, name: str = "confusion_matrix", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.class_names = list(class_names) if class_names is not None else None

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}


# --------------------------------------------------------------------------------------
# Regression metrics (torchmetrics MeanSquaredError, MeanAbsoluteError, R2Score,
# MeanAbsolutePercentageError, rslearn RegressionAccuracy)
# --------------------------------------------------------------------------------------

REGRESSION_METRICS = ("mse", "rmse", "l1", "r2", "mape")
MAPE_EPSILON = 1.17e-06


class RegressionSums(keras.metrics.Metric):
    """Running sums over valid items from which every regression metric is computed.

    ``update_state(preds, labels, valid)`` with flat (or same-shaped) tensors; the values
    are used as given (callers unscale them first). Sums are float64; the per-item
    differences are formed in float32 like torchmetrics.

    Args:
        kind: "mse", "rmse", "l1", "r2", "mape" or "accuracy".
        within_factor: for "accuracy", the fraction with
            ``y·(1−f) <= p <= y·(1+f)``.
    """

    def __init__(self, kind: str = "mse", within_factor: float = 0.1, name: str | None = None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        if kind not in REGRESSION_METRICS + ("accuracy",):
            raise ValueError(f"RegressionSums: unknown metric {kind!r} (use one of {list(REGRESSION_METRICS) + ['accuracy']})")
        self.kind = kind
        self.within_factor = float(within_factor)
        # n, Σ(p−y)², Σ|p−y|, Σy, Σy², Σ|p−y|/max(|y|, eps), #within
        self.sums = self.add_variable(shape=(7,), initializer="zeros", dtype="float64", name="sums")

    def update_state(self, preds, labels, valid=None, sample_weight=None):
        p = tf.reshape(tf.cast(preds, tf.float32), [-1])
        y = tf.reshape(tf.cast(labels, tf.float32), [-1])
        if valid is None:
            w = tf.ones_like(y, tf.float64)
        else:
            w = tf.cast(tf.reshape(tf.cast(valid, tf.float32) > 0, [-1]), tf.float64)
        # Invalid items may hold anything (NaN labels); zero them before multiplying.
        keep = w > 0
        p = tf.where(keep, p, 0.0)
        y = tf.where(keep, y, 0.0)
        d = p - y
        d64 = tf.cast(d, tf.float64)
        y64 = tf.cast(y, tf.float64)
        ape = tf.cast(tf.abs(d) / tf.maximum(tf.abs(y), MAPE_EPSILON), tf.float64)
        f = self.within_factor
        within = tf.cast((p >= y * (1 - f)) & (p <= y * (1 + f)), tf.float64)
        update = tf.stack(
            [
                tf.reduce_sum(w),
                tf.reduce_sum(w * d64 * d64),
                tf.reduce_sum(w * tf.abs(d64)),
                tf.reduce_sum(w * y64),
                tf.reduce_sum(w * y64 * y64),
                tf.reduce_sum(w * ape),
                tf.reduce_sum(w * within),
            ]
        )
        self.sums.assign_add(update)

    def result(self):
        s = tf.convert_to_tensor(self.sums)
        n, sse, sae, sy, syy, sape, nwithin = (s[i] for i in range(7))
        # With no items torchmetrics divides 0 by 0 (nan).
        nan = tf.constant(np.nan, tf.float64)
        safe_n = tf.where(n > 0, n, 1.0)
        if self.kind == "mse":
            value = tf.where(n > 0, sse / safe_n, nan)
        elif self.kind == "rmse":
            value = tf.where(n > 0, tf.sqrt(sse / safe_n), nan)
        elif self.kind == "l1":
            value = tf.where(n > 0, sae / safe_n, nan)
        elif self.kind == "mape":
            value = tf.where(n > 0, sape / safe_n, nan)
        elif self.kind == "accuracy":
            value = tf.where(n > 0, nwithin / safe_n, nan)
        else:
            value = r2_from_sums(n, sse, sy, syy)
        return tf.cast(value, tf.float32)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "within_factor": self.within_factor}


def r2_from_sums(n, rss, sum_obs, sum_sq_obs):
    """torchmetrics R2Score from sums: 1 − rss/tss, 1.0 when both are ~0 (atol 1e-4),
    0.0 when only tss is ~0, nan with fewer than 2 items (torchmetrics raises)."""
    safe_n = tf.where(n > 0, n, 1.0)
    tss = sum_sq_obs - sum_obs * (sum_obs / safe_n)
    rss_zero = tf.abs(rss) <= 1e-4
    tss_zero = tf.abs(tss) <= 1e-4
    value = tf.where(
        rss_zero,
        tf.ones_like(rss),
        tf.where(tss_zero, tf.zeros_like(rss), 1.0 - rss / tf.where(tss_zero, tf.ones_like(tss), tss)),
    )
    return tf.where(n >= 2, value, tf.constant(np.nan, tf.float64))


# --------------------------------------------------------------------------------------
# Host-accumulated metrics
# --------------------------------------------------------------------------------------


class _HostStore:
    """Plain holder (not tracked by Keras) of the batches a HostMetric received."""

    def __init__(self):
        self.batches: list[tuple[np.ndarray, ...]] = []
        self.lock = threading.Lock()


class HostMetric(keras.metrics.Metric):
    """Base of metrics that keep every batch's arrays on the host (see module doc).

    Subclasses call :meth:`host_update` with a list of tensors from ``update_state`` and
    read :meth:`host_batches` in ``result()``.
    """

    host_side = True

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._store = _HostStore()

    def _append(self, arrays: Sequence[np.ndarray]) -> None:
        with self._store.lock:
            self._store.batches.append(tuple(np.array(a) for a in arrays))

    def host_update(self, tensors: Sequence[Any]) -> None:
        """Appends the numpy values of ``tensors`` to the host list (graph or eager)."""
        tensors = [tf.convert_to_tensor(t) for t in tensors]
        if tf.executing_eagerly():
            self._append([t.numpy() for t in tensors])
            return

        def append(*values):
            self._append([v.numpy() for v in values])
            return []

        tf.py_function(append, tensors, Tout=[])

    def host_batches(self) -> list[tuple[np.ndarray, ...]]:
        with self._store.lock:
            return list(self._store.batches)

    def reset_state(self):
        with self._store.lock:
            self._store.batches.clear()


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit (torch's CPU kernel
    computes ``start + step·i`` for the first half and ``end − step·(steps−1−i)`` for the
    second with a float32 step and one rounding)."""
    step = np.float64(np.float32((end - start) / (steps - 1)))
    half = steps // 2
    values = [start + step * i if i < half else end - step * (steps - 1 - i) for i in range(steps)]
    return np.asarray(values, np.float64).astype(np.float32)


def binary_clf_curve(scores: np.ndarray, positive: np.ndarray):
    """(fps, tps, thresholds) at each distinct score, highest first (torchmetrics
    ``_binary_clf_curve`` without sample weights)."""
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    positive = positive[order].astype(np.int64)
    distinct = np.nonzero(np.diff(scores))[0]
    idx = np.concatenate([distinct, [positive.size - 1]])
    tps = np.cumsum(positive)[idx]
    fps = 1 + idx - tps
    return fps, tps, scores[idx]


def _softmax_if_logits(probs: np.ndarray) -> np.ndarray:
    """torchmetrics ``normalize_logits_if_needed(., "softmax")`` for one update batch."""
    if probs.size and not np.all((probs >= 0) & (probs <= 1)):
        e = np.exp(probs - probs.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def _average_scores(scores: np.ndarray, average: str, weights: np.ndarray) -> float | np.ndarray:
    """torchmetrics' reduction of per-class AUROC/AP: nan classes are dropped."""
    if average == "none":
        return scores.astype(np.float32)
    keep = ~np.isnan(scores)
    if average == "macro":
        return float(np.mean(scores[keep])) if keep.any() else float("nan")
    w = weights[keep]
    w = w / w.sum() if w.sum() > 0 else np.zeros_like(w)
    return float(np.sum(scores[keep] * w))


class MulticlassRankingMetric(HostMetric):
    """torchmetrics MulticlassAUROC / MulticlassAveragePrecision with exact thresholds
    (``thresholds=None``), one-vs-rest per class.

    ``update_state(probs [N, C], labels [N], valid [N])``. AUROC of a class with no
    positives is 0 (torchmetrics sets its TPR to 0) and counts in the average; average
    precision of such a class is nan and is dropped from the average, except when every
    label is 0 (torchmetrics then sets recall to 1).

    Args:
        num_classes: number of classes.
        kind: "auroc" or "average_precision".
        average: "macro" (default), "weighted" (by class support) or "none".
        ignore_index: labels equal to this are dropped.
    """

    def __init__(
        self,
        num_classes: int,
        kind: str = "auroc",
        average: str | None = "macro",
        ignore_index: int | None = None,
        thresholds: Any = None,
        name: str | None = None,
        validate_args: bool = True,
        **kwargs,
    ):
        super().__init__(name=name or kind, **kwargs)
        if kind not in ("auroc", "average_precision"):
            raise ValueError(f"MulticlassRankingMetric: kind must be 'auroc' or 'average_precision', got {kind!r}")
        if thresholds is not None:
            raise ValueError(f"{kind}: only thresholds=None (exact computation) is supported, got {thresholds!r}")
        average = "none" if average is None else average
        if average not in ("macro", "weighted", "none"):
            raise ValueError(f"{kind}: average must be 'macro', 'weighted' or 'none', got {average!r}")
        self.num_classes = int(num_classes)
        self.kind = kind
        self.average = average
        self.ignore_index = ignore_index

    def update_state(self, probs, labels, valid=None, sample_weight=None):
        probs = tf.reshape(tf.cast(probs, tf.float32), [-1, self.num_classes])
        labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
        if valid is None:
            valid = tf.ones_like(labels, tf.float32)
        valid = tf.reshape(tf.cast(valid, tf.float32), [-1])
        self.host_update([probs, labels, valid])

    def _gather(self) -> tuple[np.ndarray, np.ndarray]:
        all_probs, all_labels = [], []
        for probs, labels, valid in self.host_batches():
            keep = valid > 0
            if self.ignore_index is not None:
                keep &= labels != self.ignore_index
            if not keep.any():
                continue
            all_probs.append(_softmax_if_logits(probs[keep]))
            all_labels.append(labels[keep])
        if not all_probs:
            return np.zeros((0, self.num_classes), np.float32), np.zeros((0,), np.int64)
        return np.concatenate(all_probs), np.concatenate(all_labels)

    def result(self):
        probs, labels = self._gather()
        if labels.size == 0:
            warnings.warn(f"{self.name}: no valid samples in this epoch, result is nan")
            return tf.constant(np.nan, tf.float32)
        scores = np.zeros(self.num_classes, np.float64)
        for c in range(self.num_classes):
            fps, tps, _ = binary_clf_curve(probs[:, c].astype(np.float32), labels == c)
            if self.kind == "auroc":
                tps = np.concatenate([[0], tps]).astype(np.float64)
                fps = np.concatenate([[0], fps]).astype(np.float64)
                fpr = fps / fps[-1] if fps[-1] > 0 else np.zeros_like(fps)
                tpr = tps / tps[-1] if tps[-1] > 0 else np.zeros_like(tps)
                scores[c] = np.trapezoid(tpr, fpr)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    precision = tps / (tps + fps)
                    recall = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
                if np.all(labels == 0):
                    recall = np.ones_like(recall)
                precision = np.concatenate([precision[::-1], [1.0]])
                recall = np.concatenate([recall[::-1], [0.0]])
                scores[c] = -np.sum((recall[1:] - recall[:-1]) * precision[:-1])
        weights = np.bincount(labels, minlength=self.num_classes).astype(np.float64)
        value = _average_scores(scores, self.average, weights)
        return tf.constant(value, tf.float32)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "kind": self.kind,
            "average": self.average,
            "ignore_index": self.ignore_index,
        }


# --------------------------------------------------------------------------------------
# Logging names
# --------------------------------------------------------------------------------------


def flatten_metric_results(results: dict[str, Any]) -> dict[str, Any]:
    """Flattens dict-valued metric results the way torchmetrics' MetricCollection does.

    A dict result contributes its keys directly; if any key collides with another dict
    key or with a metric name, *every* dict key is rewritten ``<metric>_<key>``.
    """
    dict_keys: list[str] = []
    for value in results.values():
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


def metric_results(metrics: dict[str, keras.metrics.Metric], scalars_only: bool = True) -> dict[str, Any]:
    """``{name: result}`` of a task's metrics, flattened and (by default) without the
    non-scalar ones; values are Python floats. The names are what rslearn logs after the
    ``val_`` / ``test_`` prefix."""
    raw = {}
    for name, metric in metrics.items():
        if scalars_only and getattr(metric, "non_scalar", False):
            continue
        raw[name] = metric.result()
    flat = flatten_metric_results(raw)
    return {k: (float(np.asarray(v)) if np.ndim(np.asarray(v)) == 0 else np.asarray(v)) for k, v in flat.items()}
