"""Tiny per-task models wrapped as ``Exportable``s for the export / serving tests.

Every model takes one raw 4-band float32 input ``image`` (raw values around 1000-3000,
normalized inside by ``Normalize(mean=1000, std=500)``) through a 2-stage SimpleCNN.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rskeras.export.inference import Exportable
from rskeras.export.preprocessing import RawInput, plan_transforms
from rskeras.models.faster_rcnn import FasterRCNN
from rskeras.models.multitask import MultiTaskModel
from rskeras.models.pick_features import PickFeatures
from rskeras.models.pooling_decoder import PoolingDecoder
from rskeras.models.simple_cnn import SimpleCNN
from rskeras.models.singletask import SingleTaskModel
from rskeras.models.unet import UNetDecoder
from rskeras.train.tasks.classification import ClassificationHead, ClassificationTask
from rskeras.train.tasks.detection import DetectionTask
from rskeras.train.tasks.embedding import EmbeddingHead, EmbeddingTask
from rskeras.train.tasks.multi_task import MultiTask
from rskeras.train.tasks.per_pixel_regression import PerPixelRegressionHead, PerPixelRegressionTask
from rskeras.train.tasks.regression import RegressionHead, RegressionTask
from rskeras.train.tasks.segmentation import SegmentationHead, SegmentationTask
from rskeras.train.transforms.normalize import Normalize

BANDS = ("B02", "B03", "B04", "B08")
SIZE = 32
KINDS = ("classification", "regression", "per_pixel_regression", "segmentation", "detection", "embedding", "multi_task")


def encoder():
    return SimpleCNN(in_channels=len(BANDS), channels=[8, 8], convs_per_stage=1)


def unet(out_channels):
    return UNetDecoder(in_channels=[[2, 8], [4, 8]], out_channels=out_channels)


def classification_decoder(num_classes=3):
    return [PoolingDecoder(in_channels=8, out_channels=num_classes, num_fc_layers=1, fc_channels=8), ClassificationHead()]


def segmentation_decoder(num_classes=3):
    return [unet(num_classes), SegmentationHead()]


def detection_decoder(num_classes=3):
    return [
        FasterRCNN(
            downsample_factors=[2, 4],
            num_channels=8,
            num_classes=num_classes,
            anchor_sizes=[[6], [12]],
            box_score_thresh=0.0,
            max_detections=10,
            rpn_pre_nms_top_n=64,
            rpn_post_nms_top_n=32,
        )
    ]


def build(kind: str):
    """(model, task) of a tiny model for a task kind."""
    if kind == "classification":
        return SingleTaskModel([encoder()], classification_decoder()), ClassificationTask(property_name="category", classes=["a", "b", "c"], prob_property="probs")
    if kind == "regression":
        decoder = [PoolingDecoder(in_channels=8, out_channels=1, num_fc_layers=1, fc_channels=8), RegressionHead()]
        return SingleTaskModel([encoder()], decoder), RegressionTask(property_name="value", scale_factor=0.5)
    if kind == "per_pixel_regression":
        return SingleTaskModel([encoder()], [unet(1), PerPixelRegressionHead()]), PerPixelRegressionTask(scale_factor=2.0)
    if kind == "segmentation":
        return SingleTaskModel([encoder()], segmentation_decoder()), SegmentationTask(num_classes=3, class_names=["w", "v", "u"])
    if kind == "detection":
        return SingleTaskModel([encoder()], detection_decoder()), DetectionTask(property_name="category", classes=["bg", "boat", "buoy"], score_threshold=0.3)
    if kind == "embedding":
        return SingleTaskModel([encoder()], [PickFeatures([1]), EmbeddingHead()]), EmbeddingTask()
    if kind == "multi_task":
        model = MultiTaskModel([encoder()], {"segment": segmentation_decoder(), "classify": classification_decoder()})
        task = MultiTask(
            {"segment": SegmentationTask(num_classes=3), "classify": ClassificationTask(property_name="category", classes=["a", "b", "c"])},
            {"segment": {"seg": "targets"}, "classify": {"cls": "targets"}},
        )
        return model, task
    raise ValueError(kind)


def raw_image(seed: int, size: int = SIZE, batch: int | None = None) -> np.ndarray:
    """Raw reflectance-like bands ``[T=1, H, W, C]`` (or ``[B, H, W, C]`` with ``batch``)."""
    rng = np.random.default_rng(seed)
    shape = (batch, size, size, len(BANDS)) if batch else (1, size, size, len(BANDS))
    smooth = rng.normal(size=shape).cumsum(axis=-2).cumsum(axis=-3) * 40
    return (1500 + smooth + rng.normal(0, 30, size=shape)).astype(np.float32)


def tiny_exportable(kind: str, seed: int = 0) -> Exportable:
    """A built tiny model (weights from ``seed``) with Normalize inside."""
    keras.utils.set_random_seed(seed)
    model, task = build(kind)
    transforms = [Normalize(mean=1000.0, std=500.0)]
    planned = plan_transforms(transforms, "test.transforms")
    raw = [RawInput("image", BANDS, "float32", 1)]
    model({"image": tf.zeros([1, 1, SIZE, SIZE, len(BANDS)])}, training=False)
    if kind in ("detection",):
        sharpen_detector(model)
    return Exportable(model, task, raw, planned, name=f"tiny_{kind}", default_size=(SIZE, SIZE))


def sharpen_detector(model) -> None:
    """Scales the detector's class logits so that scores of random weights are spread out
    (near-equal scores make NMS order depend on float rounding)."""
    for v in model.trainable_variables:
        if "cls_score" in v.path and "kernel" in v.path:
            v.assign(v * 20.0)


def examples(n: int, size: int = SIZE, seed: int = 10) -> list[dict[str, np.ndarray]]:
    return [{"image": raw_image(seed + i, size)} for i in range(n)]
