"""Per-pixel regression: PerPixelRegressionTask, PerPixelRegressionHead, metric wrapper."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from rskeras.models.component import model_output, require_feature_maps
from rskeras.train.metrics import RegressionSums
from rskeras.train.model_context import SampleMetadata
from rskeras.train.tasks.regression import (
    RegressionHeadBase,
    RegressionMetricWrapper,
    RegressionOutput,
    elementwise_loss,
    resolve_metric_names,
)
from rskeras.train.tasks.task import BasicTask, batch_hw, export_outputs, raster_target, single_band_raster


class PerPixelRegressionTask(BasicTask):
    """Regresses one value per pixel from a 1-band raster target.

    Args:
        scale_factor: multiply label values by this for training; predictions and
            metrics are divided by it.
        metrics: metric names among "mse", "rmse", "l1", "r2", "mape" (default ["mse"]).
        metric_mode: deprecated alias of ``metrics`` (FutureWarning).
        nodata_value: raw label value marking invalid pixels (compared before scaling).
        image_bands, remap_values: see BasicTask.

    Targets (per example): ``{"values": float32 [1, H, W, 1], "valid": float32
    [1, H, W, 1]}``; ``valid`` = window-valid mask × (raw != nodata_value).
    """

    def __init__(
        self,
        scale_factor: float = 1,
        metric_mode: str | Sequence[str] | None = None,
        nodata_value: float | None = None,
        metrics: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if scale_factor == 0:
            raise ValueError("PerPixelRegressionTask: scale_factor must be non-zero")
        self.scale_factor = scale_factor
        self.metrics = resolve_metric_names("PerPixelRegressionTask", metrics, metric_mode)
        self.nodata_value = nodata_value

    def process_inputs(self, raw_inputs, metadata, load_targets=True):
        if not load_targets:
            return {}, {}
        if "targets" not in raw_inputs:
            raise KeyError("PerPixelRegressionTask: raw inputs have no 'targets' raster input")
        raw = tf.cast(single_band_raster(raw_inputs["targets"], "PerPixelRegressionTask"), tf.float32)
        values = raw * np.float32(self.scale_factor)
        shape = tf.shape(raw)
        valid = self.window_valid_mask(shape[0], shape[1], metadata)
        if self.nodata_value is not None:
            valid = valid * tf.cast(tf.cast(raw, tf.float64) != float(self.nodata_value), tf.float32)
        return {}, {"values": raster_target(values), "valid": raster_target(valid)}

    def process_output(self, raw_output, metadata: SampleMetadata) -> np.ndarray:
        """``[H, W]`` scaled prediction -> ``[1, H, W]`` float32 unscaled."""
        output = np.asarray(raw_output)
        if output.ndim != 2:
            raise ValueError(f"PerPixelRegressionTask output must be an H×W array, got shape {output.shape}")
        return (output[None, :, :] / np.float32(self.scale_factor)).astype(output.dtype)

    def output_layer(self) -> keras.layers.Layer:
        return PerPixelRegressionOutput(scale_factor=self.scale_factor)

    def export_description(self, prefix: str = "") -> dict[str, Any]:
        return {"kind": "per_pixel_regression", **export_outputs(prefix, {"values": "float32"}), "merge": "raster", "raster": "values"}

    def visualize(self, input_dict, target_dict, output):
        """``image``, and grayscale ``gt`` / ``pred`` = clip(scaled value·255) as H×W×3.

        rslearn indexes the per-example H×W output with ``[0, :, :]`` (which fails); the
        intended prediction image is produced here.
        """
        if target_dict is None:
            raise ValueError("PerPixelRegressionTask.visualize needs the target dict")
        gt = np.asarray(target_dict["values"]).reshape(np.asarray(target_dict["values"]).shape[-3:-1])
        pred = np.asarray(output)
        images = {}
        if "image" in input_dict:
            images["image"] = self.visualize_image(input_dict["image"])
        for name, values in (("gt", gt), ("pred", pred)):
            gray = np.clip(values * 255, 0, 255).astype(np.uint8)
            images[name] = np.repeat(gray[:, :, None], 3, axis=2)
        return images

    def get_metrics(self) -> dict[str, keras.metrics.Metric]:
        return {name: PerPixelRegressionMetricWrapper(RegressionSums(name), self.scale_factor, name=name) for name in self.metrics}


@keras.saving.register_keras_serializable(package="rskeras")
class PerPixelRegressionOutput(RegressionOutput):
    """Export post-processing: ``[B, H, W]`` scaled predictions -> ``{"values": [B, H, W]}``
    unscaled.

    Args:
        scale_factor: the task's scale factor.
    """

    output_key = "values"


class PerPixelRegressionMetricWrapper(RegressionMetricWrapper):
    """Feeds (predictions ``[B, H, W]`` or ``[B, H, W, 1]``, targets ``{"values",
    "valid"}`` batched ``[B, 1, H, W, 1]``) to a regression metric over pixels with
    ``valid > 0``, both divided by ``scale_factor`` (float32).

    Args:
        metric: a :class:`rskeras.train.metrics.RegressionSums`.
        scale_factor: the task's scale factor.
    """

    def update_state(self, outputs, targets, sample_weight=None):
        preds = tf.convert_to_tensor(outputs)
        if len(preds.shape) == 4:
            preds = preds[..., 0]
        scale = np.float32(self.scale_factor)
        labels = batch_hw(targets["values"])
        valid = batch_hw(targets["valid"])
        self.metric.update_state(tf.cast(preds, tf.float32) / scale, tf.cast(labels, tf.float32) / scale, valid)


@keras.saving.register_keras_serializable(package="rskeras")
class PerPixelRegressionHead(RegressionHeadBase):
    """Per-pixel regression head with loss ``regress``.

    Input: FeatureMaps with exactly one ``[B, H, W, 1]`` map. Output ``[B, H, W]``
    (sigmoid applied with ``use_sigmoid``). Loss with targets ``values``/``valid``
    (``[B, 1, H, W, 1]``): ``Σ(loss·valid) / Σvalid``, or ``mean(loss·valid)`` (= 0)
    when no pixel is valid.

    Args:
        loss_mode: "mse" (default), "l1" or "huber".
        use_sigmoid: apply a sigmoid to the output.
        huber_delta: δ of the Huber loss (default 1.0).
    """

    def call(self, intermediates, context=None, targets=None, training=None):
        maps = require_feature_maps(intermediates, "PerPixelRegressionHead")
        if len(maps) != 1:
            raise ValueError(f"the input to PerPixelRegressionHead must have one feature map, got {len(maps)}")
        if maps[0].shape[-1] is not None and maps[0].shape[-1] != 1:
            raise ValueError(
                f"the input to PerPixelRegressionHead must have channel dimension size 1, got {tuple(maps[0].shape)}"
            )
        logits = tf.cast(maps[0][..., 0], tf.float32)
        outputs = tf.sigmoid(logits) if self.use_sigmoid else logits
        losses = {}
        if targets is not None:
            labels = tf.cast(batch_hw(targets["values"]), tf.float32)
            valid = tf.cast(batch_hw(targets["valid"]), tf.float32)
            # where() instead of a product so that NaN labels on invalid pixels stay out.
            scores = tf.where(valid > 0, elementwise_loss(outputs, labels, self.loss_mode, self.huber_delta) * valid, 0.0)
            total = tf.reduce_sum(valid)
            losses["regress"] = tf.where(
                total > 0, tf.reduce_sum(scores) / tf.where(total > 0, total, 1.0), tf.reduce_mean(scores)
            )
        return model_output(outputs, losses)
