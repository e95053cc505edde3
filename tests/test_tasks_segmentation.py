"""SegmentationTask: rslearn parity (tasks_golden.json) in tf.data, process_output variants,
export layer, metric accumulation, argument validation."""

import numpy as np
import pytest
import tensorflow as tf

from golden_tasks_helpers import (
    heads_npz,
    metadata_dict,
    metrics_golden,
    process_inputs_in_dataset,
    raster_cthw_to_thwc,
    sample_metadata,
    tasks_golden,
    tasks_npz,
)
from rskeras.train.metrics import metric_results
from rskeras.train.tasks.segmentation import SegmentationTask

CONFIGS = ["segmentation_mapping_nodata255", "segmentation_nodata_after_mapping", "segmentation_zero_is_invalid"]


@pytest.mark.parametrize("name", CONFIGS)
def test_process_inputs_golden_in_tf_data(name):
    entry = tasks_golden()[name]
    task = SegmentationTask(**entry["task"]["init_args"])
    npz = tasks_npz()
    examples = [
        ({"targets": raster_cthw_to_thwc(npz[ex["raw_inputs"]["targets"]["npz"]])}, metadata_dict(ex["metadata"]))
        for ex in entry["process_inputs"]
    ]
    for ex, (_, target) in zip(entry["process_inputs"], process_inputs_in_dataset(task, examples)):
        np.testing.assert_array_equal(target["classes"], raster_cthw_to_thwc(npz[ex["target"]["classes"]["npz"]]))
        np.testing.assert_array_equal(target["valid"], raster_cthw_to_thwc(npz[ex["target"]["valid"]["npz"]]))
        assert target["classes"].dtype == np.int32 and target["valid"].dtype == np.float32


@pytest.mark.parametrize("name", CONFIGS)
def test_process_output_golden(name):
    entry = tasks_golden()[name]
    npz = tasks_npz()
    for ex in entry["process_output"]:
        task = SegmentationTask(**{**entry["task"]["init_args"], **ex["extra_init_args"]})
        probs_hwc = np.transpose(npz[ex["raw_output"]["npz"]], (1, 2, 0))
        got = task.process_output(probs_hwc, sample_metadata(ex["metadata"]))
        want = npz[ex["result"]["npz"]]
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        # The export layer gives the same class map / probabilities.
        out = task.output_layer()(tf.constant(probs_hwc[None]))
        if task.output_probs:
            np.testing.assert_allclose(np.transpose(out["probabilities"].numpy()[0], (2, 0, 1)), want, rtol=1e-6)
        else:
            np.testing.assert_array_equal(out["class_ids"].numpy()[0], want[0])


def test_validation_errors():
    with pytest.raises(ValueError, match="class_names"):
        SegmentationTask(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="cannot both be set"):
        SegmentationTask(num_classes=3, zero_is_invalid=True, nodata_value=255)
    with pytest.raises(ValueError, match="CHW|H×W×C"):
        SegmentationTask(num_classes=3).process_output(np.zeros((3, 3)), sample_metadata(
            {"window_bounds": [0, 0, 3, 3], "crop_bounds": [0, 0, 3, 3]}))
    with pytest.raises(ValueError, match="unsupported"):
        SegmentationTask(num_classes=3, metric_kwargs={"foo": 1})


def _feed(metrics, name, b):
    z = heads_npz()
    p = f"in/metrics/{name}/b{b}/"
    targets = {
        "classes": tf.constant(z[p + "classes"].astype(np.int32))[:, None, :, :, None],
        "valid": tf.constant(z[p + "valid"])[:, None, :, :, None],
    }
    probs = tf.constant(np.transpose(z[p + "probs"], (0, 2, 3, 1)))
    for m in metrics.values():
        m.update_state(probs, targets)


def test_metrics_accumulate_and_reset_in_tf_function():
    name = "segmentation_nodata255_all"
    entry = metrics_golden()[name]
    metrics = SegmentationTask(**entry["task"]["init_args"]).get_metrics()
    step = tf.function(lambda probs, targets: [m.update_state(probs, targets) for m in metrics.values()] and None)
    z = heads_npz()

    def feed(b):
        p = f"in/metrics/{name}/b{b}/"
        step(
            tf.constant(np.transpose(z[p + "probs"], (0, 2, 3, 1))),
            {
                "classes": tf.constant(z[p + "classes"].astype(np.int32))[:, None, :, :, None],
                "valid": tf.constant(z[p + "valid"])[:, None, :, :, None],
            },
        )

    feed(0)
    first = metric_results(metrics)
    feed(1)
    feed(2)
    got = metric_results(metrics)
    assert set(got) == {k[4:] for k in entry["values"]}
    for k, v in entry["values"].items():
        assert abs(got[k[4:]] - v) <= 1e-6, k
    for m in metrics.values():
        m.reset_state()
    feed(0)
    assert metric_results(metrics) == first


def test_empty_valid_batch_leaves_metrics_unchanged():
    task = SegmentationTask(num_classes=3, enable_miou_metric=True, enable_f1_metric=True)
    metrics = task.get_metrics()
    probs = tf.nn.softmax(tf.random.stateless_normal((2, 4, 4, 3), seed=(1, 2)))
    classes = tf.zeros((2, 1, 4, 4, 1), tf.int32)
    for m in metrics.values():
        m.update_state(probs, {"classes": classes, "valid": tf.ones((2, 1, 4, 4, 1))})
    before = metric_results(metrics)
    for m in metrics.values():
        m.update_state(probs, {"classes": classes + 7, "valid": tf.zeros((2, 1, 4, 4, 1))})
    assert metric_results(metrics) == before


def test_visualize_colors():
    task = SegmentationTask(num_classes=2)
    probs = np.zeros((2, 2, 2), np.float32)
    probs[..., 1] = 1
    out = task.visualize({"image": np.zeros((1, 2, 2, 3), np.float32)}, {"classes": np.zeros((1, 2, 2, 1), np.int32)}, probs)
    assert (out["gt"] == 0).all() and (out["pred"] == np.array([255, 0, 0], np.uint8)).all()
