"""Semantic segmentation: SegmentationTask, SegmentationHead and the segmentation metrics
(threshold F1, mean IoU, wrapper)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.component import Predictor, model_output, require_feature_maps
from rskeras.train.metrics import (
    ConfusionMatrix,
    ConfusionMatrixMetric,
    MulticlassAccuracy,
    check_kwargs,
    check_stat_kwargs,
    torchmetrics_stat,
)
from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.task import BasicTask, batch_hw, export_outputs, raster_target, single_band_raster
from rskeras.weights.torch_params import TorchParam, join

# rslearn.utils.colors.DEFAULT_COLORS (class i -> colors[i % 16]).
DEFAULT_COLORS = [
    (0, 0, 0),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (0, 128, 0),
    (255, 160, 122),
    (139, 69, 19),
    (128, 128, 128),
    (255, 255, 255),
    (143, 188, 143),
    (95, 158, 160),
    (255, 200, 0),
    (128, 0, 0),
]


def class_label(class_names: list[str] | None, index: int) -> str:
    """Per-class metric label: the class name, or ``cls_<i>``."""
    return class_names[index] if class_names is not None else f"cls_{index}"


def threshold_suffix(thresholds_lists: list[list[float]], thresholds: list[float]) -> str:
    """Metric-name suffix of one threshold list: "" when there is a single list, else
    ``_<first threshold>`` with '.' -> ',' (e.g. ``_0,5``)."""
    if len(thresholds_lists) == 1:
        return ""
    return "_" + str(thresholds[0]).replace(".", ",")


def colorize(classes: np.ndarray, num_classes: int, colors: list) -> np.ndarray:
    """Class map ``[H, W]`` -> H×W×3 uint8 with ``colors[i % len(colors)]``."""
    out = np.zeros(classes.shape + (3,), np.uint8)
    for class_id in range(num_classes):
        out[classes == class_id] = colors[class_id % len(colors)]
    return out


class SegmentationTask(BasicTask):
    """Classifies each pixel from a 1-band raster of class ids.

    Args:
        num_classes: number of classes (labels 0..num_classes-1).
        class_id_mapping: optional {old id: new id}, applied to the original labels
            (keys may be strings, e.g. from YAML/JSON).
        colors: visualisation colors per class (default rslearn's palette).
        zero_is_invalid: same as ``nodata_value: 0``; exclusive with it.
        nodata_value: label value marking invalid pixels, compared *after* the mapping.
            When it is >= num_classes those labels are reset to 0 (still invalid).
        enable_accuracy_metric: ``accuracy`` (torchmetrics MulticlassAccuracy, macro by
            default, ``metric_kwargs``), default true.
        enable_miou_metric: ``mean_iou`` over the epoch (argmax); ``miou_metric_kwargs``
            may set ``ignore_missing_classes`` (and ``nodata_value``).
        enable_f1_metric: per threshold list ``F1<sfx>``, ``precision<sfx>``,
            ``recall<sfx>`` (one-vs-rest, probability > threshold, best threshold per
            class, mean over all classes).
        enable_multiclass_metrics: ``Overall*`` (micro) and ``Average*`` (macro) F1,
            Precision, Recall from argmax (+ ``Classwise*`` with report_metric_per_class),
            with ``multiclass_metric_kwargs``.
        report_metric_per_class: per-class values (dict results) for F1/precision/recall,
            mean IoU and Classwise metrics.
        f1_metric_thresholds: list of threshold lists (default [[0.5]]).
        metric_kwargs, miou_metric_kwargs, multiclass_metric_kwargs: see above.
        prob_scales: per-class factors applied to probabilities in ``process_output`` /
            export only (not metrics).
        other_metrics: extra name -> Keras metric taking ``update_state(outputs, targets)``.
        output_probs: ``process_output`` returns probabilities instead of class ids.
        output_class_idx: with output_probs, only this class's probability channel.
        enable_confusion_matrix: ``confusion_matrix`` (non-scalar, logger only).
        class_names: names of the classes for per-class metric keys (len num_classes).
        image_bands, remap_values: see BasicTask.

    Targets (per example): ``{"classes": int32 [1, H, W, 1], "valid": float32
    [1, H, W, 1]}``. Model outputs are probabilities ``[B, H, W, C]``.
    """

    def __init__(
        self,
        num_classes: int,
        class_id_mapping: dict[Any, int] | None = None,
        colors: list | None = None,
        zero_is_invalid: bool = False,
        nodata_value: int | None = None,
        enable_accuracy_metric: bool = True,
        enable_miou_metric: bool = False,
        enable_f1_metric: bool = False,
        enable_multiclass_metrics: bool = False,
        report_metric_per_class: bool = False,
        f1_metric_thresholds: list[list[float]] | None = None,
        metric_kwargs: dict[str, Any] | None = None,
        miou_metric_kwargs: dict[str, Any] | None = None,
        multiclass_metric_kwargs: dict[str, Any] | None = None,
        prob_scales: list[float] | None = None,
        other_metrics: dict[str, keras.metrics.Metric] | None = None,
        output_probs: bool = False,
        output_class_idx: int | None = None,
        enable_confusion_matrix: bool = False,
        class_names: list[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"SegmentationTask: class_names must contain exactly num_classes entries "
                f"(expected {self.num_classes}, got {len(class_names)})"
            )
        if zero_is_invalid and nodata_value is not None:
            raise ValueError(f"SegmentationTask: zero_is_invalid and nodata_value ({nodata_value}) cannot both be set")
        self.class_id_mapping = {int(k): int(v) for k, v in (class_id_mapping or {}).items()} or None
        self.colors = [tuple(c) for c in (colors or DEFAULT_COLORS)]
        self.nodata_value = 0 if zero_is_invalid else nodata_value
        self.enable_accuracy_metric = enable_accuracy_metric
        self.enable_miou_metric = enable_miou_metric
        self.enable_f1_metric = enable_f1_metric
        self.enable_multiclass_metrics = enable_multiclass_metrics
        self.report_metric_per_class = report_metric_per_class
        self.f1_metric_thresholds = [list(t) for t in (f1_metric_thresholds or [[0.5]])]
        self.metric_kwargs = dict(metric_kwargs or {})
        self.miou_metric_kwargs = dict(miou_metric_kwargs or {})
        self.multiclass_metric_kwargs = dict(multiclass_metric_kwargs or {})
        if prob_scales is not None and len(prob_scales) != self.num_classes:
            raise ValueError(f"SegmentationTask: prob_scales needs {self.num_classes} entries, got {len(prob_scales)}")
        self.prob_scales = list(prob_scales) if prob_scales is not None else None
        self.other_metrics = dict(other_metrics or {})
        self.output_probs = output_probs
        if output_class_idx is not None and not 0 <= output_class_idx < self.num_classes:
            raise ValueError(f"SegmentationTask: output_class_idx {output_class_idx} outside [0, {self.num_classes})")
        self.output_class_idx = output_class_idx
        self.enable_confusion_matrix = enable_confusion_matrix
        self.class_names = list(class_names) if class_names is not None else None
        # Validate metric arguments now, without creating TF state.
        check_stat_kwargs(self.metric_kwargs, "SegmentationTask metric_kwargs")
        check_stat_kwargs(self.multiclass_metric_kwargs, "SegmentationTask multiclass_metric_kwargs")
        check_kwargs(
            self.miou_metric_kwargs,
            {"num_classes", "nodata_value", "ignore_missing_classes", "report_per_class", "class_names"},
            "SegmentationTask miou_metric_kwargs",
        )

    # ---- targets ---------------------------------------------------------------------

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        if not load_targets:
            return {}, {}
        if "targets" not in raw_inputs:
            raise KeyError("SegmentationTask: raw inputs have no 'targets' raster input")
        raw = single_band_raster(raw_inputs["targets"], "SegmentationTask")
        # rslearn's .long(): truncation toward zero.
        original = tf.cast(raw, tf.int64)
        labels = original
        for old, new in (self.class_id_mapping or {}).items():
            labels = tf.where(original == old, tf.constant(new, tf.int64), labels)
        shape = tf.shape(labels)
        valid = self.window_valid_mask(shape[0], shape[1], metadata)
        if self.nodata_value is not None:
            is_nodata = tf.cast(labels, tf.float64) == float(self.nodata_value)
            valid = valid * tf.cast(~is_nodata, tf.float32)
            # Labels, even masked ones, must be in 0..num_classes-1 for the loss.
            if self.nodata_value >= self.num_classes:
                labels = tf.where(is_nodata, tf.zeros_like(labels), labels)
        return {}, {"classes": raster_target(tf.cast(labels, tf.int32)), "valid": raster_target(valid)}

    # ---- outputs ---------------------------------------------------------------------

    def process_output(self, raw_output, metadata: SampleMetadata) -> np.ndarray:
        """Probabilities ``[H, W, C]`` -> class ids int64 ``[1, H, W]``, or (with
        output_probs) probabilities ``[C, H, W]`` / ``[1, H, W]``; ``prob_scales`` first."""
        probs = np.asarray(raw_output)
        if probs.ndim != 3:
            raise ValueError(f"SegmentationTask output must be an H×W×C array, got shape {probs.shape}")
        if self.prob_scales is not None:
            probs = probs * np.asarray(self.prob_scales, dtype=probs.dtype)[None, None, :]
        if self.output_probs:
            chw = np.transpose(probs, (2, 0, 1))
            if self.output_class_idx is not None:
                return chw[self.output_class_idx : self.output_class_idx + 1]
            return chw
        return np.argmax(probs, axis=-1).astype(np.int64)[None, :, :]

    def output_layer(self) -> keras.layers.Layer:
        return SegmentationOutput(prob_scales=self.prob_scales, output_class_idx=self.output_class_idx)

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {
            "kind": "segmentation",
            **export_outputs(prefix, {"class_ids": "int32", "probabilities": "float32"}),
            "merge": "raster",
            "raster": "class_ids",
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }

    def visualize(self, input_dict, target_dict, output):
        if target_dict is None:
            raise ValueError("SegmentationTask.visualize needs the target dict")
        classes = np.asarray(target_dict["classes"])
        gt = classes.reshape(classes.shape[-3:-1])
        pred = np.argmax(np.asarray(output), axis=-1)
        images = {}
        if "image" in input_dict:
            images["image"] = self.visualize_image(input_dict["image"])
        images["gt"] = colorize(gt, self.num_classes, self.colors)
        images["pred"] = colorize(pred, self.num_classes, self.colors)
        return images

    # ---- metrics ---------------------------------------------------------------------

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        n = self.num_classes
        metrics: dict[str, keras.metrics.Metric] = {}
        if self.enable_accuracy_metric:
            kwargs = {k: v for k, v in self.metric_kwargs.items() if k != "num_classes"}
            metrics["accuracy"] = SegmentationMetric(MulticlassAccuracy(n, **kwargs), name="accuracy")
        if self.enable_f1_metric:
            for thresholds in self.f1_metric_thresholds:
                sfx = threshold_suffix(self.f1_metric_thresholds, thresholds)
                for mode, prefix in (("f1", "F1"), ("precision", "precision"), ("recall", "recall")):
                    metric = SegmentationF1Metric(
                        n, thresholds, metric_mode=mode, report_per_class=self.report_metric_per_class, class_names=self.class_names
                    )
                    metrics[prefix + sfx] = SegmentationMetric(metric, name=prefix + sfx)
        if self.enable_multiclass_metrics:
            modes = [("Overall", "micro"), ("Average", "macro")]
            if self.report_metric_per_class:
                modes.append(("Classwise", "none"))
            for prefix, average in modes:
                for stat, stat_name in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall")):
                    name = prefix + stat_name
                    kwargs = {**self.multiclass_metric_kwargs, "average": average}
                    inner = torchmetrics_stat(stat, n, kwargs, name)
                    class_metric = f"classwise_{stat}" if average == "none" else None
                    metrics[name] = SegmentationMetric(inner, name=name, class_names=self.class_names, class_metric_name=class_metric)
        if self.enable_miou_metric:
            kwargs: dict[str, Any] = {"report_per_class": self.report_metric_per_class, "class_names": self.class_names}
            if self.nodata_value is not None:
                kwargs["nodata_value"] = self.nodata_value
            kwargs.update({k: v for k, v in self.miou_metric_kwargs.items() if k != "num_classes"})
            metrics["mean_iou"] = SegmentationMetric(MeanIoUMetric(n, **kwargs), name="mean_iou")
        metrics.update(self.other_metrics)
        if self.enable_confusion_matrix:
            metrics["confusion_matrix"] = SegmentationMetric(
                ConfusionMatrixMetric(n, class_names=self.class_names), name="confusion_matrix"
            )
        return metrics


@keras.saving.register_keras_serializable(package="rskeras")
class SegmentationOutput(keras.layers.Layer):
    """Export post-processing of probabilities ``[B, H, W, C]``:
    ``{"class_ids": int32 [B, H, W], "probabilities": [B, H, W, C]}`` where both use the
    probabilities multiplied by ``prob_scales`` (as ``process_output``); with
    ``output_class_idx`` the probabilities are that channel only ``[B, H, W, 1]``.

    Args:
        prob_scales: optional per-class factors.
        output_class_idx: optional channel to export as probability.
    """

    def __init__(self, prob_scales: list[float] | None = None, output_class_idx: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.prob_scales = list(prob_scales) if prob_scales is not None else None
        self.output_class_idx = output_class_idx

    def call(self, probs):
        probs = tf.cast(probs, tf.float32)
        if self.prob_scales is not None:
            probs = probs * tf.constant(self.prob_scales, tf.float32)
        class_ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        if self.output_class_idx is not None:
            i = int(self.output_class_idx)
            probs = probs[..., i : i + 1]
        return {"class_ids": class_ids, "probabilities": probs}

    def get_config(self):
        return {**super().get_config(), "prob_scales": self.prob_scales, "output_class_idx": self.output_class_idx}


class SegmentationMetric(keras.metrics.Metric):
    """Feeds (probabilities ``[B, H, W, C]``, targets ``{"classes", "valid"}`` batched
    ``[B, 1, H, W, 1]``) to a flat metric as ``[N, C]`` / ``[N]`` / valid mask.

    A per-class ``[C]`` result becomes a dict keyed ``cls_<i>`` (or ``<name>_<class_metric_name>``
    with class names), like rslearn's wrapper; ``class_idx`` picks one entry.

    Args:
        metric: the wrapped metric, ``update_state(probs, labels, valid)``.
        class_names: optional class names for per-class keys.
        class_metric_name: suffix of named per-class keys (e.g. ``classwise_f1``).
        class_idx: return only this class's value.
    """

    def __init__(
        self,
        metric: keras.metrics.Metric,
        name: str = "accuracy",
        class_names: list[str] | None = None,
        class_metric_name: str | None = None,
        class_idx: int | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.metric = metric
        self.class_names = list(class_names) if class_names is not None else None
        self.class_metric_name = class_metric_name
        self.class_idx = class_idx
        self.non_scalar = getattr(metric, "non_scalar", False)
        self.host_side = getattr(metric, "host_side", False)

    def update_state(self, outputs, targets, sample_weight=None):
        probs = tf.convert_to_tensor(outputs)
        num_classes = probs.shape[-1]
        probs = tf.reshape(probs, [-1, num_classes if num_classes is not None else tf.shape(probs)[-1]])
        labels = tf.reshape(batch_hw(targets["classes"]), [-1])
        valid = tf.reshape(batch_hw(targets["valid"]), [-1])
        self.metric.update_state(probs, labels, valid)

    def result(self):
        value = self.metric.result()
        if self.non_scalar or isinstance(value, dict):
            return value
        if len(value.shape) >= 1:
            entries = {}
            for i in range(int(value.shape[0])):
                key = class_label(self.class_names, i)
                if self.class_names is not None and self.class_metric_name is not None:
                    key = f"{key}_{self.class_metric_name}"
                entries[key] = value[i]
            if self.class_idx is not None:
                return list(entries.values())[self.class_idx]
            return entries
        return value

    def reset_state(self):
        self.metric.reset_state()


class SegmentationF1Metric(keras.metrics.Metric):
    """rslearn's segmentation F1Metric: one-vs-rest per class and score threshold.

    For class c and threshold t a pixel is predicted positive iff ``prob_c > t``
    (strict); tp/fp/fn accumulate over the epoch. Precision / recall are 0 when their
    denominator is 0, F1 = 2PR/(P+R) (0 when P+R < 0.001). Per class the best score over
    the thresholds is kept; the value is the mean over all classes.

    ``update_state(probs [N, C], labels [N], valid [N])``.

    Args:
        num_classes: number of classes.
        score_thresholds: the thresholds.
        metric_mode: "f1" (default), "precision" or "recall".
        report_per_class: return a dict: keys ``f1/avg`` and ``f1/cls_<i>`` without class
            names (for all three modes — they collide and get prefixed when logged), or
            ``avg_<mode>`` / ``<name>_<mode>`` with class names.
        class_names: optional class names.
    """

    def __init__(
        self,
        num_classes: int,
        score_thresholds: list[float],
        metric_mode: str = "f1",
        report_per_class: bool = False,
        class_names: list[str] | None = None,
        name: str = "F1",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if metric_mode not in ("f1", "precision", "recall"):
            raise ValueError(f"SegmentationF1Metric: metric_mode must be f1/precision/recall, got {metric_mode!r}")
        if not score_thresholds:
            raise ValueError("SegmentationF1Metric: score_thresholds must not be empty")
        self.num_classes = int(num_classes)
        self.score_thresholds = [float(t) for t in score_thresholds]
        self.metric_mode = metric_mode
        self.report_per_class = report_per_class
        self.class_names = list(class_names) if class_names is not None else None
        # [C, T, 3] = tp, fp, fn
        self.counts = self.add_variable(
            shape=(self.num_classes, len(self.score_thresholds), 3), initializer="zeros", dtype="float64", name="counts"
        )

    def update_state(self, probs, labels, valid=None, sample_weight=None):
        probs = tf.reshape(tf.cast(probs, tf.float32), [-1, self.num_classes])
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        if valid is None:
            valid = tf.ones_like(labels, tf.float32)
        keep = tf.reshape(tf.cast(valid, tf.float32) > 0, [-1])
        gt = labels[:, None] == tf.range(self.num_classes)[None, :]  # [N, C]
        keep = keep[:, None]
        gt_kept = gt & keep

        def count(mask):
            return tf.reduce_sum(tf.cast(mask, tf.float64), axis=0)

        per_threshold = []
        # One [N, C] comparison per threshold keeps memory at the size of the input.
        for t in self.score_thresholds:
            pred = (probs > t) & keep
            per_threshold.append(tf.stack([count(pred & gt), count(pred & ~gt), count(~pred & gt_kept)], axis=-1))
        tp_fp_fn = tf.stack(per_threshold, axis=1)  # [C, T, 3]
        self.counts.assign_add(tp_fp_fn)

    def result(self):
        scores = best_threshold_scores(tf.convert_to_tensor(self.counts), self.metric_mode)
        average = tf.reduce_mean(scores)
        if not self.report_per_class:
            return average
        if self.class_names is not None:
            out = {f"avg_{self.metric_mode}": average}
            out.update({f"{self.class_names[i]}_{self.metric_mode}": scores[i] for i in range(self.num_classes)})
        else:
            out = {"f1/avg": average}
            out.update({f"f1/cls_{i}": scores[i] for i in range(self.num_classes)})
        return out


def best_threshold_scores(counts: tf.Tensor, metric_mode: str) -> tf.Tensor:
    """``[C, T, 3]`` tp/fp/fn counts -> per-class best score over thresholds, float32
    (rslearn's F1Metric arithmetic: float32 ratios, 0 for empty denominators, F1 = 0 when
    P + R < 0.001, first best threshold kept)."""
    c = tf.cast(counts, tf.float32)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    precision = tf.where(tp + fp > 0, tp / tf.where(tp + fp > 0, tp + fp, 1.0), 0.0)
    recall = tf.where(tp + fn > 0, tp / tf.where(tp + fn > 0, tp + fn, 1.0), 0.0)
    pr = precision + recall
    f1 = tf.where(pr < 0.001, 0.0, 2 * precision * recall / tf.where(pr < 0.001, 1.0, pr))
    score = {"f1": f1, "precision": precision, "recall": recall}[metric_mode]
    return tf.reduce_max(score, axis=1)


class MeanIoUMetric(ConfusionMatrix):
    """rslearn's MeanIoUMetric: per class intersection |pred=c ∧ label=c| and union
    |pred=c ∨ label=c| accumulated over the epoch (argmax predictions); IoU_c = I/U and
    the value is the mean over classes.

    The class equal to ``nodata_value`` is skipped (so only a nodata value below
    num_classes matters); a class with U = 0 scores 0 and is included unless
    ``ignore_missing_classes``. Labels/predictions outside the classes raise.

    Args:
        num_classes: number of classes.
        nodata_value: class to skip.
        ignore_missing_classes: skip classes absent from labels and predictions.
        report_per_class: return a dict: ``mean_iou/avg`` and ``mean_iou/cls_<i>``, or
            ``avg_mean_iou`` / ``<name>_mean_iou`` with class names.
        class_names: optional class names.
    """

    def __init__(
        self,
        num_classes: int,
        nodata_value: int | None = None,
        ignore_missing_classes: bool = False,
        report_per_class: bool = False,
        class_names: list[str] | None = None,
        name: str = "mean_iou",
        **kwargs,
    ):
        super().__init__(num_classes, name=name, **kwargs)
        self.nodata_value = nodata_value
        self.ignore_missing_classes = ignore_missing_classes
        self.report_per_class = report_per_class
        self.class_names = list(class_names) if class_names is not None else None

    def result(self):
        tp, fp, fn = self.counts()
        inter = tf.cast(tp, tf.float32)
        union = tf.cast(tp + fp + fn, tf.float32)
        # Which classes count is decided on the host (eager result at epoch end).
        union_np = np.asarray(union)
        scores, keys = [], []
        for i in range(self.num_classes):
            if self.nodata_value is not None and i == self.nodata_value:
                continue
            if union_np[i] == 0:
                if self.ignore_missing_classes:
                    continue
                score = tf.constant(0.0, tf.float32)
            else:
                score = inter[i] / union[i]
            scores.append(score)
            keys.append(f"{self.class_names[i]}_mean_iou" if self.class_names is not None else f"mean_iou/cls_{i}")
        mean = tf.reduce_mean(tf.stack(scores)) if scores else tf.constant(np.nan, tf.float32)
        if not self.report_per_class:
            return mean
        out = {("avg_mean_iou" if self.class_names is not None else "mean_iou/avg"): mean}
        out.update(dict(zip(keys, scores)))
        return out


class DiceLoss:
    """Mean Dice loss over classes (rslearn's DiceLoss): for each class over the whole
    batch, ``(2Σ p·g + s) / (Σp + Σg + s)`` with ``p = prob·valid``, ``g = onehot·valid``;
    loss = 1 − mean over classes.

    Args:
        smooth: the smoothing term s (default 1e-7).
    """

    def __init__(self, smooth: float = 1e-7):
        self.smooth = smooth

    def __call__(self, probs: tf.Tensor, labels: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        num_classes = probs.shape[-1]
        onehot = tf.one_hot(labels, num_classes, dtype=probs.dtype)
        mask = valid[..., None]
        p = probs * mask
        g = onehot * mask
        axes = list(range(len(probs.shape) - 1))
        inter = tf.reduce_sum(p * g, axis=axes)
        union = tf.reduce_sum(p, axis=axes) + tf.reduce_sum(g, axis=axes)
        dice = (2.0 * inter + self.smooth) / (union + self.smooth)
        return 1.0 - tf.reduce_mean(dice)


@keras.saving.register_keras_serializable(package="rskeras")
class SegmentationHead(Predictor):
    """Softmax segmentation head with cross-entropy loss ``cls`` (+ ``dice``).

    Input: FeatureMaps with exactly one ``[B, H, W, C]`` map of logits. Output:
    ``softmax(logits / temperature)`` ``[B, H, W, C]``. Losses with targets
    ``classes``/``valid`` (``[B, 1, H, W, 1]``):

    * ``cls``: per-pixel CE (times ``weights[label]`` if given) → ``Σ(ce·valid) / Σvalid``
      (the normaliser is the valid-pixel count, not the sum of weights), ``Σ(ce·valid)``
      (= 0) when no pixel is valid; the temperature does not enter the loss.
    * ``dice`` (``dice_loss``): :class:`DiceLoss` of ``softmax(logits)``.

    Args:
        weights: optional per-class CE weights.
        dice_loss: add the dice loss.
        temperature: softmax temperature of the outputs (default 1.0).
    """

    def __init__(self, weights: list[float] | None = None, dice_loss: bool = False, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"SegmentationHead: temperature must be > 0, got {temperature}")
        self.class_weights = [float(w) for w in weights] if weights is not None else None
        self.dice_loss = dice_loss
        self.temperature = float(temperature)

    def call(self, intermediates, context=None, targets=None, training=None):
        maps = require_feature_maps(intermediates, "SegmentationHead")
        if len(maps) != 1:
            raise ValueError(f"input to SegmentationHead must have one feature map, but got {len(maps)}")
        logits = tf.cast(maps[0], tf.float32)
        if self.class_weights is not None and logits.shape[-1] is not None and logits.shape[-1] != len(self.class_weights):
            raise ValueError(
                f"SegmentationHead: {len(self.class_weights)} class weights for {logits.shape[-1]} logit channels"
            )
        outputs = tf.nn.softmax(logits / self.temperature, axis=-1)
        losses = {}
        if targets is not None:
            valid = tf.cast(batch_hw(targets["valid"]), tf.float32)
            # Masked pixels may hold any label (e.g. a negative nodata); use 0 there.
            labels = tf.where(valid > 0, tf.cast(batch_hw(targets["classes"]), tf.int32), 0)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            if self.class_weights is not None:
                ce = ce * tf.gather(tf.constant(self.class_weights, tf.float32), labels)
            total = tf.reduce_sum(valid)
            summed = tf.reduce_sum(ce * valid)
            losses["cls"] = tf.where(total > 0, summed / tf.where(total > 0, total, 1.0), summed)
            if self.dice_loss:
                losses["dice"] = DiceLoss()(tf.nn.softmax(logits, axis=-1), labels, valid)
        return model_output(outputs, losses)

    def loss_names(self):
        return ["cls", "dice"] if self.dice_loss else ["cls"]

    def torch_params(self, prefix: str) -> list[TorchParam]:
        """rslearn registers the class weights as a buffer ``weights``: consumed, the
        config's values are used."""
        return [TorchParam(join(prefix, "weights"), None)] if self.class_weights is not None else []

    def get_config(self):
        return {
            **super().get_config(),
            "weights": self.class_weights,
            "dice_loss": self.dice_loss,
            "temperature": self.temperature,
        }
