"""ClassificationTask: rslearn parity of process_inputs/process_output (tasks_golden.json),
tf.data tracing, export layer, metric accumulation."""

import numpy as np
import pytest
import tensorflow as tf

from golden_tasks_helpers import (
    feature_records,
    golden_records,
    metadata_dict,
    metrics_golden,
    heads_npz,
    process_inputs_in_dataset,
    sample_metadata,
    tasks_golden,
    vector_input,
)
from rskeras.train.metrics import metric_results
from rskeras.train.tasks.classification import ClassificationHead, ClassificationTask

CONFIGS = ["classification", "classification_filters_ignored", "classification_binary_threshold"]


def build(entry):
    return ClassificationTask(**entry["task"]["init_args"])


@pytest.mark.parametrize("name", CONFIGS)
def test_process_inputs_golden_in_tf_data(name):
    entry = tasks_golden()[name]
    task = build(entry)
    examples = [
        ({"targets": vector_input(ex["raw_inputs"]["targets"], task.vector_property_names())}, metadata_dict(ex["metadata"]))
        for ex in entry["process_inputs"]
    ]
    results = process_inputs_in_dataset(task, examples)
    for ex, (inputs, target) in zip(entry["process_inputs"], results):
        assert inputs == {}
        assert int(target["class"]) == ex["target"]["class"]["value"]
        assert float(target["valid"]) == ex["target"]["valid"]["value"]
        assert target["class"].dtype == np.int32 and target["valid"].dtype == np.float32


@pytest.mark.parametrize("name", CONFIGS)
def test_process_output_golden(name):
    entry = tasks_golden()[name]
    task = build(entry)
    for ex in entry["process_output"]:
        result = task.process_output(np.asarray(ex["raw_output"], np.float32), sample_metadata(ex["metadata"]))
        assert feature_records(result) == golden_records(ex["result"])


def test_process_inputs_errors_and_eager():
    task = ClassificationTask(property_name="category", classes=["a", "b"])
    md = metadata_dict({"window_bounds": [0, 0, 4, 4], "crop_bounds": [0, 0, 4, 4], "window_name": "w0"})
    vec = vector_input([{"wkt": "POINT (1 1)", "properties": {"category": "zebra"}}], ["category"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="not one of"):
        task.process_inputs({"targets": vec}, md)
    empty = vector_input([{"wkt": "POINT (1 1)", "properties": {"other": 1}}], ["category"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="no feature with property"):
        task.process_inputs({"targets": empty}, md)
    assert task.process_inputs({"targets": vec}, md, load_targets=False) == ({}, {})
    with pytest.raises(ValueError, match="exactly 2 classes"):
        ClassificationTask(property_name="c", classes=["a", "b", "c"], positive_class="a", positive_class_threshold=0.3)
    with pytest.raises(ValueError, match="not found in classes"):
        ClassificationTask(property_name="c", classes=["a", "b"], positive_class="z", positive_class_threshold=0.3)
    with pytest.raises(ValueError, match="1-D"):
        task.process_output(np.zeros((2, 2), np.float32), sample_metadata({"window_bounds": [0, 0, 1, 1], "crop_bounds": [0, 0, 1, 1]}))


def test_output_layer_threshold_and_argmax():
    probs = tf.constant([[0.75, 0.25], [0.65, 0.35], [0.7, 0.3]], tf.float32)
    task = build(tasks_golden()["classification_binary_threshold"])
    out = task.output_layer()(probs)
    np.testing.assert_array_equal(out["class_ids"].numpy(), [0, 1, 1])  # 0.3f >= 0.3f
    plain = ClassificationTask(property_name="c", classes=["a", "b"]).output_layer()(probs)
    np.testing.assert_array_equal(plain["class_ids"].numpy(), [0, 0, 0])
    np.testing.assert_allclose(plain["probabilities"].numpy(), probs.numpy())


def _update(metrics, b):
    z = heads_npz()
    p = f"in/metrics/classification/b{b}/"
    targets = {"class": tf.constant(z[p + "class"].astype(np.int32)), "valid": tf.constant(z[p + "valid"])}
    for m in metrics.values():
        m.update_state(tf.constant(z[p + "probs"]), targets)


def test_metrics_accumulate_over_batches_and_reset():
    entry = metrics_golden()["classification_macro_auroc"]
    task = ClassificationTask(**entry["task"]["init_args"])
    metrics = task.get_metrics()
    expected = {k[len("val_"):]: v for k, v in entry["values"].items()}
    _update(metrics, 0)
    first = metric_results(metrics)
    assert first != expected  # one batch differs from the epoch value
    _update(metrics, 1)
    _update(metrics, 2)
    got = metric_results(metrics)
    for k, v in expected.items():
        assert abs(got[k] - v) <= 1e-6, k
    for m in metrics.values():
        m.reset_state()
    _update(metrics, 0)
    assert metric_results(metrics) == first


def test_metrics_update_inside_tf_function():
    entry = metrics_golden()["classification_macro_auroc"]
    task = ClassificationTask(**entry["task"]["init_args"], enable_confusion_matrix=True)
    metrics = task.get_metrics()
    z = heads_npz()

    @tf.function
    def step(probs, cls, valid):
        for m in metrics.values():
            m.update_state(probs, {"class": cls, "valid": valid})

    for b in range(3):
        p = f"in/metrics/classification/b{b}/"
        step(tf.constant(z[p + "probs"]), tf.constant(z[p + "class"].astype(np.int32)), tf.constant(z[p + "valid"]))
    got = metric_results(metrics)
    assert "confusion_matrix" not in got
    for k, v in entry["values"].items():
        assert abs(got[k[4:]] - v) <= 1e-6, k
    cm = metrics["confusion_matrix"].result().numpy()
    assert cm.shape == (4, 4) and cm.sum() == sum(int(z[f"in/metrics/classification/b{b}/valid"].sum()) for b in range(3))


def test_visualize_shapes():
    task = ClassificationTask(property_name="c", classes=["a", "b"])
    image = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 4)).astype(np.float32)
    out = task.visualize({"image": image}, {"class": np.int32(1), "valid": np.float32(1)}, np.array([0.2, 0.8], np.float32))
    assert out["image"].shape == (8, 8, 3) and out["image"].dtype == np.uint8


def test_head_in_function():
    head = ClassificationHead()
    logits = tf.constant([[1.0, 2.0], [0.5, -1.0]])
    out = tf.function(lambda x, c, v: head(x, targets={"class": c, "valid": v}))(
        logits, tf.constant([1, 0]), tf.constant([1.0, 0.0])
    )
    ce0 = -np.log(np.exp(2.0) / (np.exp(1.0) + np.exp(2.0)))
    np.testing.assert_allclose(out["loss_dict"]["cls"].numpy(), ce0 / 2, rtol=1e-6)
