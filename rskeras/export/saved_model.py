"""SavedModel export with a ``serving_default`` signature returning named outputs."""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf


def export_saved_model(inference_model: keras.Model, input_specs: dict[str, tf.TensorSpec], path: str) -> str:
    """Writes ``inference_model`` as a SavedModel at ``path`` (atomically: a temporary
    directory renamed into place).

    The ``serving_default`` signature takes the model-input dict (one named tensor per
    input, dynamic batch size) and returns the model's dict of named outputs.
    """
    signature = {k: tf.TensorSpec([None] + list(s.shape[1:]), s.dtype, name=k) for k, s in input_specs.items()}
    archive = keras.export.ExportArchive()
    archive.track(inference_model)

    def serve(inputs):
        return inference_model(inputs, training=False)

    archive.add_endpoint("serving_default", serve, input_signature=[signature])
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".saved_model-", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return path
