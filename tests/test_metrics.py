"""Metric parity with every entry of metrics_golden.json (rslearn/torchmetrics values as
logged, after 3 batches), the MetricCollection flattening rule, edge cases, and metric
accumulation under a 2-replica MirroredStrategy (in a subprocess with 2 logical CPUs)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from golden_tasks_helpers import heads_npz, metrics_golden
from rskeras.train.mean_ap import DetectionImage, coco_map
from rskeras.train.metrics import (
    MulticlassRankingMetric,
    RegressionSums,
    flatten_metric_results,
    metric_results,
    torch_linspace_f32,
)
from rskeras.train.tasks.classification import ClassificationTask
from rskeras.train.tasks.detection import DetectionTask
from rskeras.train.tasks.per_pixel_regression import PerPixelRegressionTask
from rskeras.train.tasks.regression import RegressionTask
from rskeras.train.tasks.segmentation import SegmentationTask

TASKS = {
    "classification": ClassificationTask,
    "classification_macro_auroc": ClassificationTask,
    "segmentation_nodata0": SegmentationTask,
    "segmentation_nodata255_all": SegmentationTask,
    "segmentation_miou_ignore_missing": SegmentationTask,
    "regression": RegressionTask,
    "per_pixel_regression": PerPixelRegressionTask,
    "detection": DetectionTask,
    "detection_two_threshold_lists_flatten": DetectionTask,
    "detection_distance": DetectionTask,
}


def golden_batch(name, b):
    """(outputs, targets) of batch b of a metrics_golden entry, in rskeras batch form."""
    z = heads_npz()
    if name.startswith("classification"):
        p = f"in/metrics/classification/b{b}/"
        return tf.constant(z[p + "probs"]), {"class": tf.constant(z[p + "class"].astype(np.int32)), "valid": tf.constant(z[p + "valid"])}
    if name.startswith("segmentation"):
        p = f"in/metrics/{name}/b{b}/"
        targets = {
            "classes": tf.constant(z[p + "classes"].astype(np.int32))[:, None, :, :, None],
            "valid": tf.constant(z[p + "valid"])[:, None, :, :, None],
        }
        return tf.constant(np.transpose(z[p + "probs"], (0, 2, 3, 1))), targets
    if name == "regression":
        p = f"in/metrics/regression/b{b}/"
        return tf.constant(z[p + "preds"]), {"value": tf.constant(z[p + "value"]), "valid": tf.constant(z[p + "valid"])}
    if name == "per_pixel_regression":
        p = f"in/metrics/per_pixel_regression/b{b}/"
        return tf.constant(z[p + "preds"]), {k: tf.constant(z[p + k])[:, None, :, :, None] for k in ("values", "valid")}
    from test_tasks_detection import detection_batch

    return detection_batch(b)


def tolerance(key):
    if key.endswith("mAP"):
        return 1e-4
    return 1e-6


@pytest.mark.parametrize("name", list(TASKS))
def test_metrics_golden_parity(name):
    entry = metrics_golden()[name]
    metrics = TASKS[name](**entry["task"]["init_args"]).get_metrics()
    for b in range(3):
        outputs, targets = golden_batch(name, b)
        for m in metrics.values():
            m.update_state(outputs, targets)
    got = {"val_" + k: v for k, v in metric_results(metrics).items()}
    assert set(got) == set(entry["values"])
    worst = 0.0
    for key, want in entry["values"].items():
        diff = abs(got[key] - want)
        worst = max(worst, diff)
        assert diff <= max(tolerance(key), 1e-6 * abs(want)), (key, got[key], want)
    print(f"{name}: max abs diff {worst:.3g}")


def test_flatten_collision_rule():
    assert flatten_metric_results({"a": 1.0, "m": {"x": 2.0, "y": 3.0}}) == {"a": 1.0, "x": 2.0, "y": 3.0}
    # Two dict metrics sharing a key: every dict key is prefixed.
    got = flatten_metric_results({"F1": {"f1/avg": 1.0}, "precision": {"f1/avg": 2.0}, "acc": 0.5})
    assert got == {"F1_f1/avg": 1.0, "precision_f1/avg": 2.0, "acc": 0.5}
    # A dict key equal to a metric name also triggers it.
    assert flatten_metric_results({"acc": 1.0, "m": {"acc": 2.0}}) == {"acc": 1.0, "m_acc": 2.0}


def test_torch_linspace_values():
    iou = torch_linspace_f32(0.5, 0.95, 10)
    assert iou[1] == np.float32(0.55) and iou.dtype == np.float32
    rec = torch_linspace_f32(0.0, 1.0, 101)
    # torch's kernel gives 0.53000003 where float32(0.53) is 0.53.
    assert rec[53] == np.float32(0.53000003) and rec[52] == np.float32(0.52) and rec[100] == 1.0


def test_regression_edge_cases():
    r2 = RegressionSums("r2")
    r2.update_state(tf.constant([1.0]), tf.constant([2.0]))
    assert np.isnan(float(r2.result()))  # torchmetrics raises with < 2 samples
    r2.update_state(tf.constant([2.0]), tf.constant([2.0]))
    r2.reset_state()
    r2.update_state(tf.constant([3.0, 3.0]), tf.constant([3.0, 3.0]))
    assert float(r2.result()) == 1.0  # rss ~ 0 and tss ~ 0
    r2.reset_state()
    r2.update_state(tf.constant([1.0, 5.0]), tf.constant([3.0, 3.0]))
    assert float(r2.result()) == 0.0  # only tss ~ 0
    acc = RegressionSums("accuracy", within_factor=0.1)
    acc.update_state(tf.constant([-10.0, 10.5, 12.0]), tf.constant([-10.0, 10.0, 10.0]), tf.constant([1.0, 1.0, 0.0]))
    assert float(acc.result()) == 0.5  # negative labels: empty interval
    mse = RegressionSums("mse")
    assert np.isnan(float(mse.result()))


def test_ranking_metric_edge_cases():
    auroc = MulticlassRankingMetric(3, kind="auroc")
    ap = MulticlassRankingMetric(3, kind="average_precision")
    probs = tf.constant([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = tf.constant([0, 1, 0, 1])
    for m in (auroc, ap):
        m.update_state(probs, labels)
    # Class 2 has no positives: AUROC 0 (kept), AP nan (dropped).
    assert float(auroc.result()) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert float(ap.result()) == pytest.approx((1.0 + 0.75) / 2)
    with pytest.raises(ValueError, match="thresholds"):
        MulticlassRankingMetric(3, thresholds=10)


def test_coco_map_simple_cases():
    box = np.array([[0, 0, 10, 10]], np.float32)
    perfect = DetectionImage(box, np.array([0.9], np.float32), np.array([1]), box, np.array([1]))
    assert coco_map([perfect]) == pytest.approx(1.0)
    assert coco_map([]) == -1.0
    no_gt = DetectionImage(box, np.array([0.9], np.float32), np.array([1]), np.zeros((0, 4), np.float32), np.zeros(0, int))
    assert coco_map([no_gt]) == -1.0
    # A second category with no ground truth does not count.
    assert coco_map([perfect, DetectionImage(box, np.array([0.5], np.float32), np.array([2]), box[:0], np.zeros(0, int))]) == pytest.approx(1.0)


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_metrics import TASKS, golden_batch
    from golden_tasks_helpers import metrics_golden
    from rskeras.train.metrics import metric_results
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {{}}
    for name in ["classification_macro_auroc", "segmentation_nodata255_all", "regression", "detection"]:
        entry = metrics_golden()[name]
        with strategy.scope():
            metrics = TASKS[name](**entry["task"]["init_args"]).get_metrics()
        @tf.function
        def step(outputs, targets):
            def replica(o, t):
                for m in metrics.values():
                    m.update_state(o, t)
            strategy.run(replica, args=(outputs, targets))
        for b in range(3):
            outputs, targets = golden_batch(name, b)
            n = int(tf.nest.flatten(targets)[0].shape[0])
            # Replica 0 gets the first half of the examples, replica 1 the rest.
            def part(ctx):
                lo, hi = (0, (n + 1) // 2) if ctx.replica_id_in_sync_group == 0 else ((n + 1) // 2, n)
                return tf.nest.map_structure(lambda t: t[lo:hi], (outputs, targets))
            o, t = strategy.experimental_distribute_values_from_function(part)
            step(o, t)
        got = metric_results(metrics)
        out[name] = max(abs(got[k[4:]] - v) for k, v in entry["values"].items())
    print("RESULT" + json.dumps(out))
    """
)


def test_metrics_under_mirrored_strategy():
    script = DISTRIBUTED_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    import json

    for name, diff in json.loads(lines[0][len("RESULT"):]).items():
        assert diff <= (1e-4 if name == "detection" else 2e-6), (name, diff)
