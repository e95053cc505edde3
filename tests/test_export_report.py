"""Parity statistics of the export report on hand-made outputs."""

import numpy as np

from rskeras.export.report import Comparison, VariantResult, finalize, format_table


def classification_description():
    return {"task": {"kind": "classification", "outputs": {"probabilities": "probabilities", "class_ids": "class_ids"}}}


def test_agreement_and_decisive_agreement():
    comparison = Comparison(classification_description())
    # A near tie (margin 0.02) flips; a decisive prediction agrees.
    comparison.add({"probabilities": np.array([[0.51, 0.49]], np.float32), "class_ids": np.array([0])}, {"probabilities": np.array([[0.49, 0.51]]), "class_ids": np.array([1])})
    comparison.add({"probabilities": np.array([[0.9, 0.1]], np.float32), "class_ids": np.array([0])}, {"probabilities": np.array([[0.88, 0.12]]), "class_ids": np.array([0])})
    assert comparison.agreement() == 0.5 and comparison.agreement(decisive=True) == 1.0
    assert abs(comparison.diffs["probabilities"] - 0.02) < 1e-6


def test_multi_task_reports_the_worst_task_and_segmentation_miou():
    description = {
        "task": {
            "kind": "multi_task",
            "tasks": {
                "seg": {"kind": "segmentation", "num_classes": 2, "outputs": {"class_ids": "seg_class_ids", "probabilities": "seg_probabilities"}},
                "cls": {"kind": "classification", "outputs": {"probabilities": "cls_probabilities", "class_ids": "cls_class_ids"}},
            },
        }
    }
    comparison = Comparison(description)
    seg_probs = np.zeros((1, 2, 2, 2), np.float32)
    seg_probs[..., 0] = 1
    ref = {"seg_class_ids": np.zeros((1, 2, 2), np.int32), "seg_probabilities": seg_probs, "cls_class_ids": np.array([1]), "cls_probabilities": np.array([[0.2, 0.8]], np.float32)}
    out = dict(ref, seg_class_ids=np.array([[[0, 0], [0, 1]]], np.int32))
    comparison.add(ref, out)
    assert comparison.agreement() == 0.75  # segmentation 3/4 pixels, classification 1/1
    assert comparison.miou() == 0.75 / 2  # class 0: IoU 3/4, class 1: 0/1


def test_detections_compare_as_matched_pairs():
    names = {k: k for k in ("boxes", "scores", "labels", "num_detections")}
    description = {"task": {"kind": "detection", "outputs": names, "score_threshold": 0.5}}
    ref = {
        "boxes": np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.9, 0.8, 0.0]], np.float32),
        "labels": np.array([[1, 2, 0]], np.int32),
        "num_detections": np.array([2], np.int32),
    }
    # Same detections in the other order, one shifted by 1 px; a low-score extra box.
    out = {
        "boxes": np.array([[[21, 20, 31, 30], [0, 0, 10, 10], [50, 50, 60, 60]]], np.float32),
        "scores": np.array([[0.85, 0.9, 0.1]], np.float32),
        "labels": np.array([[2, 1, 1]], np.int32),
        "num_detections": np.array([3], np.int32),
    }
    comparison = Comparison(description)
    comparison.add(ref, out)
    assert comparison.agreement() == 1.0
    assert comparison.diffs == {"boxes": 1.0, "scores": np.float32(0.85) - np.float32(0.8)}


def test_targets_and_table():
    rows = finalize(
        [
            VariantResult("keras", latency_ms=1.0, max_abs_diff=0.0),
            VariantResult("saved_model", size_bytes=4096, latency_ms=1.0, max_abs_diff=2e-5),
            VariantResult("tflite_none", size_bytes=1000, latency_ms=1.0, max_abs_diff=1e-5),
            VariantResult("tflite_int8", size_bytes=400, latency_ms=0.5, max_abs_diff=0.1, agreement=0.98),
        ]
    )
    ok = {r.name: r.ok for r in rows}
    assert ok == {"keras": None, "saved_model": False, "tflite_none": True, "tflite_int8": False}
    assert rows[3].failures == ["size ratio 0.400 > 0.3"]
    table = format_table(rows, 5, "title")
    assert "NO: max_abs_diff 2e-05 > 1e-05" in table and "(0.40x)" in table


def test_a_task_kind_the_export_code_does_not_know_describes_itself():
    """A new task needs no edit in the export code: its description's ``merge`` and output
    roles drive the report and the edge merge (rskeras.export.description)."""
    import pytest

    from rskeras.export.description import describe_task, merge_of, raster_output
    from rskeras.export.errors import ExportError
    from rskeras.train.tasks.segmentation import SegmentationTask
    from rskeras.train.tasks.task import Task

    task = {
        "kind": "change_detection",
        "outputs": {"class_ids": "change_class_ids", "probabilities": "change_probabilities"},
        "merge": "raster",
        "raster": "class_ids",
        "num_classes": 2,
    }
    assert merge_of(task) == "raster"
    assert raster_output(task) == "change_class_ids" and raster_output(task, probabilities=True) == "change_probabilities"
    comparison = Comparison({"task": task})
    probs = np.zeros((1, 2, 2, 2), np.float32)
    probs[..., 1] = 1
    ref = {"change_class_ids": np.ones((1, 2, 2), np.int32), "change_probabilities": probs}
    comparison.add(ref, dict(ref, change_class_ids=np.array([[[1, 1], [1, 0]]], np.int32)))
    assert comparison.agreement() == 0.75 and comparison.miou() == 0.75 / 2
    # Old descriptions (no merge) get it from their kind; the tasks say it themselves.
    assert merge_of({"kind": "detection", "outputs": {}}) == "boxes"
    described = describe_task(SegmentationTask(num_classes=3), prefix="seg_")
    assert described["merge"] == "raster" and described["outputs"]["class_ids"] == "seg_class_ids"
    assert described["dtypes"] == {"class_ids": "int32", "probabilities": "float32"}
    with pytest.raises(ExportError, match="Task has no export description"):
        describe_task(Task())
