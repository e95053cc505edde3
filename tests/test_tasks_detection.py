"""DetectionTask: rslearn parity of target boxes and prediction features (tasks_golden.json)
in tf.data, padded batching, export layer, metric accumulation and matching."""

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
    sample_metadata,
    tasks_golden,
    tasks_npz,
    vector_input,
)
from rskeras.train.metrics import metric_results
from rskeras.train.tasks.detection import DetectionTask, max_matching

CONFIGS = ["detection_box_size", "detection_exclude_by_center_noclip", "detection_polygons"]


def examples_of(entry, task):
    return [
        ({"targets": vector_input(ex["raw_inputs"]["targets"], task.vector_property_names())}, metadata_dict(ex["metadata"]))
        for ex in entry["process_inputs"]
    ]


@pytest.mark.parametrize("name", CONFIGS)
def test_process_inputs_golden_in_tf_data(name):
    entry = tasks_golden()[name]
    task = DetectionTask(**entry["task"]["init_args"])
    npz = tasks_npz()
    for ex, (_, target) in zip(entry["process_inputs"], process_inputs_in_dataset(task, examples_of(entry, task))):
        want = ex["target"]
        np.testing.assert_array_equal(target["boxes"], npz[want["boxes"]["npz"]])
        np.testing.assert_array_equal(target["labels"], npz[want["labels"]["npz"]])
        assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int32
        assert int(target["valid"]) == want["valid"]["value"] and target["valid"].dtype == np.int32
        assert float(target["width"]) == want["width"]["value"] and float(target["height"]) == want["height"]["value"]


@pytest.mark.parametrize("name", CONFIGS)
def test_process_output_golden(name):
    entry = tasks_golden()[name]
    task = DetectionTask(**entry["task"]["init_args"])
    for ex in entry["process_output"]:
        raw = {
            "boxes": np.asarray(ex["raw_output"]["boxes"], np.float32),
            "scores": np.asarray(ex["raw_output"]["scores"], np.float32),
            "labels": np.asarray(ex["raw_output"]["labels"], np.int32),
        }
        result = task.process_output(raw, sample_metadata(ex["metadata"]))
        assert feature_records(result) == golden_records(ex["result"])
        # Padded form (num_detections) gives the same features.
        k = 5
        padded = {
            "boxes": np.concatenate([raw["boxes"], np.full((k, 4), 7, np.float32)]),
            "scores": np.concatenate([raw["scores"], np.full(k, 0.99, np.float32)]),
            "labels": np.concatenate([raw["labels"], np.ones(k, np.int32)]),
            "num_detections": np.int32(len(raw["scores"])),
        }
        assert feature_records(task.process_output(padded, sample_metadata(ex["metadata"]))) == golden_records(ex["result"])


def test_skip_empty_and_unknown_class_errors():
    task = DetectionTask(property_name="category", classes=["bg", "ship"], box_size=2, skip_empty_examples=True)
    md = metadata_dict({"window_bounds": [0, 0, 8, 8], "crop_bounds": [0, 0, 8, 8], "window_name": "d"})
    far = vector_input([{"wkt": "POINT (50 50)", "properties": {"category": "ship"}}], ["category"])
    _, target = task.process_inputs({"targets": far}, md)
    assert int(target["valid"]) == 0 and target["boxes"].shape == (0, 4)
    bad = vector_input([{"wkt": "POINT (1 1)", "properties": {"category": "whale"}}], ["category"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="not one of"):
        task.process_inputs({"targets": bad}, md)
    assert task.target_padding_values() == {"labels": -1}


def test_padded_batch_of_targets():
    entry = tasks_golden()["detection_box_size"]
    task = DetectionTask(**entry["task"]["init_args"])
    examples = examples_of(entry, task)
    ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=(
        {"targets": tf.nest.map_structure(lambda a: tf.TensorSpec([None] * np.ndim(a), tf.string if np.asarray(a).dtype.kind in "SO" else tf.as_dtype(np.asarray(a).dtype)), examples[0][0]["targets"])},
        {k: tf.TensorSpec(np.shape(v), tf.string if isinstance(v, str) else tf.as_dtype(np.asarray(v).dtype)) for k, v in examples[0][1].items()},
    ))
    ds = ds.map(lambda raw, md: task.process_inputs(raw, md)[1])
    pad = {"boxes": tf.constant(0.0), "labels": tf.constant(task.target_padding_values()["labels"]), "valid": tf.constant(0),
           "width": tf.constant(0.0), "height": tf.constant(0.0)}
    batch = next(iter(ds.padded_batch(3, padding_values=pad)))
    assert batch["boxes"].shape == (3, 4, 4)
    np.testing.assert_array_equal(batch["labels"].numpy(), [[1, 2, 2, 1], [2, 1, -1, -1], [2, -1, -1, -1]])


