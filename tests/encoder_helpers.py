"""Helpers of the Galileo / Presto / SSL4EO-S12 tests: golden batches and export checks."""

from __future__ import annotations

import datetime
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from conftest import FIXTURES

FACTS = json.loads((FIXTURES / "encoder_arch_facts.json").read_text())


def golden(name: str):
    z = np.load(FIXTURES / name)
    return z, json.loads(str(z["config"][0]))


def golden_batch(z, prefix: str, keys: list[str], num: int = 2) -> dict[str, np.ndarray]:
    """Per-example C×T×H×W golden inputs -> rskeras ``[B, T, H, W, C]`` per key."""
    return {k: np.stack([z[f"{prefix}/b{i}/{k}"].transpose(1, 2, 3, 0) for i in range(num)]) for k in keys}


def day_ranges(dates: list[str]) -> np.ndarray:
    """ISO dates -> ``[T, 2]`` POSIX seconds (date 00:00, date + 1 day 00:00), the golden
    files' timestamp convention."""
    out = []
    for d in dates:
        t0 = datetime.datetime.fromisoformat(d).replace(tzinfo=datetime.timezone.utc).timestamp()
        out.append([t0, t0 + 86400.0])
    return np.asarray(out, np.float64)


def nchw(feature_map) -> np.ndarray:
    return np.transpose(np.asarray(feature_map), (0, 3, 1, 2))


def param_count(layer, trainable_only: bool = False) -> int:
    weights = layer.trainable_weights if trainable_only else layer.weights
    return int(sum(int(np.prod(v.shape)) for v in weights))


def functional(encoder, specs: dict[str, tf.TensorSpec]) -> keras.Model:
    """``inputs dict -> {"features": last feature map}`` around an encoder."""
    inputs = {k: keras.Input(batch_shape=s.shape, dtype=s.dtype, name=k) for k, s in specs.items()}
    return keras.Model(inputs, {"features": encoder(inputs)[-1]})


def saved_model_max_abs(model: keras.Model, specs: dict, data: dict) -> float:
    """Writes ``model`` as a SavedModel, reloads it and returns max |SavedModel - Keras|."""
    from rskeras.export.saved_model import export_saved_model

    ref = model(data)["features"].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_saved_model(model, specs, os.path.join(tmp, "sm"))
        served = tf.saved_model.load(path).signatures["serving_default"]
        out = served(**{k: tf.constant(v) for k, v in data.items()})["features"].numpy()
    return float(np.abs(out - ref).max())


def tflite_max_abs(model: keras.Model, specs: dict, data: dict) -> float:
    """Converts ``model`` to TFLite (builtin ops only) and returns max |TFLite - Keras|."""
    from rskeras.export.litert import LiteRTModel
    from rskeras.export.tflite import convert_keras_tflite

    ref = model(data)["features"].numpy()
    lite = LiteRTModel(content=convert_keras_tflite(model, specs))
    return float(np.abs(lite(**data)["features"] - ref).max())
