"""The JSON description written beside every export (``rskeras_export.json`` in a
SavedModel's ``assets.extra``, ``<model>.tflite.json`` beside a TFLite file).

It tells clients what the exported model takes and returns::

    {"format_version": 1, "name": ..., "format": "saved_model" | "tflite",
     "inputs": [{"name", "bands", "dtype", "num_timesteps"}],
     "preprocessing": ["Normalize (data.init_args.default_config.transforms[0])", ...],
     "task": {"kind": "classification" | "regression" | "per_pixel_regression" |
              "segmentation" | "detection" | "embedding",
              "outputs": {role: output name}, "dtypes": {role: dtype},
              "merge": "raster" | "point" | "boxes", "raster": role (raster merges),
              class names, property name, ...}
              or {"kind": "multi_task", "tasks": {name: <single task>}},
     "input_size": [H, W] or null, "quantize": ... (TFLite)}

The task part is the task's own ``Task.export_description()``, so a new task needs no
edit here. ``merge`` says how a writer merges the outputs of a scene's crops: ``raster``
(the ``raster`` role pasted into a map, e.g. segmentation class ids), ``point`` (one
feature at each crop's origin, its property from ``class_ids`` or the single value
output) or ``boxes`` (detection boxes with scores and labels). Roles mean the same for
every task: ``class_ids`` with ``probabilities`` are class outputs, ``boxes`` /
``scores`` / ``labels`` / ``num_detections`` detections. Descriptions written before tasks
described their merge get it from their kind (``KIND_MERGES``).

No TensorFlow import: edge clients read it too.
"""

from __future__ import annotations

from typing import Any

from rskeras.export.errors import ExportError

EXPORT_FORMAT_VERSION = 1
QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int8-mixed")
# Variants calibrated on a representative dataset (static activation ranges).
CALIBRATED = ("int8", "int8-mixed")
METADATA_FILE = "rskeras_export.json"


MERGES = ("raster", "point", "boxes")
# The merge of each kind, and the role a raster merge writes, for descriptions that do not
# say (written before tasks described their exports).
KIND_MERGES = {
    "classification": "point",
    "regression": "point",
    "segmentation": "raster",
    "per_pixel_regression": "raster",
    "embedding": "raster",
    "detection": "boxes",
}
KIND_RASTERS = {"segmentation": "class_ids", "per_pixel_regression": "values", "embedding": "embeddings"}


def describe_task(task: Any, prefix: str = "") -> dict[str, Any]:
    """JSON description of a task's exported outputs: ``task.export_description(prefix)``."""
    try:
        return task.export_description(prefix)
    except NotImplementedError as e:
        raise ExportError(f"task {type(task).__name__} has no export description (Task.export_description): {e}") from None


def merge_of(task: dict[str, Any]) -> str:
    """How a writer merges the outputs of a single-task description (see module docstring)."""
    merge = task.get("merge") or KIND_MERGES.get(task.get("kind", ""))
    if merge not in MERGES:
        raise ExportError(f"task description of kind {task.get('kind')!r} says no merge (one of {MERGES})")
    return merge


def raster_output(task: dict[str, Any], probabilities: bool = False) -> str:
    """The output a raster merge writes: the ``raster`` role, or ``probabilities`` when
    asked for and the task has them."""
    role = "probabilities" if probabilities and "probabilities" in task["outputs"] else task.get("raster") or KIND_RASTERS[task["kind"]]
    return task["outputs"][role]


def single_tasks(description: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task name or "": description}`` of every single task of a task description."""
    if description["kind"] == "multi_task":
        return dict(description["tasks"])
    return {"": description}
