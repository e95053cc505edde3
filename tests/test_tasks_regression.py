"""RegressionTask and PerPixelRegressionTask: rslearn parity (tasks_golden.json) in tf.data,
metric resolution, export layers, metric accumulation."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from golden_tasks_helpers import (
    feature_records,
    golden_records,
    heads_npz,
    metadata_dict,
    metrics_golden,
    process_inputs_in_dataset,
    raster_cthw_to_thwc,
    sample_metadata,
    tasks_golden,
    tasks_npz,
    vector_input,
)
from rskeras.train.metrics import metric_results
from rskeras.train.tasks.per_pixel_regression import PerPixelRegressionTask
from rskeras.train.tasks.regression import RegressionTask


def test_regression_process_inputs_golden_in_tf_data():
    entry = tasks_golden()["regression"]
    task = RegressionTask(**entry["task"]["init_args"])
    examples = [
        ({"targets": vector_input(ex["raw_inputs"]["targets"], task.vector_property_names())}, metadata_dict(ex["metadata"]))
        for ex in entry["process_inputs"]
    ]
    for ex, (_, target) in zip(entry["process_inputs"], process_inputs_in_dataset(task, examples)):
        assert target["value"].dtype == np.float32
        assert target["value"] == np.float32(ex["target"]["value"]["value"])
        assert target["valid"] == np.float32(ex["target"]["valid"]["value"])


def test_regression_process_output_golden():
    entry = tasks_golden()["regression"]
    task = RegressionTask(**entry["task"]["init_args"])
    for ex in entry["process_output"]:
        result = task.process_output(np.float32(ex["raw_output"]), sample_metadata(ex["metadata"]))
        assert feature_records(result) == golden_records(ex["result"])
    with pytest.raises(ValueError, match="scalar"):
        task.process_output(np.zeros(2, np.float32), sample_metadata(entry["process_output"][0]["metadata"]))


def test_per_pixel_process_inputs_golden_in_tf_data():
    entry = tasks_golden()["per_pixel_regression"]
    task = PerPixelRegressionTask(**entry["task"]["init_args"])
    npz = tasks_npz()
    examples = [
        ({"targets": raster_cthw_to_thwc(npz[ex["raw_inputs"]["targets"]["npz"]])}, metadata_dict(ex["metadata"]))
        for ex in entry["process_inputs"]
    ]
    for ex, (_, target) in zip(entry["process_inputs"], process_inputs_in_dataset(task, examples)):
        for key in ("values", "valid"):
            want = raster_cthw_to_thwc(npz[ex["target"][key]["npz"]])
            assert target[key].shape == want.shape and target[key].dtype == np.float32
            np.testing.assert_array_equal(target[key], want)


def test_per_pixel_process_output_golden_and_errors():
    entry = tasks_golden()["per_pixel_regression"]
    task = PerPixelRegressionTask(**entry["task"]["init_args"])
    npz = tasks_npz()
    ex = entry["process_output"][0]
    got = task.process_output(npz[ex["raw_output"]["npz"]], sample_metadata(ex["metadata"]))
    np.testing.assert_array_equal(got, npz[ex["result"]["npz"]])
    with pytest.raises(ValueError, match="H×W"):
        task.process_output(np.zeros((1, 2, 2), np.float32), sample_metadata(ex["metadata"]))
    with pytest.raises(ValueError, match="one band and one timestep"):
        task.process_inputs({"targets": np.zeros((2, 4, 4, 1), np.float32)}, metadata_dict(ex["metadata"]))


@pytest.mark.parametrize("cls", [RegressionTask, PerPixelRegressionTask])
def test_metric_resolution(cls):
    args = {"property_name": "x"} if cls is RegressionTask else {}
    assert cls(**args).metrics == ["mse"]
    with pytest.warns(FutureWarning, match="deprecated"):
        assert cls(**args, metric_mode="l1").metrics == ["l1"]
    with pytest.warns(FutureWarning, match="ignored"):
        assert cls(**args, metric_mode="l1", metrics=["r2", "mape"]).metrics == ["r2", "mape"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cls(**args, metrics=["rmse"]).metrics == ["rmse"]
    with pytest.raises(ValueError, match="at least one"):
        cls(**args, metrics=[])
    with pytest.raises(ValueError, match="invalid metrics"):
        cls(**args, metrics=["mse", "huber"])


def test_export_layers_unscale():
    out = RegressionTask(property_name="x", scale_factor=0.1).output_layer()(tf.constant([3.3, -0.25]))
    np.testing.assert_allclose(out["value"].numpy(), [33.0, -2.5], rtol=1e-6)
    out = PerPixelRegressionTask(scale_factor=0.01).output_layer()(tf.ones((2, 3, 4)))
    assert out["values"].shape == (2, 3, 4)
    np.testing.assert_allclose(out["values"].numpy(), 100.0, rtol=1e-6)


def _feed_regression(metrics, b):
    z = heads_npz()
    p = f"in/metrics/regression/b{b}/"
    for m in metrics.values():
        m.update_state(tf.constant(z[p + "preds"]), {"value": tf.constant(z[p + "value"]), "valid": tf.constant(z[p + "valid"])})


def _feed_ppr(metrics, b):
    z = heads_npz()
    p = f"in/metrics/per_pixel_regression/b{b}/"
    targets = {k: tf.constant(z[p + k])[:, None, :, :, None] for k in ("values", "valid")}
    for m in metrics.values():
        m.update_state(tf.constant(z[p + "preds"]), targets)


@pytest.mark.parametrize("name,feed", [("regression", _feed_regression), ("per_pixel_regression", _feed_ppr)])
def test_metrics_accumulate_and_reset(name, feed):
    entry = metrics_golden()[name]
    cls = RegressionTask if name == "regression" else PerPixelRegressionTask
    metrics = cls(**entry["task"]["init_args"]).get_metrics()
    feed(metrics, 0)
    first = metric_results(metrics)
    for b in (1, 2):
        feed(metrics, b)
    got = metric_results(metrics)
    for k, v in entry["values"].items():
        assert got[k[4:]] == pytest.approx(v, rel=1e-6, abs=1e-6), k
    for m in metrics.values():
        m.reset_state()
    feed(metrics, 0)
    assert metric_results(metrics) == first


def test_visualize_shapes():
    image = np.zeros((1, 4, 4, 3), np.float32)
    reg = RegressionTask(property_name="x", scale_factor=0.5)
    assert reg.visualize({"image": image}, {"value": np.float32(1)}, np.float32(2))["image"].shape == (4, 4, 3)
    ppr = PerPixelRegressionTask()
    out = ppr.visualize({"image": image}, {"values": np.full((1, 4, 4, 1), 0.5, np.float32)}, np.ones((4, 4), np.float32))
    assert out["gt"].shape == (4, 4, 3) and out["gt"][0, 0, 0] == 127 and out["pred"][0, 0, 0] == 255
