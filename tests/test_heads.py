"""Prediction heads vs rslearn (heads_and_metrics.npz / metrics_golden.json "heads"):
outputs and losses of ClassificationHead, RegressionHead, PerPixelRegressionHead and
SegmentationHead (NCHW fixtures transposed to NHWC)."""

import numpy as np
import pytest
import tensorflow as tf

from golden_tasks_helpers import heads_npz, metrics_golden
from rskeras.train.tasks.classification import ClassificationHead
from rskeras.train.tasks.per_pixel_regression import PerPixelRegressionHead
from rskeras.train.tasks.regression import RegressionHead
from rskeras.train.tasks.segmentation import SegmentationHead

ATOL = 1e-6


def raster(a):
    """[B, H, W] -> batched raster target [B, 1, H, W, 1]."""
    return tf.constant(a)[:, None, :, :, None]


def check(result, z, prefix, losses):
    out = result["outputs"].numpy()
    want = z[prefix + "/outputs"]
    if want.ndim == 4:  # B×C×H×W -> B×H×W×C
        want = np.transpose(want, (0, 2, 3, 1))
    np.testing.assert_allclose(out, want, atol=ATOL, rtol=1e-5)
    assert set(result["loss_dict"]) == set(losses)
    for name, value in losses.items():
        got = float(result["loss_dict"][name])
        assert got == pytest.approx(value, abs=ATOL, rel=1e-5), name
        assert got == pytest.approx(float(z[f"{prefix}/loss/{name}"]), abs=ATOL, rel=1e-5), name


def test_classification_head():
    z = heads_npz()
    spec = metrics_golden()["heads"]["ClassificationHead"]
    targets = {"class": tf.constant(z["in/heads/cls/class"]), "valid": tf.constant(z["in/heads/cls/valid"])}
    result = ClassificationHead(**spec["args"])(tf.constant(z["in/heads/cls/logits"]), targets=targets)
    check(result, z, "out/heads/cls", spec["loss"])
    assert ClassificationHead()(tf.constant(z["in/heads/cls/logits"]))["loss_dict"] == {}


@pytest.mark.parametrize("variant", ["mse", "l1", "huber", "huber_d0.5", "sigmoid_mse"])
def test_regression_head(variant):
    z = heads_npz()
    spec = metrics_golden()["heads"]["RegressionHead"][variant]
    targets = {"value": tf.constant(z["in/heads/reg/" + spec["targets"]]), "valid": tf.constant(z["in/heads/reg/valid"])}
    result = RegressionHead(**spec["args"])(tf.constant(z["in/heads/reg/logits"]), targets=targets)
    check(result, z, f"out/heads/reg/{variant}", spec["loss"])


@pytest.mark.parametrize("variant", ["mse", "l1", "huber", "huber_d0.5", "sigmoid_mse", "mse_all_invalid"])
def test_per_pixel_regression_head(variant):
    z = heads_npz()
    spec = metrics_golden()["heads"]["PerPixelRegressionHead"][variant]
    valid = z["in/heads/ppr/valid"] if spec["valid"] != "all zeros" else np.zeros_like(z["in/heads/ppr/valid"])
    targets = {"values": raster(z["in/heads/ppr/" + spec["targets"]]), "valid": raster(valid)}
    logits = np.transpose(z["in/heads/ppr/logits"], (0, 2, 3, 1))
    result = PerPixelRegressionHead(**spec["args"])([tf.constant(logits)], targets=targets)
    check(result, z, f"out/heads/ppr/{variant}", spec["loss"])


@pytest.mark.parametrize("variant", ["default", "weights", "dice", "temperature2", "weights_dice_all_invalid"])
def test_segmentation_head(variant):
    z = heads_npz()
    spec = metrics_golden()["heads"]["SegmentationHead"][variant]
    valid = z["in/heads/seg/valid"] if spec["valid"] != "all zeros" else np.zeros_like(z["in/heads/seg/valid"])
    targets = {"classes": raster(z["in/heads/seg/classes"].astype(np.int32)), "valid": raster(valid)}
    logits = np.transpose(z["in/heads/seg/logits"], (0, 2, 3, 1))
    head = SegmentationHead(**spec["args"])
    result = tf.function(lambda x, t: head([x], targets=t))(tf.constant(logits), targets)
    check(result, z, f"out/heads/seg/{variant}", spec["loss"])


def test_head_input_validation():
    with pytest.raises(ValueError, match="channel dimension size 1"):
        RegressionHead()(tf.zeros((2, 3)))
    with pytest.raises(ValueError, match="invalid loss_mode"):
        RegressionHead(loss_mode="bad")
    with pytest.raises(ValueError, match="invalid loss_mode"):
        PerPixelRegressionHead(loss_mode="bad")
    with pytest.raises(ValueError, match="one feature map"):
        PerPixelRegressionHead()([tf.zeros((1, 2, 2, 1))] * 2)
    with pytest.raises(ValueError, match="channel dimension size 1"):
        PerPixelRegressionHead()([tf.zeros((1, 2, 2, 3))])
    with pytest.raises(ValueError, match="one feature map"):
        SegmentationHead()([tf.zeros((1, 2, 2, 3))] * 2)
    with pytest.raises(ValueError, match="FeatureVector"):
        ClassificationHead()([tf.zeros((1, 2, 2, 3))])
    assert SegmentationHead(weights=[1.0, 2.0]).torch_params("decoders.seg.1")[0].key == "decoders.seg.1.weights"
    assert SegmentationHead(dice_loss=True).loss_names() == ["cls", "dice"]


def test_heads_get_config_round_trip():
    for head in (RegressionHead("huber", True, 0.5), PerPixelRegressionHead("l1"), SegmentationHead([1.0, 2.0], True, 2.0)):
        clone = type(head).from_config(head.get_config())
        assert clone.get_config() == head.get_config()
