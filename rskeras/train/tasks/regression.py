"""Window-level regression: RegressionTask, RegressionHead and their metric wrapper."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import keras
import numpy as np
import shapely
import tensorflow as tf

from rskeras.models.component import Predictor, model_output, require_feature_vector
from rskeras.train.metrics import REGRESSION_METRICS, RegressionSums
from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.task import BasicTask, draw_label_text, export_outputs, first_true_index, property_found_check
from rskeras.utils.feature import Feature

LOSS_MODES = ("mse", "l1", "huber")


def resolve_metric_names(task: str, metrics: Sequence[str] | None, metric_mode: str | Sequence[str] | None) -> list[str]:
    """rslearn's metric list resolution shared by the regression tasks.

    ``metrics`` wins (a FutureWarning if ``metric_mode`` is also set); else the deprecated
    ``metric_mode`` (string or list, FutureWarning); else ``["mse"]``. An empty list or an
    entry outside mse/rmse/l1/r2/mape raises ValueError.
    """
    if metrics is not None:
        names = list(metrics)
        if metric_mode is not None:
            warnings.warn(
                f"{task}.metric_mode is deprecated and ignored when `metrics` is set. "
                "It will be removed after 2026-06-01.",
                FutureWarning,
                stacklevel=3,
            )
    elif metric_mode is not None:
        warnings.warn(
            f"{task}.metric_mode is deprecated; use `metrics` instead. It will be removed after 2026-06-01.",
            FutureWarning,
            stacklevel=3,
        )
        names = [metric_mode] if isinstance(metric_mode, str) else list(metric_mode)
    else:
        names = ["mse"]
    if not names:
        raise ValueError(f"{task}: metrics must contain at least one metric")
    invalid = [m for m in names if m not in REGRESSION_METRICS]
    if invalid:
        raise ValueError(f"{task}: invalid metrics entries {invalid} (supported: {list(REGRESSION_METRICS)})")
    return names


def elementwise_loss(outputs: tf.Tensor, labels: tf.Tensor, loss_mode: str, huber_delta: float) -> tf.Tensor:
    """Per-item regression loss: squared error, absolute error or torch's Huber
    (0.5·d² if |d| < δ else δ·(|d| − 0.5·δ))."""
    d = outputs - labels
    if loss_mode == "mse":
        return tf.square(d)
    if loss_mode == "l1":
        return tf.abs(d)
    if loss_mode == "huber":
        a = tf.abs(d)
        return tf.where(a < huber_delta, 0.5 * tf.square(d), huber_delta * (a - 0.5 * huber_delta))
    raise ValueError(f"unknown loss mode {loss_mode!r} (use one of {list(LOSS_MODES)})")


class RegressionTask(BasicTask):
    """Regresses one value per window (or crop) from a vector label.

    The value is ``float(v) · scale_factor`` of the first feature of the ``targets``
    vector input having ``property_name``.

    Args:
        property_name: property holding the value (number or numeric string).
        filters: accepted for compatibility and ignored, as in rslearn.
        allow_invalid: a window without the property becomes an invalid example instead
            of an error.
        scale_factor: multiply label values by this for training; predictions and
            metrics are divided by it.
        metrics: metric names among "mse", "rmse", "l1", "r2", "mape" (default ["mse"]).
        metric_mode: deprecated alias of ``metrics`` (FutureWarning).
        use_accuracy_metric: add ``accuracy``, the fraction of examples with the
            prediction within ``within_factor`` of the label.
        within_factor: relative tolerance of ``accuracy`` (default 0.1).
        image_bands, remap_values: see BasicTask.

    Targets (per example): ``{"value": float32 [], "valid": float32 []}``.
    """

    def __init__(
        self,
        property_name: str,
        filters: list[Any] | None = None,
        allow_invalid: bool = False,
        scale_factor: float = 1,
        metric_mode: str | Sequence[str] | None = None,
        use_accuracy_metric: bool = False,
        within_factor: float = 0.1,
        metrics: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if scale_factor == 0:
            raise ValueError("RegressionTask: scale_factor must be non-zero")
        self.property_name = property_name
        self.filters = list(filters or [])
        self.allow_invalid = allow_invalid
        self.scale_factor = scale_factor
        self.metrics = resolve_metric_names("RegressionTask", metrics, metric_mode)
        self.use_accuracy_metric = use_accuracy_metric
        self.within_factor = within_factor

    def vector_property_names(self) -> list[str]:
        return [self.property_name]

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        if not load_targets:
            return {}, {}
        if "targets" not in raw_inputs:
            raise KeyError("RegressionTask: raw inputs have no 'targets' vector input")
        vec = raw_inputs["targets"]
        has = vec["has_property"][self.property_name]
        found = tf.reduce_any(has)
        first = first_true_index(has)
        checks = []
        if not self.allow_invalid:
            checks.append(property_found_check("RegressionTask", metadata, self.property_name, found))
        with tf.control_dependencies(checks):
            text = tf.gather(tf.concat([vec["properties"][self.property_name], ["0"]], 0), first)
            # float(v) * scale_factor in float64, then float32 (as rslearn).
            value = tf.strings.to_number(text, tf.float64) * float(self.scale_factor)
            value = tf.where(found, tf.cast(value, tf.float32), 0.0)
            valid = tf.where(found, 1.0, 0.0)
        return {}, {"value": value, "valid": tf.cast(valid, tf.float32)}

    def process_output(self, raw_output, metadata: SampleMetadata) -> list[Feature]:
        """Scaled prediction (0-d) -> one Point feature at the crop's top-left corner with
        ``{property_name: prediction / scale_factor}`` (float64 division, as rslearn)."""
        value = np.asarray(raw_output)
        if value.ndim != 0:
            raise ValueError(f"RegressionTask output must be a scalar, got shape {value.shape}")
        output = value.item() / self.scale_factor
        x0, y0 = metadata.crop_bounds[0], metadata.crop_bounds[1]
        return [Feature(shapely.Point(x0, y0), {self.property_name: output})]

    def output_layer(self) -> keras.layers.Layer:
        return RegressionOutput(scale_factor=self.scale_factor)

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {"kind": "regression", **export_outputs(prefix, {"value": "float32"}), "merge": "point", "property_name": self.property_name}

    def visualize(self, input_dict, target_dict, output):
        if target_dict is None:
            raise ValueError("RegressionTask.visualize needs the target dict")
        image = self.visualize_image(input_dict["image"])
        label = float(np.asarray(target_dict["value"])) / self.scale_factor
        predicted = float(np.asarray(output)) / self.scale_factor
        return {"image": draw_label_text(image, f"Label: {label:.2f}\nOutput: {predicted:.2f}")}

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        metrics: dict[str, keras.metrics.Metric] = {}
        for name in self.metrics:
            metrics[name] = RegressionMetricWrapper(RegressionSums(name), self.scale_factor, name=name)
        if self.use_accuracy_metric:
            metrics["accuracy"] = RegressionMetricWrapper(
                RegressionSums("accuracy", within_factor=self.within_factor), self.scale_factor, name="accuracy"
            )
        return metrics


@keras.saving.register_keras_serializable(package="rskeras")
class RegressionOutput(keras.layers.Layer):
    """Export post-processing: scaled predictions ``[B]`` -> ``{"value": [B]}`` unscaled
    (divided by ``scale_factor``).

    Args:
        scale_factor: the task's scale factor.
    """

    output_key = "value"

    def __init__(self, scale_factor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale_factor = float(scale_factor)

    def call(self, outputs):
        return {self.output_key: tf.cast(outputs, tf.float32) / self.scale_factor}

    def get_config(self):
        return {**super().get_config(), "scale_factor": self.scale_factor}


class RegressionMetricWrapper(keras.metrics.Metric):
    """Feeds (predictions ``[B]``, targets ``{"value", "valid"}``) to a regression metric,
    both divided by ``scale_factor`` (in float32, as rslearn) and only where ``valid > 0``.

    Args:
        metric: a :class:`rskeras.train.metrics.RegressionSums`.
        scale_factor: the task's scale factor.
    """

    def __init__(self, metric: keras.metrics.Metric, scale_factor: float, name: str = "mse", **kwargs):
        super().__init__(name=name, **kwargs)
        self.metric = metric
        self.scale_factor = float(scale_factor)

    def update_state(self, outputs, targets, sample_weight=None):
        preds = tf.cast(outputs, tf.float32) / np.float32(self.scale_factor)
        labels = tf.cast(targets["value"], tf.float32) / np.float32(self.scale_factor)
        self.metric.update_state(preds, labels, targets["valid"])

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()


class RegressionHeadBase(Predictor):
    """What :class:`RegressionHead` and ``PerPixelRegressionHead`` share: their arguments
    (validated), ``get_config`` and the loss name ``regress``; subclasses implement ``call``.

    Args:
        loss_mode: "mse" (default), "l1" or "huber".
        use_sigmoid: apply a sigmoid to the output.
        huber_delta: δ of the Huber loss (default 1.0).
    """

    def __init__(self, loss_mode: str = "mse", use_sigmoid: bool = False, huber_delta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if loss_mode not in LOSS_MODES:
            raise ValueError(f"{type(self).__name__}: invalid loss_mode {loss_mode!r} (use one of {list(LOSS_MODES)})")
        self.loss_mode = loss_mode
        self.use_sigmoid = use_sigmoid
        self.huber_delta = float(huber_delta)

    def loss_names(self):
        return ["regress"]

    def get_config(self):
        return {
            **super().get_config(),
            "loss_mode": self.loss_mode,
            "use_sigmoid": self.use_sigmoid,
            "huber_delta": self.huber_delta,
        }


@keras.saving.register_keras_serializable(package="rskeras")
class RegressionHead(RegressionHeadBase):
    """Window-level regression head with loss ``regress``.

    Input: FeatureVector ``[B, 1]``. Output: ``[B]`` (sigmoid applied with
    ``use_sigmoid``). Loss with targets ``value`` [B], ``valid`` [B]:
    ``mean_over_batch(loss_i · valid_i)`` — invalid examples count in the denominator,
    as in rslearn.

    Args:
        loss_mode: "mse" (default), "l1" or "huber". rslearn only rejects an unknown mode
            when computing a loss; rskeras rejects it here.
        use_sigmoid: apply a sigmoid to the output (targets then in 0..1).
        huber_delta: δ of the Huber loss (default 1.0).
    """

    def call(self, intermediates, context=None, targets=None, training=None):
        features = require_feature_vector(intermediates, "RegressionHead")
        if features.shape[-1] is not None and features.shape[-1] != 1:
            raise ValueError(f"the input to RegressionHead must have channel dimension size 1, got shape {tuple(features.shape)}")
        logits = tf.cast(features[:, 0], tf.float32)
        outputs = tf.sigmoid(logits) if self.use_sigmoid else logits
        losses = {}
        if targets is not None:
            labels = tf.cast(targets["value"], tf.float32)
            valid = tf.cast(targets["valid"], tf.float32)
            losses["regress"] = tf.reduce_mean(elementwise_loss(outputs, labels, self.loss_mode, self.huber_delta) * valid)
        return model_output(outputs, losses)
