"""`.keras` full-model files (issue 14.17): every example config's inference model, and a
Swin encoder, save with ``model.save`` and load (``rskeras.saving.load_model``, also in a
fresh process with ``keras.saving.load_model``) computing identical outputs."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rskeras.config.loader import load_config
from rskeras.run import build_run

ROOT = pathlib.Path(__file__).resolve().parent.parent
# model.save writes each variable through Keras' np.array(variable) (a NumPy 2 DeprecationWarning of Keras' own).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
CONFIGS = ["classification", "detection", "multi_task", "per_pixel_regression", "regression", "segmentation"]
SWIN_ENCODER = (
    "[{class_path: rslearn.models.swin.Swin, init_args: {arch: swin_v2_t, input_channels: 12, output_layers: [1, 3, 5, 7], "
    "embed_dim: 8, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1], window_size: [4, 4]}}]"
)


def round_trip(run, tmp_path, name):
    dataset = run.data.tf_dataset("val", shuffle=False)
    inputs = next(iter(dataset))[0]
    model = run.lm.inference_model(run.input_specs)
    expected = tf.nest.map_structure(np.asarray, model(inputs, training=False))
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    import rskeras.saving

    loaded = rskeras.saving.load_model(path)
    got = tf.nest.map_structure(np.asarray, loaded(inputs, training=False))
    tf.nest.assert_same_structure(expected, got)
    for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(got)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    return path


@pytest.mark.parametrize("name", CONFIGS)
def test_example_config_models_round_trip_through_keras_files(name, sample_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DATASET_PATH", sample_dataset)
    config = load_config([str(ROOT / "configs" / f"{name}.yaml")], [("trainer.default_root_dir", str(tmp_path / "run"))])
    round_trip(build_run(config, "val"), tmp_path, name)


def test_swin_model_round_trips_and_loads_in_a_fresh_process(sample_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DATASET_PATH", sample_dataset)
    overrides = [
        ("trainer.default_root_dir", str(tmp_path / "run")),
        ("model.init_args.model.init_args.encoder", SWIN_ENCODER),
        ("model.init_args.model.init_args.decoder.0.init_args.in_channels", "64"),
    ]
    path = round_trip(build_run(load_config([str(ROOT / "configs" / "classification.yaml")], overrides), "val"), tmp_path, "swin")
    script = "import keras, rskeras.saving\nm = keras.saving.load_model(%r)\nprint(type(m).__name__, len(m.weights))\n" % path
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("Functional")
