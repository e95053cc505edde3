"""The JSON description written beside every export (``rskeras_export.json`` in a
SavedModel's ``assets.extra``, ``<model>.tflite.json`` beside a TFLite file).

It tells clients what the exported model takes and returns::

    {"format_version": 1, "name": ..., "format": "saved_model" | "tflite",
     "inputs": [{"name", "bands", "dtype", "num_timesteps"}],
     "preprocessing": ["Normalize (data.init_args.default_config.transforms[0])", ...],
     "task": {"kind": "classification" | "regression" | "per_pixel_regression" |
              "segmentation" | "detection" | "embedding",
              "outputs": {role: output name}, class names, property name, ...}
              or {"kind": "multi_task", "tasks": {name: <single task>}},
     "input_size": [H, W] or null, "quantize": ... (TFLite)}

No TensorFlow import: edge clients read it too.
"""

from __future__ import annotations

from typing import Any

from rskeras.export.errors import ExportError

EXPORT_FORMAT_VERSION = 1
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
METADATA_FILE = "rskeras_export.json"


def describe_task(task: Any, prefix: str = "") -> dict[str, Any]:
    """JSON description of a task's exported outputs (kind, output names, class names)."""
    kind = type(task).__name__
    p = prefix
    if kind == "MultiTask":
        return {"kind": "multi_task", "tasks": {name: describe_task(t, f"{name}_") for name, t in task.tasks.items()}}
    if kind == "ClassificationTask":
        return {
            "kind": "classification",
            "outputs": {"probabilities": f"{p}probabilities", "class_ids": f"{p}class_ids"},
            "property_name": task.property_name,
            "classes": list(task.classes),
            "read_class_id": bool(task.read_class_id),
            "prob_property": task.prob_property,
            "positive_class": task.positive_class,
            "positive_class_threshold": task.positive_class_threshold,
        }
    if kind == "RegressionTask":
        return {"kind": "regression", "outputs": {"value": f"{p}value"}, "property_name": task.property_name}
    if kind == "PerPixelRegressionTask":
        return {"kind": "per_pixel_regression", "outputs": {"values": f"{p}values"}}
    if kind == "SegmentationTask":
        return {
            "kind": "segmentation",
            "outputs": {"class_ids": f"{p}class_ids", "probabilities": f"{p}probabilities"},
            "num_classes": task.num_classes,
            "class_names": task.class_names,
        }
    if kind == "DetectionTask":
        return {
            "kind": "detection",
            "outputs": {k: f"{p}{k}" for k in ("boxes", "scores", "labels", "num_detections")},
            "property_name": task.property_name,
            "classes": list(task.classes),
            "read_class_id": bool(task.read_class_id),
            "score_threshold": task.score_threshold,
        }
    if kind == "EmbeddingTask":
        return {"kind": "embedding", "outputs": {"embeddings": f"{p}embeddings"}}
    raise ExportError(
        f"task {kind} has no export description "
        "(known: classification, regression, per-pixel regression, segmentation, detection, embedding, multi-task)"
    )


def single_tasks(description: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task name or "": description}`` of every single task of a task description."""
    if description["kind"] == "multi_task":
        return dict(description["tasks"])
    return {"": description}
