"""Helpers turning the rslearn golden fixtures (tasks_golden / metrics_golden) into rskeras inputs."""

from __future__ import annotations

import json

import numpy as np
import shapely
import shapely.wkt

from conftest import FIXTURES
from rskeras.train.model_context import SampleMetadata
from rskeras.utils.feature import Feature, features_to_tensors

_cache: dict = {}


def load(name: str):
    if name not in _cache:
        path = FIXTURES / name
        _cache[name] = json.loads(path.read_text()) if name.endswith(".json") else dict(np.load(path))
    return _cache[name]


def tasks_golden():
    return load("tasks_golden.json")


def tasks_npz():
    return load("tasks_golden.npz")


def metrics_golden():
    return load("metrics_golden.json")


def heads_npz():
    return load("heads_and_metrics.npz")


def features(entries) -> list[Feature]:
    return [Feature(shapely.wkt.loads(e["wkt"]), dict(e["properties"])) for e in entries]


def vector_input(entries, property_names):
    """Raw vector input form (numpy) from golden feature entries."""
    return features_to_tensors(features(entries), property_names)


def metadata_dict(md: dict) -> dict:
    """Golden metadata -> rskeras metadata dict (numpy values)."""
    return SampleMetadata(
        window_group="default",
        window_name=md.get("window_name", "w"),
        window_bounds=tuple(md["window_bounds"]),
        crop_bounds=tuple(md["crop_bounds"]),
        dataset_source=md.get("dataset_source"),
    ).to_tensors()


def sample_metadata(md: dict) -> SampleMetadata:
    return SampleMetadata.from_tensors(metadata_dict(md))


def raster_cthw_to_thwc(array: np.ndarray) -> np.ndarray:
    """rslearn C×T×H×W -> rskeras T×H×W×C."""
    return np.transpose(np.asarray(array), (1, 2, 3, 0))


def value_of(entry):
    """A golden target/result value: inline scalar/list or npz array."""
    if isinstance(entry, dict) and "npz" in entry:
        return tasks_npz()[entry["npz"]]
    if isinstance(entry, dict) and "value" in entry:
        return np.asarray(entry["value"])
    return entry


def feature_records(feats: list[Feature]):
    """[(wkt, properties)] for comparing process_output results with golden ones."""
    return [(f.geometry.wkt, f.properties) for f in feats]


def golden_records(entries):
    return [(shapely.wkt.loads(e["wkt"]).wkt, e["properties"]) for e in entries]


def _spec_of(value):
    import tensorflow as tf

    if isinstance(value, dict):
        return {k: _spec_of(v) for k, v in value.items()}
    array = np.asarray(value)
    dtype = tf.string if array.dtype.kind in "SUO" else tf.as_dtype(array.dtype)
    return tf.TensorSpec([None] * array.ndim, dtype)


def _to_numpy(value):
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value.numpy()


def process_inputs_in_dataset(task, examples, load_targets=True):
    """Runs ``task.process_inputs`` inside ``tf.data.Dataset.map`` over
    ``examples = [(raw_inputs, metadata_dict)]`` with fully dynamic shapes (from_generator);
    returns [(input_dict, target_dict)] as numpy."""
    import tensorflow as tf

    from rskeras.train.model_context import metadata_signature

    raw_spec = _spec_of(examples[0][0])
    signature = (raw_spec, metadata_signature())

    def gen():
        for raw, md in examples:
            yield raw, md

    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    ds = ds.map(lambda raw, md: task.process_inputs(raw, md, load_targets))
    return [(_to_numpy(i), _to_numpy(t)) for i, t in ds]
