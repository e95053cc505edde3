"""Window-level classification: ClassificationTask and ClassificationHead."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import shapely
import tensorflow as tf

from rskeras.models.component import Predictor, require_feature_vector
from rskeras.train.metrics import MulticlassAccuracy
from rskeras.train.model_context import SampleMetadata, model_output
from rskeras.train.tasks.task import BasicTask
from rskeras.utils.feature import Feature


class ClassificationTask(BasicTask):
    """Classifies each window (or crop) from a vector label.

    The class is read from the first vector feature of the ``targets`` input that has
    ``property_name``.

    Args:
        property_name: property holding the class name (or id with ``read_class_id``).
        classes: class names; the class id is the index in this list.
        filters: accepted for compatibility; ignored, as in rslearn (quirk).
        read_class_id: read an integer class id instead of a class name.
        allow_invalid: a window without a labelled feature becomes an invalid example
            (``valid`` 0, excluded from loss and metrics) instead of an error.
        skip_unknown_categories: skip features whose class is not in ``classes``
            instead of raising.
        prob_property: when predicting, also write the class probabilities under this
            property.
        metric_kwargs: arguments of the accuracy metric (``average``: macro/micro).
        positive_class, positive_class_threshold: for 2 classes, predict
            ``positive_class`` iff its probability >= the threshold (prediction only).
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
        positive_class: str | None = None,
        positive_class_threshold: float = 0.5,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.property_name = property_name
        self.classes = list(classes)
        self.filters = list(filters or [])
        self.read_class_id = read_class_id
        self.allow_invalid = allow_invalid
        self.skip_unknown_categories = skip_unknown_categories
        self.prob_property = prob_property
        self.metric_kwargs = dict(metric_kwargs or {})
        self.positive_class = positive_class
        self.positive_class_threshold = positive_class_threshold
        if positive_class_threshold != 0.5:
            if len(self.classes) != 2:
                raise ValueError(
                    f"positive_class_threshold={positive_class_threshold} needs exactly 2 classes, got {len(self.classes)}"
                )
            if positive_class not in self.classes:
                raise ValueError(f"positive_class {positive_class!r} must be one of classes {self.classes}")

    def vector_property_names(self) -> list[str]:
        return [self.property_name]

    # ---- targets ---------------------------------------------------------------------

    def class_ids_of(self, values: tf.Tensor) -> tf.Tensor:
        """Property strings [N] -> class ids [N] (-1 for an unknown class name)."""
        if self.read_class_id:
            return tf.cast(tf.strings.to_number(values, tf.float64), tf.int32)
        classes = tf.constant(self.classes)
        eq = tf.equal(values[:, None], classes[None, :])
        return tf.where(tf.reduce_any(eq, axis=1), tf.cast(tf.argmax(tf.cast(eq, tf.int32), axis=1), tf.int32), -1)

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        if not load_targets:
            return {}, {}
        vec = raw_inputs["targets"]
        has = vec["has_property"][self.property_name]
        ids = self.class_ids_of(vec["properties"][self.property_name])
        in_range = (ids >= 0) & (ids < len(self.classes))
        acceptable = has & in_range if self.skip_unknown_categories else has
        found = tf.reduce_any(acceptable)
        # Index of the first acceptable feature; N (a padding slot) when there is none.
        first = tf.argmax(tf.cast(tf.concat([acceptable, [True]], 0), tf.int32), output_type=tf.int32)
        checks = []
        if not self.skip_unknown_categories:
            first_has = tf.argmax(tf.cast(tf.concat([has, [True]], 0), tf.int32), output_type=tf.int32)
            checks.append(
                tf.debugging.Assert(
                    tf.gather(tf.concat([in_range, [True]], 0), first_has),
                    ["ClassificationTask: class not in classes, in window", metadata["window_name"]],
                )
            )
        if not self.allow_invalid:
            checks.append(
                tf.debugging.Assert(
                    found,
                    [f"ClassificationTask: no feature with property '{self.property_name}' in window", metadata["window_name"]],
                )
            )
        with tf.control_dependencies(checks):
            cls = tf.gather(tf.concat([ids, [0]], 0), first)
            valid = tf.where(found, 1.0, 0.0)
        return {}, {"class": tf.cast(cls, tf.int32), "valid": tf.cast(valid, tf.float32)}

    # ---- outputs ---------------------------------------------------------------------

    def predicted_class(self, probs: np.ndarray) -> int:
        if len(self.classes) == 2 and self.positive_class_threshold != 0.5:
            pos = self.classes.index(self.positive_class)
            return pos if np.float32(probs[pos]) >= np.float32(self.positive_class_threshold) else 1 - pos
        return int(np.argmax(probs))

    def process_output(self, raw_output, metadata: SampleMetadata) -> list[Feature]:
        probs = np.asarray(raw_output)
        if probs.ndim != 1:
            raise ValueError(f"ClassificationTask output must be a 1-D probability vector, got shape {probs.shape}")
        cls = self.predicted_class(probs)
        value = cls if self.read_class_id else self.classes[cls]
        props: dict[str, Any] = {self.property_name: value}
        if self.prob_property:
            props[self.prob_property] = [float(p) for p in probs]
        x0, y0 = metadata.crop_bounds[0], metadata.crop_bounds[1]
        return [Feature(shapely.Point(x0, y0), props)]

    def output_layer(self) -> keras.layers.Layer:
        pos = self.classes.index(self.positive_class) if self.positive_class in self.classes else -1
        return ClassificationOutput(
            positive_index=pos if self.positive_class_threshold != 0.5 else -1,
            threshold=self.positive_class_threshold,
        )

    def get_metrics(self):
        kwargs = dict(self.metric_kwargs)
        kwargs.pop("num_classes", None)
        return {"accuracy": ClassificationMetric(MulticlassAccuracy(len(self.classes), **kwargs), name="accuracy")}