def test_output_layer_passthrough():
    out = DetectionTask(property_name="c", classes=["bg", "a"]).output_layer()(
        {"boxes": tf.zeros((2, 3, 4)), "scores": tf.zeros((2, 3)), "labels": tf.zeros((2, 3), tf.int64), "num_detections": tf.constant([1, 0])}
    )
    assert set(out) == {"boxes", "scores", "labels", "num_detections"} and out["labels"].dtype == tf.int32


def detection_batch(b, k=6, n=4):
    """Golden batch b as padded tensors (outputs K=6, targets N=4 with -1 labels)."""
    z = heads_npz()
    outs = {"boxes": np.zeros((2, k, 4), np.float32), "scores": np.zeros((2, k), np.float32),
            "labels": np.zeros((2, k), np.int32), "num_detections": np.zeros(2, np.int32)}
    tg = {"boxes": np.zeros((2, n, 4), np.float32), "labels": -np.ones((2, n), np.int32), "valid": np.zeros(2, np.int32)}
    for e in range(2):
        p = f"in/metrics/detection/b{b}/e{e}/"
        d = len(z[p + "pred_scores"])
        outs["boxes"][e, :d], outs["scores"][e, :d] = z[p + "pred_boxes"], z[p + "pred_scores"]
        outs["labels"][e, :d], outs["num_detections"][e] = z[p + "pred_labels"], d
        g = len(z[p + "target_labels"])
        tg["boxes"][e, :g], tg["labels"][e, :g], tg["valid"][e] = z[p + "target_boxes"], z[p + "target_labels"], z[p + "target_valid"]
    return {k: tf.constant(v) for k, v in outs.items()}, {k: tf.constant(v) for k, v in tg.items()}


def test_metrics_accumulate_reset_in_tf_function():
    entry = metrics_golden()["detection"]
    metrics = DetectionTask(**entry["task"]["init_args"]).get_metrics()

    @tf.function
    def step(outputs, targets):
        for m in metrics.values():
            m.update_state(outputs, targets)

    step(*detection_batch(0))
    first = metric_results(metrics)
    step(*detection_batch(1))
    step(*detection_batch(2))
    got = metric_results(metrics)
    for k, v in entry["values"].items():
        tol = 1e-4 if k == "val_mAP" else 1e-6
        assert abs(got[k[4:]] - v) <= tol, k
    for m in metrics.values():
        m.reset_state()
    assert metric_results(metrics)["mAP"] == -1.0  # no images
    step(*detection_batch(0))
    assert metric_results(metrics) == first


def test_max_matching_is_maximum():
    # Greedy row-by-row matching would take (0, 0) and leave row 1 unmatched.
    adjacency = np.array([[True, True], [True, False]])
    assert max_matching(adjacency) == 2
    assert max_matching(np.zeros((0, 3), bool)) == 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(size=(4, 5)) < 0.4
        # Brute force over permutations of columns.
        import itertools

        best = max(sum(a[r, c] for r, c in zip(range(4), perm)) for perm in itertools.permutations(range(5), 4))
        assert max_matching(a) == best


def test_visualize_boxes():
    task = DetectionTask(property_name="c", classes=["bg", "a"])
    image = np.zeros((1, 16, 16, 3), np.float32)
    out = task.visualize(
        {"image": image},
        {"boxes": np.array([[2, 2, 10, 10], [0, 0, 0, 0]], np.float32), "labels": np.array([1, -1])},
        {"boxes": np.array([[4, 4, 12, 12]], np.float32), "scores": np.array([0.4], np.float32), "labels": np.array([1])},
    )
    assert (out["gt"][2, 2] == [255, 0, 0]).all() and (out["pred"] == 0).all()
