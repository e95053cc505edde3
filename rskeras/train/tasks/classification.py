"""Window-level classification: ClassificationTask, ClassificationHead and their metric."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import shapely
import tensorflow as tf

from rskeras.models.component import Predictor, model_output, require_feature_vector
from rskeras.train.metrics import (
    RANKING_KWARGS,
    ConfusionMatrixMetric,
    MulticlassAccuracy,
    MulticlassRankingMetric,
    check_kwargs,
    check_stat_kwargs,
    torchmetrics_stat,
)
from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.task import (
    BasicTask,
    class_ids_from_text,
    draw_label_text,
    export_outputs,
    first_true_index,
    property_found_check,
    unknown_class_message,
)
from rskeras.utils.feature import Feature


class ClassificationTask(BasicTask):
    """Classifies each window (or crop) from a vector label.

    The class is read from the first feature of the ``targets`` vector input that has
    ``property_name`` (and, with ``skip_unknown_categories``, a known class).

    Args:
        property_name: property holding the class name (or id with ``read_class_id``).
        classes: class names; the class id is the index in this list.
        filters: accepted for compatibility and ignored, as in rslearn (its filter loop
            never skips a feature).
        read_class_id: read an integer class id instead of a class name.
        allow_invalid: a window without a labelled feature becomes an invalid example
            (``valid`` 0, excluded from loss and metrics) instead of an error.
        skip_unknown_categories: skip features whose class is not in ``classes``
            instead of failing.
        prob_property: when predicting, also write the class probabilities (list) under
            this property.
        metric_kwargs: torchmetrics MulticlassAccuracy arguments of ``accuracy``
            (``average`` macro (default)/micro/weighted, ``ignore_index``).
        enable_f1_metric: add F1, precision and recall: per class (``<class>_f1``,
            ``<class>_precision``, ``<class>_recall``) when ``f1_metric_kwargs.average`` is
            None/"none" (default), else averaged ``f1``, ``precision``, ``recall``.
        f1_metric_kwargs: torchmetrics arguments of those metrics.
        enable_auroc: add ``auroc`` (one-vs-rest multiclass AUROC, macro by default).
        auroc_metric_kwargs: its torchmetrics arguments (``average``).
        enable_prauc: add ``prauc`` (multiclass average precision, macro by default).
        prauc_metric_kwargs: its torchmetrics arguments (``average``).
        positive_class, positive_class_threshold: with 2 classes, predict
            ``positive_class`` iff its probability >= the threshold (float32 compare).
            Only prediction (``process_output``/``output_layer``) uses it; metrics use argmax.
        enable_confusion_matrix: add ``confusion_matrix`` (non-scalar, logger only).
        image_bands, remap_values: see BasicTask.

    Targets (per example): ``{"class": int32 [], "valid": float32 []}``.
    """

    def __init__(
        self,
        property_name: str,
        classes: list[str],
        filters: list[Any] | None = None,
        read_class_id: bool = False,
        allow_invalid: bool = False,
        skip_unknown_categories: bool = False,
        prob_property: str | None = None,
        metric_kwargs: dict[str, Any] | None = None,
        enable_f1_metric: bool = False,
        f1_metric_kwargs: dict[str, Any] | None = None,
        enable_auroc: bool = False,
        auroc_metric_kwargs: dict[str, Any] | None = None,
        enable_prauc: bool = False,
        prauc_metric_kwargs: dict[str, Any] | None = None,
        positive_class: str | None = None,
        positive_class_threshold: float = 0.5,
        enable_confusion_matrix: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not classes:
            raise ValueError("ClassificationTask: classes must not be empty")
        self.property_name = property_name
        self.classes = list(classes)
        self.filters = list(filters or [])
        self.read_class_id = read_class_id
        self.allow_invalid = allow_invalid
        self.skip_unknown_categories = skip_unknown_categories
        self.prob_property = prob_property
        self.metric_kwargs = dict(metric_kwargs or {})
        self.enable_f1_metric = enable_f1_metric
        self.f1_metric_kwargs = dict(f1_metric_kwargs or {})
        self.enable_auroc = enable_auroc
        self.auroc_metric_kwargs = dict(auroc_metric_kwargs or {})
        self.enable_prauc = enable_prauc
        self.prauc_metric_kwargs = dict(prauc_metric_kwargs or {})
        self.positive_class = positive_class
        self.positive_class_threshold = positive_class_threshold
        self.enable_confusion_matrix = enable_confusion_matrix
        if positive_class_threshold != 0.5:
            if len(self.classes) != 2:
                raise ValueError(
                    f"ClassificationTask: positive_class_threshold={positive_class_threshold} needs exactly 2 classes, "
                    f"got {len(self.classes)}"
                )
            if positive_class is None:
                raise ValueError("ClassificationTask: set positive_class when using positive_class_threshold")
            if positive_class not in self.classes:
                raise ValueError(f"ClassificationTask: positive_class {positive_class!r} not found in classes {self.classes}")
        # Fail at construction, not in the middle of validation (without creating any
        # TF state: tasks may be built before the TF runtime is configured).
        check_stat_kwargs(self.metric_kwargs, "ClassificationTask metric_kwargs")
        check_stat_kwargs(self.f1_metric_kwargs, "ClassificationTask f1_metric_kwargs")
        check_kwargs(self.auroc_metric_kwargs, RANKING_KWARGS, "ClassificationTask auroc_metric_kwargs")
        check_kwargs(self.prauc_metric_kwargs, RANKING_KWARGS, "ClassificationTask prauc_metric_kwargs")

    def vector_property_names(self) -> list[str]:
        return [self.property_name]

    @property
    def positive_index(self) -> int:
        """Index of the thresholded positive class, -1 when argmax is used."""
        if len(self.classes) == 2 and self.positive_class_threshold != 0.5:
            return self.classes.index(self.positive_class)
        return -1

    # ---- targets ---------------------------------------------------------------------

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        if not load_targets:
            return {}, {}
        if "targets" not in raw_inputs:
            raise KeyError("ClassificationTask: raw inputs have no 'targets' vector input")
        vec = raw_inputs["targets"]
        has = vec["has_property"][self.property_name]
        ids = class_ids_from_text(vec["properties"][self.property_name], self.classes, self.read_class_id)
        known = (ids >= 0) & (ids < len(self.classes))
        acceptable = has & known if self.skip_unknown_categories else has
        found = tf.reduce_any(acceptable)
        first = first_true_index(acceptable)
        checks = []
        if not self.skip_unknown_categories:
            # rslearn asserts on the first labelled feature with an unknown class.
            value = tf.gather(tf.concat([vec["properties"][self.property_name], [""]], 0), first)
            checks.append(
                tf.debugging.Assert(
                    tf.gather(tf.concat([known, [True]], 0), first),
                    [unknown_class_message("ClassificationTask", metadata, self.property_name, value, self.classes)],
                )
            )
        if not self.allow_invalid:
            checks.append(property_found_check("ClassificationTask", metadata, self.property_name, found))
        with tf.control_dependencies(checks):
            cls = tf.gather(tf.concat([ids, [0]], 0), first)
            valid = tf.where(found, 1.0, 0.0)
        return {}, {"class": tf.identity(cls), "valid": tf.cast(valid, tf.float32)}

    # ---- outputs ---------------------------------------------------------------------

    def predicted_class(self, probs: np.ndarray) -> int:
        """Class index for one probability vector (threshold rule or argmax)."""
        pos = self.positive_index
        if pos >= 0:
            return pos if np.float32(probs[pos]) >= np.float32(self.positive_class_threshold) else 1 - pos
        return int(np.argmax(probs))

    def process_output(self, raw_output, metadata: SampleMetadata) -> list[Feature]:
        """Probabilities ``[C]`` -> one Point feature at the crop's top-left corner."""
        probs = np.asarray(raw_output)
        if probs.ndim != 1:
            raise ValueError(f"ClassificationTask output must be a 1-D probability vector, got shape {probs.shape}")
        cls = self.predicted_class(probs)
        value = cls if self.read_class_id else self.classes[cls]
        props: dict[str, Any] = {self.property_name: value}
        if self.prob_property:
            props[self.prob_property] = probs.tolist()
        x0, y0 = metadata.crop_bounds[0], metadata.crop_bounds[1]
        return [Feature(shapely.Point(x0, y0), props)]

    def output_layer(self) -> keras.layers.Layer:
        return ClassificationOutput(positive_index=self.positive_index, threshold=self.positive_class_threshold)

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {
            "kind": "classification",
            **export_outputs(prefix, {"probabilities": "float32", "class_ids": "int32"}),
            "merge": "point",
            "property_name": self.property_name,
            "classes": list(self.classes),
            "read_class_id": bool(self.read_class_id),
            "prob_property": self.prob_property,
            "positive_class": self.positive_class,
            "positive_class_threshold": self.positive_class_threshold,
        }

    def visualize(self, input_dict, target_dict, output):
        if target_dict is None:
            raise ValueError("ClassificationTask.visualize needs the target dict")
        image = self.visualize_image(input_dict["image"])
        label = self.classes[int(np.asarray(target_dict["class"]))]
        predicted = self.classes[int(np.argmax(np.asarray(output)))]
        return {"image": draw_label_text(image, f"Label: {label}\nOutput: {predicted}")}

    # ---- metrics ---------------------------------------------------------------------

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        n = len(self.classes)
        metrics: dict[str, keras.metrics.Metric] = {}
        acc_kwargs = dict(self.metric_kwargs)
        acc_kwargs.pop("num_classes", None)
        metrics["accuracy"] = ClassificationMetric(MulticlassAccuracy(n, **acc_kwargs), name="accuracy")
        if self.enable_f1_metric:
            kwargs = {"average": None, **self.f1_metric_kwargs}
            if kwargs["average"] in (None, "none"):
                for i, class_name in enumerate(self.classes):
                    for stat, suffix in (("recall", "recall"), ("precision", "precision"), ("f1", "f1")):
                        name = f"{class_name}_{suffix}"
                        metrics[name] = ClassificationMetric(torchmetrics_stat(stat, n, kwargs, name, class_idx=i), name=name)
            else:
                for stat in ("recall", "precision", "f1"):
                    metrics[stat] = ClassificationMetric(torchmetrics_stat(stat, n, kwargs, stat), name=stat)
        if self.enable_auroc:
            kwargs = {k: v for k, v in self.auroc_metric_kwargs.items() if k != "num_classes"}
            metrics["auroc"] = ClassificationMetric(MulticlassRankingMetric(n, kind="auroc", **kwargs), name="auroc")
        if self.enable_prauc:
            kwargs = {k: v for k, v in self.prauc_metric_kwargs.items() if k != "num_classes"}
            metrics["prauc"] = ClassificationMetric(
                MulticlassRankingMetric(n, kind="average_precision", **kwargs), name="prauc"
            )
        if self.enable_confusion_matrix:
            metrics["confusion_matrix"] = ClassificationMetric(
                ConfusionMatrixMetric(n, class_names=self.classes), name="confusion_matrix"
            )
        return metrics


