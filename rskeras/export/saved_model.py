"""SavedModel export for TF Serving.

``export_for_serving(exportable, path)`` writes a SavedModel whose

* ``serving_default`` signature takes the RAW input bands, one named tensor per raw input
  (``[B, H, W, C]`` NHWC, or ``[B, T, H, W, C]`` for multi-timestep inputs; float32 raw
  values, int32 for INT32 DataInputs; channels in the DataInput's ``bands`` order;
  dynamic batch, and dynamic height/width unless a fixed size is given), applies the
  pre-processing inside, and returns the task's named outputs (``probabilities`` /
  ``class_ids``, ``value``, ``values``, ``class_ids`` maps, padded ``boxes`` / ``scores`` /
  ``labels`` / ``num_detections``, ``embeddings``; ``<task>_<output>`` for multi-task);
* ``raw_outputs`` signature takes the same inputs and returns the predictor's outputs
  before the task's post-processing (flattened names, see ``flatten_outputs``).

``assets.extra/rskeras_export.json`` describes inputs, pre-processing and outputs.
Writes are atomic (a temporary directory renamed into place). For TF Serving, write to a
numeric version folder: ``models/<name>/1``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Callable

import keras
import tensorflow as tf

from rskeras.export.description import METADATA_FILE
from rskeras.export.inference import Exportable

if TYPE_CHECKING:
    from rskeras.run import Run

logger = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
RAW_OUTPUTS_SIGNATURE = "raw_outputs"


def _replace_dir(tmp: str, path: str) -> None:
    if os.path.exists(path):
        old = tmp + ".old"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_saved_model(
    endpoints: dict[str, tuple[keras.Model, dict[str, tf.TensorSpec]]],
    path: str,
    extra_files: dict[str, str] | None = None,
) -> str:
    """Writes a SavedModel with one signature per endpoint ``name -> (model, input specs)``
    (each model called with its input dict, ``training=False``), atomically.

    ``extra_files``: relative path -> text, written inside the SavedModel directory.
    """
    root, signatures = _serving_module(endpoints)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".saved_model-", dir=parent)
    try:
        tf.saved_model.save(root, tmp, signatures=signatures)
        for rel, text in (extra_files or {}).items():
            full = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
        from rskeras.utils.fileio import apply_default_mode

        apply_default_mode(tmp)  # mkdtemp's 0700 -> the umask's mode
        _replace_dir(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _serving_module(endpoints: dict[str, tuple[keras.Model, dict[str, tf.TensorSpec]]]) -> tuple[tf.Module, dict[str, Any]]:
    """A ``tf.Module`` holding the variables the endpoints read, and the signatures
    (one traced concrete function per endpoint) for ``tf.saved_model.save``.

    Written directly rather than through ``keras.export.ExportArchive``: the archive
    attaches each endpoint's ``tf.function`` to the saved object, which the saver traces a
    second time, and walks every layer of the tracked models looking for lookup tables
    (rskeras models have none). OlmoEarth Nano + UNet: 23 s with the archive, 9 s here.
    The SavedModel is served through its signatures (``loaded.signatures[name]``, TF
    Serving, the TFLite converter); every variable a signature reads is saved with it.
    """
    root = tf.Module()
    signatures: dict[str, Any] = {}
    seen: set[int] = set()
    variables: list[tf.Variable] = []
    for name, (model, specs) in endpoints.items():
        signature = {k: tf.TensorSpec(s.shape, s.dtype, name=k) for k, s in specs.items()}
        fn = tf.function(_caller(model), input_signature=[signature], autograph=False)
        concrete = fn.get_concrete_function()
        signatures[name] = concrete
        for v in concrete.variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    root.endpoint_variables = variables
    return root, signatures


def _caller(model: keras.Model) -> Callable[[dict[str, tf.Tensor]], Any]:
    def serve(inputs):
        return model(inputs, training=False)

    return serve


def export_saved_model(inference_model: keras.Model, input_specs: dict[str, tf.TensorSpec], path: str) -> str:
    """Writes ``inference_model`` (input dict -> dict of named outputs) with a
    ``serving_default`` signature of ``input_specs`` (batch made dynamic)."""
    specs = {k: tf.TensorSpec([None] + list(s.shape[1:]), s.dtype) for k, s in input_specs.items()}
    return write_saved_model({SERVING_SIGNATURE: (inference_model, specs)}, path)


def export_for_serving(
    exportable: Exportable,
    path: str,
    input_size: tuple[int, int] | None = None,
    raw_outputs: bool = True,
) -> str:
    """Writes the serving SavedModel of ``exportable`` at ``path`` (see module docstring).

    Args:
        exportable: the model to export.
        path: output directory (for TF Serving: ``<base>/<name>/<version number>``).
        input_size: fixed ``(height, width)``; None keeps them dynamic.
        raw_outputs: add the ``raw_outputs`` signature.
    """
    h, w = input_size if input_size else (None, None)
    specs = exportable.input_specs(h, w)
    endpoints = {SERVING_SIGNATURE: (exportable.keras_model(h, w), specs)}
    if raw_outputs:
        endpoints[RAW_OUTPUTS_SIGNATURE] = (exportable.keras_model(h, w, raw_outputs=True), specs)
    description = exportable.description()
    description["format"] = "saved_model"
    description["signatures"] = list(endpoints)
    description["input_size"] = list(input_size) if input_size else None
    return write_saved_model(endpoints, path, {os.path.join("assets.extra", METADATA_FILE): json.dumps(description, indent=2)})


def export_run_saved_model(run: Run, path: str) -> str:
    """Exports the model of a ``rskeras.run.Run`` for serving (raw bands in,
    pre-processing inside, as ``tools/export.py``); used by ``train.py`` after ``fit``.

    The predict split defines inputs and transforms; when it has no examples, the val split.
    Models whose inputs cannot come from raw rasters (``ExportError``) are written on the
    model-input dict instead (after the transforms), with a warning, so that a finished fit
    always leaves a SavedModel.
    """
    from rskeras.export.errors import ExportError
    from rskeras.export.inference import exportable_from_run

    stage = "predict" if len(run.data.model_dataset("predict")) else "val"
    name = os.path.basename(os.path.normpath(run.root)) or "model"
    try:
        exportable = exportable_from_run(run, stage, name=name)
    except ExportError as e:
        logger.warning("SavedModel on raw bands not possible (%s); writing it on the model inputs (after the transforms)", e)
        return export_saved_model(run.lm.inference_model(run.input_specs), run.input_specs, path)
    return export_for_serving(exportable, path)
