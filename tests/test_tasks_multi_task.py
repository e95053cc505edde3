"""MultiTask (rslearn parity of nested targets/outputs, metric renaming and skipping,
export naming) and EmbeddingTask/EmbeddingHead."""

import importlib

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
from rskeras.train.tasks.classification import ClassificationTask
from rskeras.train.tasks.detection import DetectionTask
from rskeras.train.tasks.embedding import EmbeddingHead, EmbeddingTask
from rskeras.train.tasks.multi_task import MultiTask
from rskeras.train.tasks.segmentation import SegmentationTask


def instantiate(spec):
    module, _, name = spec["class_path"].replace("rslearn.", "rskeras.", 1).rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec["init_args"])


def golden_multi_task():
    entry = tasks_golden()["multi_task"]
    args = entry["task"]["init_args"]
    return entry, MultiTask({k: instantiate(v) for k, v in args["tasks"].items()}, args["input_mapping"])


def test_process_inputs_golden_in_tf_data():
    entry, task = golden_multi_task()
    npz = tasks_npz()
    ex = entry["process_inputs"][0]
    raw = {
        "label": vector_input(ex["raw_inputs"]["label"], task.vector_property_names()),
        "segment_label": raster_cthw_to_thwc(npz[ex["raw_inputs"]["segment_label"]["npz"]]),
        "image": np.zeros((1, 8, 8, 1), np.float32),
    }
    [(inputs, target)] = process_inputs_in_dataset(task, [(raw, metadata_dict(ex["metadata"]))])
    assert inputs == {"classify": {}, "segment": {}}
    want = ex["target"]
    assert int(target["classify"]["class"]) == want["classify"]["class"]["value"]
    assert float(target["classify"]["valid"]) == want["classify"]["valid"]["value"]
    for key in ("classes", "valid"):
        np.testing.assert_array_equal(target["segment"][key], raster_cthw_to_thwc(npz[want["segment"][key]["npz"]]))


def test_process_output_golden():
    entry, task = golden_multi_task()
    npz = tasks_npz()
    ex = entry["process_output"][0]
    raw = {
        "classify": np.asarray(ex["raw_output"]["classify"], np.float32),
        "segment": np.transpose(npz[ex["raw_output"]["segment"]["npz"]], (1, 2, 0)),
    }
    result = task.process_output(raw, sample_metadata(ex["metadata"]))
    assert feature_records(result["classify"]) == golden_records(ex["result"]["classify"])
    np.testing.assert_array_equal(result["segment"], npz[ex["result"]["segment"]["npz"]])
    only = task.process_output({"segment": raw["segment"]}, sample_metadata(ex["metadata"]))
    assert list(only) == ["segment"]


def test_dataset_source_selects_task_and_missing_input_errors():
    _, task = golden_multi_task()
    md = metadata_dict({"window_bounds": [0, 0, 8, 8], "crop_bounds": [0, 0, 8, 8], "dataset_source": "segment"})
    raw = {"segment_label": np.zeros((1, 8, 8, 1), np.float32)}
    inputs, targets = task.process_inputs(raw, md)
    assert list(targets) == ["segment"]
    md["dataset_source"] = ""
    with pytest.raises(KeyError, match="classify"):
        task.process_inputs(raw, md)
    assert task.process_inputs(raw, md, load_targets=False) == ({"classify": {}, "segment": {}}, {"classify": {}, "segment": {}})


def test_property_names_padding_and_export_names():
    task = MultiTask(
        {
            "det": DetectionTask(property_name="cat", classes=["bg", "a"]),
            "cls": ClassificationTask(property_name="cat", classes=["a", "b"]),
            "reg": instantiate({"class_path": "rslearn.train.tasks.regression.RegressionTask", "init_args": {"property_name": "len"}}),
        },
        {"det": {"d": "targets"}, "cls": {"c": "targets"}, "reg": {"r": "targets"}},
    )
    assert task.vector_property_names() == ["cat", "len"]
    assert task.target_padding_values() == {"det": {"labels": -1}}
    out = task.output_layer()({"cls": tf.constant([[0.2, 0.8]]), "reg": tf.constant([2.0])})
    assert sorted(out) == ["cls_class_ids", "cls_probabilities", "reg_value"]
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTask({"a": EmbeddingTask()}, {"b": {}})


def test_metrics_renamed_skipped_and_accumulated():
    cls_entry = metrics_golden()["classification"]
    seg_entry = metrics_golden()["segmentation_miou_ignore_missing"]
    task = MultiTask(
        {"classify": ClassificationTask(**cls_entry["task"]["init_args"]), "segment": SegmentationTask(**seg_entry["task"]["init_args"])},
        {"classify": {"label": "targets"}, "segment": {"seg": "targets"}},
    )
    metrics = task.get_metrics()
    assert "classify/accuracy" in metrics and "segment/mean_iou" in metrics
    z = heads_npz()
    for b in range(3):
        p = f"in/metrics/classification/b{b}/"
        q = f"in/metrics/segmentation_miou_ignore_missing/b{b}/"
        outputs = {"classify": tf.constant(z[p + "probs"]), "segment": tf.constant(np.transpose(z[q + "probs"], (0, 2, 3, 1)))}
        targets = {
            "classify": {"class": tf.constant(z[p + "class"].astype(np.int32)), "valid": tf.constant(z[p + "valid"])},
            "segment": {
                "classes": tf.constant(z[q + "classes"].astype(np.int32))[:, None, :, :, None],
                "valid": tf.constant(z[q + "valid"])[:, None, :, :, None],
            },
        }
        for m in metrics.values():
            m.update_state(outputs, targets)
        # A batch of another dataset source (only the classify task) leaves segment alone.
        for m in metrics.values():
            m.update_state({"segment": outputs["segment"]}, {"classify": targets["classify"]})
    got = metric_results(metrics)
    for k, v in cls_entry["values"].items():
        assert abs(got["classify/" + k[4:]] - v) <= 1e-6, k
    assert abs(got["segment/accuracy"] - seg_entry["values"]["val_accuracy"]) <= 1e-6
    for k, v in seg_entry["values"].items():
        if k != "val_accuracy":
            assert abs(got["segment/" + k[4:]] - v) <= 1e-6, k
    for m in metrics.values():
        m.reset_state()
    assert metric_results(metrics)["classify/accuracy"] == 0.0


def test_embedding_task_and_head():
    task = EmbeddingTask()
    assert task.process_inputs({}, {}) == ({}, {}) and task.get_metrics() == {}
    out = task.process_output(np.arange(24, dtype=np.float32).reshape(2, 3, 4), None)
    assert out.shape == (4, 2, 3) and out[1, 0, 0] == 1
    with pytest.raises(ValueError, match="H×W×C"):
        task.process_output(np.zeros((2, 3)), None)
    head = EmbeddingHead()
    x = tf.ones((2, 3, 3, 5))
    result = head([x])
    assert result["outputs"] is x and float(result["loss_dict"]["loss"]) == 0.0
    with pytest.raises(ValueError, match="one feature map"):
        head([x, x])
    assert task.output_layer()(x)["embeddings"].shape == (2, 3, 3, 5)