class ClassificationOutput(keras.layers.Layer):
    """Export post-processing: probabilities ``[B, C]`` -> ``{"probabilities", "class_ids"}``.

    Args:
        positive_index: with 2 classes, index of the positive class when a threshold
            other than 0.5 is used (-1: argmax).
        threshold: probability threshold of the positive class.
    """

    def __init__(self, positive_index: int = -1, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.positive_index = positive_index
        self.threshold = threshold

    def call(self, probs):
        if self.positive_index >= 0:
            pos = probs[:, self.positive_index] >= self.threshold
            ids = tf.where(pos, self.positive_index, 1 - self.positive_index)
        else:
            ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_ids": tf.cast(ids, tf.int32)}

    def get_config(self):
        return {**super().get_config(), "positive_index": self.positive_index, "threshold": self.threshold}


class ClassificationMetric(keras.metrics.Metric):
    """Adapts a confusion-matrix metric to (probabilities ``[B, C]``, targets dict)."""

    def __init__(self, metric, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.metric = metric

    def update_state(self, outputs, targets, sample_weight=None):
        pred = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        self.metric.update_state(pred, targets["class"], targets["valid"])

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()


class ClassificationHead(Predictor):
    """Softmax classifier head with cross-entropy loss ``cls``.

    Input: FeatureVector ``[B, C]`` of logits. Output: softmax probabilities ``[B, C]``.
    Loss (with targets ``class`` [B] and ``valid`` [B]): mean over the batch of
    ``CE(logits_i, class_i) * valid_i`` — the denominator counts invalid examples, as in
    rslearn.
    """

    def call(self, intermediates, context=None, targets=None, training=None):
        logits = require_feature_vector(intermediates, "ClassificationHead")
        logits = tf.cast(logits, tf.float32)
        probs = tf.nn.softmax(logits, axis=-1)
        losses = {}
        if targets is not None:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(targets["class"], tf.int32), logits=logits)
            losses["cls"] = tf.reduce_mean(ce * tf.cast(targets["valid"], tf.float32))
        return model_output(probs, losses)

    def loss_names(self):
        return ["cls"]