@keras.saving.register_keras_serializable(package="rskeras")
class ClassificationOutput(keras.layers.Layer):
    """Export post-processing: probabilities ``[B, C]`` -> ``{"probabilities": [B, C],
    "class_ids": int32 [B]}``.

    Args:
        positive_index: with 2 classes, index of the positive class when a threshold
            other than 0.5 is used (-1: argmax).
        threshold: probability threshold of the positive class (``>=``).
    """

    def __init__(self, positive_index: int = -1, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.positive_index = int(positive_index)
        self.threshold = float(threshold)

    def call(self, probs):
        probs = tf.cast(probs, tf.float32)
        if self.positive_index >= 0:
            pos = probs[:, self.positive_index] >= self.threshold
            ids = tf.where(pos, self.positive_index, 1 - self.positive_index)
        else:
            ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_ids": tf.cast(ids, tf.int32)}

    def get_config(self):
        return {**super().get_config(), "positive_index": self.positive_index, "threshold": self.threshold}


class ClassificationMetric(keras.metrics.Metric):
    """Feeds (probabilities ``[B, C]``, targets ``{"class", "valid"}``) to a flat metric
    taking ``update_state(probs, labels, valid)``; only examples with ``valid > 0`` count.

    Args:
        metric: the wrapped metric (a confusion-matrix statistic, a ranking metric or
            a confusion matrix).
    """

    def __init__(self, metric: keras.metrics.Metric, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.metric = metric
        self.non_scalar = getattr(metric, "non_scalar", False)
        self.host_side = getattr(metric, "host_side", False)

    def update_state(self, outputs, targets, sample_weight=None):
        self.metric.update_state(outputs, targets["class"], targets["valid"])

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()


@keras.saving.register_keras_serializable(package="rskeras")
class ClassificationHead(Predictor):
    """Softmax classifier head with cross-entropy loss ``cls``.

    Input: FeatureVector ``[B, C]`` of logits. Output: softmax probabilities ``[B, C]``.
    Loss (with targets ``class`` [B] and ``valid`` [B]): mean over the batch of
    ``CE(logits_i, class_i) · valid_i`` — the denominator counts invalid examples, as in
    rslearn.
    """

    def call(self, intermediates, context=None, targets=None, training=None):
        logits = require_feature_vector(intermediates, "ClassificationHead")
        logits = tf.cast(logits, tf.float32)
        probs = tf.nn.softmax(logits, axis=-1)
        losses = {}
        if targets is not None:
            valid = tf.cast(targets["valid"], tf.float32)
            # Invalid examples carry class 0 (in range), but keep any label safe anyway.
            labels = tf.where(valid > 0, tf.cast(targets["class"], tf.int32), 0)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            losses["cls"] = tf.reduce_mean(ce * valid)
        return model_output(probs, losses)

    def loss_names(self):
        return ["cls"]
